"""`domainfm train <domain>`: build the domain's task from params.yaml and run the loop.

Image domains adapt an open_clip model (`<domain>.base_model`, `.adapt`, `.train`: ModelSpec,
AdaptConfig, ClipTrainConfig); volume domains train the 3D dual encoder (`.base_model`, `.adapt`,
`.train`: VolumeModelConfig, VolumeAdaptConfig, VolumeTrainConfig).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipelines import params
from pipelines.domain import get
from pipelines.errors import InputError
from pipelines.io.shards import shard_paths
from pipelines.train import distributed as D
from pipelines.train.loop import fit


def train_domain(domain: str, data: Path, out: Path, params_path: Path | None, metrics: Path | None = None,
                 resume: bool = False, adapt_mode: str | None = None) -> dict[str, Any]:
    """Train `domain`'s model on the curated pairs in DATA; write it to OUT. Every rank calls this.

    `adapt_mode` overrides `<domain>.adapt.mode` of an image domain (the forgetting study's full
    fine-tuning twin of a LoRA model: same data, schedule and seed, one loop).
    """
    d = get(domain)
    if adapt_mode is not None and d.modality == "volume":
        raise InputError(f"--adapt-mode applies to open_clip domains; {domain} trains the 3D dual encoder")
    info = D.init_distributed()
    try:
        if d.modality == "volume":
            return _train_volume(domain, Path(data), Path(out), params_path, metrics, resume, info)
        return _train_clip(domain, Path(data), Path(out), params_path, metrics, resume, info, adapt_mode)
    finally:
        D.cleanup(info)


def _train_clip(domain: str, data: Path, out: Path, params_path: Path | None, metrics: Path | None, resume: bool,
                info: D.DistInfo, adapt_mode: str | None = None) -> dict[str, Any]:
    from pipelines.models.adapt import AdaptConfig, prepare, write_adapt_spec
    from pipelines.models.clip import ModelSpec, load_model
    from pipelines.train.clip_task import ClipTask, ClipTrainConfig

    spec = params.read(params_path, ModelSpec, domain, "base_model")
    adapt = params.read(params_path, AdaptConfig, domain, "adapt", mode=adapt_mode)
    cfg = params.read(params_path, ClipTrainConfig, domain, "train")
    shards = shard_paths(data, "train")
    if not shards:
        raise FileNotFoundError(f"no train shards under {data}/shards: run `domainfm curate {domain}` first")
    torch.manual_seed(cfg.seed)  # LoRA's initial A matrices come from the global RNG
    loaded = load_model(spec)
    task = ClipTask(prepare(loaded.model, adapt), loaded.preprocess_train, loaded.tokenizer, shards, cfg, info)
    stats = fit(task, cfg, out, info, resume=resume, metrics_path=metrics)
    if info.is_main:
        write_adapt_spec(out, spec, adapt)
    return stats


def _train_volume(domain: str, data: Path, out: Path, params_path: Path | None, metrics: Path | None, resume: bool,
                  info: D.DistInfo) -> dict[str, Any]:
    from pipelines.models.volume import VolumeModelConfig
    from pipelines.train.volume_task import VolumeAdaptConfig, VolumeTask, VolumeTrainConfig

    model_cfg = params.read(params_path, VolumeModelConfig, domain, "base_model")
    adapt = params.read(params_path, VolumeAdaptConfig, domain, "adapt")
    cfg = params.read(params_path, VolumeTrainConfig, domain, "train")
    task = VolumeTask.build(data, model_cfg, adapt, cfg, info)
    return fit(task, cfg, out, info, resume=resume, metrics_path=metrics)
