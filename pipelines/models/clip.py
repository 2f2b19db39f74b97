"""One factory for every open_clip model the pipelines use.

A model is named the way open_clip names it, plus the configs shipped in `model_configs/`
(registered on import), or `local-dir:PATH` (open_clip's own folder format, which is also what
`domainfm pretrain` and `domainfm export` write). `pretrained` is an open_clip tag (downloaded
when the network allows) or a local checkpoint file (.safetensors, or .pt/.bin read with
weights_only=True).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from safetensors.torch import save_file
from torch import nn

from pipelines.io.atomic import atomic_dir
from pipelines.models.folders import CLIP_CONFIG_FILE, CLIP_WEIGHTS_FILE

CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(CONFIG_DIR)

# open_clip's local-dir format: what `create_model_and_transforms("local-dir:PATH")` reads.
CONFIG_FILE, WEIGHTS_FILE = CLIP_CONFIG_FILE, CLIP_WEIGHTS_FILE
_PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


@dataclass
class ModelSpec:
    """Which open_clip model to build: a config name (or `local-dir:PATH`) and its weights."""

    name: str = "domainfm-tiny"
    pretrained: str | None = None  # tag, checkpoint file, or None (random init / local-dir weights)


@dataclass
class LoadedModel:
    """A built model with the transforms and tokenizer that go with it, and the spec it came from."""

    model: open_clip.CLIP
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_val: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    spec: ModelSpec


def load_model(spec: ModelSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the model, its train/val transforms and tokenizer (weights read with weights_only=True)."""
    pretrained = spec.pretrained or None
    if pretrained is not None and spec.name.startswith("local-dir:"):
        raise ValueError("a local-dir: model carries its own weights; leave `pretrained` empty")
    if pretrained is not None and not Path(pretrained).exists() and (
        "/" in pretrained or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin"))
    ):
        raise FileNotFoundError(f"pretrained checkpoint not found: {pretrained}")
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        spec.name, pretrained=pretrained, device=device, weights_only=True
    )
    tokenizer = open_clip.get_tokenizer(spec.name)
    return LoadedModel(model, preprocess_train, preprocess_val, tokenizer, spec)


def model_config_of(spec: ModelSpec) -> dict[str, Any]:
    """The open_clip model_cfg dict a spec builds (named/shipped config, or a local-dir's JSON)."""
    if spec.name.startswith("local-dir:"):
        path = Path(spec.name[len("local-dir:"):]) / CONFIG_FILE
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if "model_cfg" not in cfg:
            raise ValueError(f"{path} has no 'model_cfg'")
        return cfg["model_cfg"]
    cfg = open_clip.get_model_config(spec.name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model config {spec.name!r}")
    return cfg


def preprocess_config_of(model: nn.Module) -> dict[str, Any]:
    """Image preprocessing config of a CLIP (set by open_clip's factory), else open_clip defaults."""
    defaults = asdict(PreprocessCfg())
    visual = getattr(model, "visual", None)
    found = dict(getattr(visual, "preprocess_cfg", None) or {})
    if "size" not in found and visual is not None and hasattr(visual, "image_size"):
        found["size"] = visual.image_size
    cfg = {k: found.get(k, defaults[k]) for k in _PREPROCESS_KEYS}
    # JSON has no tuples; lists round-trip through open_clip's loader the same way.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def write_open_clip_files(model: nn.Module, model_cfg: dict, out_dir: Path, preprocess_cfg: dict) -> None:
    """Write the local-dir files (config JSON and safetensors weights) into an existing folder."""
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # Clone so tied/shared storage cannot trip safetensors, and keep it on CPU.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})


def save_open_clip_dir(model: nn.Module, model_cfg: dict, out_dir: Path, preprocess_cfg: dict | None = None) -> None:
    """Write `model` in open_clip's local-dir format, atomically."""
    preprocess_cfg = preprocess_cfg if preprocess_cfg is not None else preprocess_config_of(model)
    with atomic_dir(Path(out_dir)) as tmp:
        write_open_clip_files(model, model_cfg, tmp, preprocess_cfg)
