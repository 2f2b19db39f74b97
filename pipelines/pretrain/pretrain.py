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

from pipelines.models.clip import ModelSpec, load_model, model_config_of, preprocess_config_of, save_open_clip_dir
from pipelines.pretrain.general_set import GeneralSetConfig
from pipelines.pretrain.synthetic_corpus import write_corpus
from pipelines.train import distributed as D
from pipelines.train.clip_task import ClipTask, ClipTrainConfig
from pipelines.train.loop import fit


@dataclass
class PretrainConfig:
    """params.yaml `pretrain`: the demo's generic base model."""

    model: str = "domainfm-tiny"
    n_samples: int = 6000
    image_size: int = 64
    seed: int = 0
    train: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    # the held-out generic zero-shot set (`--general`), scored to measure what adaptation costs
    general_set: GeneralSetConfig = field(default_factory=GeneralSetConfig)


def pretrain(cfg: PretrainConfig, out: Path, work: Path, metrics_path: Path | None = None) -> dict[str, Any]:
    """Write the corpus under `work`, train every parameter of `cfg.model` on it, save to `out`."""
    corpus = work / "corpus"
    if corpus.exists():
        shutil.rmtree(corpus)
    write_corpus(corpus, cfg.n_samples, cfg.image_size, cfg.seed)
    spec = ModelSpec(name=cfg.model)
    torch.manual_seed(cfg.seed)  # the random initialisation is part of the result: seed it too
    loaded = load_model(spec)
    shards = sorted(str(p) for p in corpus.glob("train-*.tar"))
    info = D.init_distributed()
    try:
        task = ClipTask(loaded.model, loaded.preprocess_train, loaded.tokenizer, shards, cfg.train, info)
        stats = fit(task, cfg.train, work / "run", info, metrics_path=metrics_path)
    finally:
        D.cleanup(info)
    save_open_clip_dir(loaded.model, model_config_of(spec), out, preprocess_config_of(loaded.model))
    return stats
