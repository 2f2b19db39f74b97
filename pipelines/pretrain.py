"""The demo's stand-in for downloaded pretrained weights.

No model hub is reachable here, so `domainfm pretrain` trains the tiny model from scratch on a
generic, out-of-domain synthetic corpus (shapes, colours, textures) and saves it in open_clip's
`local-dir:` format. Domain stages then load it exactly as they would load a user's real weights.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.config import build
from pipelines.export import model_config_of, preprocess_config_of, save_open_clip_dir
from pipelines.models import ModelSpec, load_model
from pipelines.synthetic_corpus import write_corpus
from pipelines.train import TrainConfig, train


@dataclass
class PretrainConfig:
    model: str = "domainfm-tiny"
    n_samples: int = 6000
    image_size: int = 64
    seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields


def pretrain(cfg: PretrainConfig, out: Path, work: Path, metrics_path: Path | None = None) -> dict[str, Any]:
    """Write the corpus under `work`, train every parameter of `cfg.model` on it, save to `out`."""
    train_cfg = build(TrainConfig, cfg.train)
    corpus = work / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    write_corpus(corpus, cfg.n_samples, cfg.image_size, cfg.seed)
    spec = ModelSpec(name=cfg.model)
    torch.manual_seed(cfg.seed)  # the random initialisation is part of the result: seed it too
    loaded = load_model(spec)
    shards = sorted(str(p) for p in corpus.glob("train-*.tar"))
    stats = train(loaded.model, loaded.preprocess_train, loaded.tokenizer, shards, train_cfg, work / "run", metrics_path=metrics_path)
    save_open_clip_dir(loaded.model, model_config_of(spec), out, preprocess_config_of(loaded.model))
    return stats
