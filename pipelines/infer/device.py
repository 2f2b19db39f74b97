"""Where inference runs: the GPU when there is one, else the CPU; and in which precision.

torch is imported inside the functions, so configs that only name a `DeviceChoice` (curation's quality
filter) load without it.

Precision. The pipeline's stages (evaluation, the curation's quality filter) run bf16 autocast on a
GPU and fp32 on the CPU, the CPU's reports staying the fp32 reference. The analyst commands (map,
search, predict) take a `Precision`: "auto" runs bf16 autocast wherever the device computes bf16
natively, a GPU that supports it or a CPU with AVX512-BF16 or AMX (oneDNN's bf16 kernels: on 2 AMD EPYC
cores 1.15-1.2x fp32's speed for the demo's tiny ViT, 1.5-1.7x for ViT-B/32, 1.25-1.35x for the demo's CT model, 1.3-1.5x
for a CT encoder at 224x224x160, fp32 itself on oneDNN: benchmarks/inference_precision.py), and fp32 elsewhere, where bf16
would be emulated.
Scores are computed in fp32 from the bf16 model's embeddings, which are within about 1e-4 of fp32's in
cosine; "fp32" gives the fp32 reference on any device (on an AMD CPU through oneDNN's kernels, not MKL's
nor ATen's reference convolution, 1.5-3x faster and equal to float rounding: onednn.py).
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

DeviceChoice = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp32"]
ResolvedPrecision = Literal["bf16", "fp32"]  # a Precision once "auto" is settled for a device
PRECISION_HELP = ("auto (bf16 where the device computes it natively: a GPU that supports it, a CPU with AVX512-BF16 or AMX; "
                  "else fp32), bf16, or fp32 (the reference; bf16's embeddings are within about 1e-4 of it in cosine).")


def resolve_device(choice: str = "auto") -> "torch.device":
    """`auto` picks CUDA when available; an explicit `cuda` without a GPU is an error, not a silent fallback."""
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return device


def native_bf16(device: "torch.device") -> bool:
    """Whether `device` computes bf16 natively: a GPU that supports it, or an x86 CPU with AVX512-BF16 or AMX tiles."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    # torch's own probes of the CPU (cpuinfo; private names): a torch without them counts as no native bf16
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(device: "torch.device", precision: Precision = "auto") -> ResolvedPrecision:
    """The precision inference runs in on `device`: "auto" is bf16 where `native_bf16`, else fp32."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def inference_precision(device: "torch.device", precision: ResolvedPrecision | None = None) -> contextlib.AbstractContextManager:
    """The context a model's inference runs in: bf16 autocast, or fp32 (on an AMD CPU with oneDNN's kernels).

    For `precision` fp32 on an AMD CPU, the linear layers run on oneDNN's fp32 kernels (pipelines/infer/onednn.py),
    elsewhere as torch runs them. Without a precision, the pipeline stages' rule: bf16 on a GPU that supports it,
    else fp32. Scores are computed in fp32 afterwards (the callers cast the model's outputs).
    """
    import torch

    if precision is None:
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if device.type == "cpu":
        from pipelines.infer.onednn import OneDnnFp32, onednn_fp32_preferred

        if onednn_fp32_preferred():
            return OneDnnFp32()
    return contextlib.nullcontext()


def channels_last_volumes(device: "torch.device", precision: ResolvedPrecision) -> bool:
    """Whether a 3D conv net's inference on `device` in `precision` holds its weights channels-last (NDHWC).

    Where every 3D convolution runs on oneDNN, a CPU in bf16 autocast and an AMD CPU in fp32 (onednn.py),
    channels-last activations make the convolutions and the max pooling faster (benchmarks/inference_precision.py;
    a convolution's output is channels-last when its weights are, so the activations stay so): the CT encoder
    at 224x224x160 1.5-1.6x in fp32 and 1.4-1.5x in bf16, the demo's CT model 1.24x in bf16 (batch norms apart). Elsewhere torch
    picks a convolution's kernel by its size and copies small channels-last activations back to channels-first
    for its reference kernel (the demo's CT model about 1.2x slower in fp32 on this CPU); a GPU is unmeasured.
    """
    if device.type != "cpu":
        return False
    if precision == "bf16":
        return True
    from pipelines.infer.onednn import onednn_fp32_preferred

    return onednn_fp32_preferred()
