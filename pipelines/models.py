"""One factory for every open_clip model the pipelines use.

A model is named the way open_clip names it, plus the configs shipped in `model_configs/`
(registered on import), or `local-dir:PATH` (open_clip's own folder format, which is also what
`domainfm pretrain` and `domainfm export` write). `pretrained` is an open_clip tag (downloaded
when the network allows) or a local checkpoint file (.safetensors, or .pt/.bin read with
weights_only=True).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)


@dataclass
class ModelSpec:
    name: str = "domainfm-tiny"
    pretrained: str | None = None  # tag, checkpoint file, or None (random init / local-dir weights)


@dataclass
class LoadedModel:
    model: open_clip.CLIP
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_val: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    spec: ModelSpec


def load_model(spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    pretrained = spec.pretrained or None
    if pretrained is not None and spec.name.startswith("local-dir:"):
        raise ValueError("a local-dir: model carries its own weights; leave `pretrained` empty")
    if pretrained is not None and not Path(pretrained).exists() and ("/" in pretrained or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin"))):
        raise FileNotFoundError(f"pretrained checkpoint not found: {pretrained}")
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        spec.name, pretrained=pretrained, device=device, weights_only=True
    )
    tokenizer = open_clip.get_tokenizer(spec.name)
    return LoadedModel(model, preprocess_train, preprocess_val, tokenizer, spec)
