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


def test_every_image_kind_reaches_training_as_pillows_rgb_pixels(tmp_path):
    # the loader's fast PNG path (the curation's own files) and Pillow's (anything else) must give the same pixels
    import io

    from PIL import Image

    from pipelines.io.png import encode_png

    rng = np.random.default_rng(0)
    images = {f"k{i}": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(6)}

    def pillow_file(pixels, fmt, mode="RGB"):
        buf = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buf, format=fmt)
        return buf.getvalue()

    files = {"k0": ("png", encode_png(images["k0"])), "k1": ("png", encode_png(np.dstack([images["k1"], images["k1"][..., :1]]))),
             "k2": ("png", encode_png(images["k2"][..., 0])), "k3": ("png", pillow_file(images["k3"], "PNG")),
             "k4": ("jpg", pillow_file(images["k4"], "JPEG")), "k5": ("png", pillow_file(images["k5"], "PNG", "P"))}
    path = str(tmp_path / "train-000000.tar")
    with wds.TarWriter(path) as w:
        for key, (ext, data) in files.items():
            w.write({"__key__": key, ext: data, "txt": key})
    expected = {}
    for key, (_, data) in files.items():
        with Image.open(io.BytesIO(data)) as im:
            expected[key] = np.asarray(im.convert("RGB"))
    loader, _ = make_train_loader([path], lambda im: torch.from_numpy(np.array(im)), lambda t: list(t), 6, 0, 0, 0)
    seen = {key: image.numpy() for batch, keys in loader for image, key in zip(batch, keys)}
    assert seen.keys() == files.keys()
    for key in files:
        assert np.array_equal(seen[key], expected[key]), key
    assert np.array_equal(seen["k0"], images["k0"]) and np.array_equal(seen["k1"], images["k1"])  # alpha dropped
