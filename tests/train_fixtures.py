"""Tiny data and task factories for the training-loop tests, one per model family."""
from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from volume_fixture import write_synthetic_shards

from pipelines.models.clip import ModelSpec, load_model
from pipelines.models.volume import VolumeModelConfig
from pipelines.train import distributed as D
from pipelines.train.clip_task import ClipTask, ClipTrainConfig
from pipelines.train.loop import TrainConfig, fit
from pipelines.train.volume_task import VolumeAdaptConfig, VolumeTask, VolumeTrainConfig

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20),
           "white": (240, 240, 240), "black": (15, 15, 15)}
VOLUME_MODEL = VolumeModelConfig(input_size=[16, 16, 12], image_width=4, embed_dim=16, text_hidden=32, text_layers=1,
                                 text_heads=2, vocab_size=150, context_length=32)


def write_shard(path: Path, n: int, seed: int = 0) -> str:
    """n noisy solid-colour 64x64 PNGs captioned with their colour (learnable in a few dozen steps)."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            name = names[i % len(names)]
            pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            sink.write({"__key__": f"s{i:05d}", "png": buf.getvalue(), "txt": f"a {name} square",
                        "json": json.dumps({"caption_variants": {}})})
    return str(path)


def tiny_clip(seed: int = 0, freeze_token_embedding: bool = True):
    """The shipped tiny open_clip model; its 49408 x 128 token table (88% of it) frozen for speed."""
    torch.manual_seed(seed)
    lm = load_model(ModelSpec("domainfm-tiny"))
    lm.model.token_embedding.weight.requires_grad_(not freeze_token_embedding)
    return lm


class Family:
    """How to build one family's task on its fixture data, and read back what it trained."""

    name: str
    samples: int  # training samples in the fixture

    def config(self, **kw: Any) -> TrainConfig:
        raise NotImplementedError

    def task(self, data: Path, out: Path, cfg: TrainConfig, resume: bool = False, info: D.DistInfo | None = None):
        raise NotImplementedError

    def weights(self, task) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in task.checkpoint_tensors().items()}


class ClipFamily(Family):
    name, samples = "clip", 48

    def write_data(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        write_shard(root / "train-000000.tar", self.samples)
        return root

    def config(self, **kw: Any) -> ClipTrainConfig:
        return replace(ClipTrainConfig(batch_size=16, checkpoint_every=0, warmup_steps=1), **kw)

    def task(self, data: Path, out: Path, cfg: TrainConfig, resume: bool = False, info: D.DistInfo | None = None,
             model: torch.nn.Module | None = None) -> ClipTask:
        lm = tiny_clip()
        return ClipTask(model if model is not None else lm.model, lm.preprocess_train, lm.tokenizer,
                        [str(data / "train-000000.tar")], cfg, info or D.DistInfo())


class VolumeFamily(Family):
    name, samples = "volume", 12

    def write_data(self, root: Path) -> Path:
        write_synthetic_shards(root, n=16, size=(16, 16, 12), seed=0, test_fraction=0.25)
        return root

    def config(self, **kw: Any) -> VolumeTrainConfig:
        base = dict(batch_size=4, lr=3e-3, warmup_steps=1, precision="fp32", grad_checkpointing=False, checkpoint_every=0)
        return VolumeTrainConfig(**{**base, **kw})

    def task(self, data: Path, out: Path, cfg: TrainConfig, resume: bool = False, info: D.DistInfo | None = None,
             adapt: VolumeAdaptConfig | None = None) -> VolumeTask:
        return VolumeTask.build(data, VOLUME_MODEL, adapt or VolumeAdaptConfig(schedule="multitask"), cfg, info or D.DistInfo())


FAMILIES: dict[str, Family] = {"clip": ClipFamily(), "volume": VolumeFamily()}


def run(family: Family, data: Path, out: Path, cfg: TrainConfig, resume: bool = False,
        metrics: Path | None = None, **task_kw: Any):
    """Build the task and fit it in this process; returns (task, stats)."""
    task = family.task(data, out, cfg, resume, **task_kw)
    stats = fit(task, cfg, out, D.DistInfo(), resume=resume, metrics_path=metrics)
    return task, stats


TaskFactory = Callable[..., Any]
