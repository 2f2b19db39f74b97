"""Where inference runs: the GPU when there is one (bf16 autocast), else the CPU.

torch is imported inside the functions, so configs that only name a `DeviceChoice` (curation's quality
filter) load without it.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

DeviceChoice = Literal["auto", "cpu", "cuda"]


def resolve_device(choice: str = "auto") -> "torch.device":
    """`auto` picks CUDA when available; an explicit `cuda` without a GPU is an error, not a silent fallback."""
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return device


def inference_autocast(device: "torch.device") -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs that support it (inference only: scores are computed in fp32 afterwards)."""
    import torch

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
