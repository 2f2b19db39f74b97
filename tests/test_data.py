"""Training batches: caption-variant sampling."""
from __future__ import annotations

import json

import numpy as np
import PIL.Image  # noqa: F401  (webdataset 0.2.86 encodes arrays through PIL.Image without importing it)
import torch
import webdataset as wds

from pipelines.train.clip_data import make_train_loader


def shard(tmp_path):
    path = str(tmp_path / "train-000000.tar")
    with wds.TarWriter(path) as w:
        for i in range(8):
            w.write({"__key__": f"k{i}", "png": np.full((8, 8, 3), i, np.uint8), "txt": f"title {i}",
                     "json": json.dumps({"caption_variants": {"title": f"title {i}",
                                                              "title_multi_objects": f"title {i}, surrounded by x"}})})
    return [path]


def texts(shards, epoch, variants, seed=0):
    loader, _ = make_train_loader(shards, lambda im: torch.zeros(1), lambda t: list(t), 8, seed, epoch, 0, caption_variants=variants)
    return sorted(t for _, batch in loader for t in batch)


def test_plain_txt_without_variants(tmp_path):
    shards = shard(tmp_path)
    assert texts(shards, 0, False) == sorted(f"title {i}" for i in range(8))


def test_variants_are_drawn_per_epoch_and_deterministic(tmp_path):
    shards = shard(tmp_path)
    seen = set()
    for epoch in range(4):
        got = texts(shards, epoch, True)
        assert got == texts(shards, epoch, True)  # same seed and epoch -> same draw
        assert len(got) == 8 and all(t.startswith("title ") for t in got)
        seen.update(got)
    # both the title and the multi-object variant of some pairs were used across epochs
    assert any(t.endswith("surrounded by x") for t in seen) and any(not t.endswith("x") for t in seen)
