"""Generic pretraining corpus: shards, determinism, and no domain vocabulary."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import webdataset as wds

from pipelines.pretrain.synthetic_corpus import COLOURS, FORBIDDEN_WORDS, SHAPES, make_sample, write_corpus


def _read(out: Path) -> list[dict]:
    shards = sorted(str(p) for p in out.glob("train-*.tar"))
    return list(wds.WebDataset(shards, shardshuffle=False).decode("rgb8"))


def test_write_corpus_shards_and_fields(tmp_path: Path) -> None:
    n = write_corpus(tmp_path, n_samples=250, image_size=48, seed=1, shard_size=100)
    assert n == 250
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    samples = _read(tmp_path)
    assert len(samples) == 250 and len({s["__key__"] for s in samples}) == 250
    for s in samples:
        assert s["png"].shape == (48, 48, 3) and s["png"].dtype == np.uint8
        assert isinstance(s["txt"], str) and len(s["txt"].split()) >= 3
        assert s["json"]["kind"] in {"shapes", "relation", "texture"}
    # A rerun with fewer samples replaces, not extends, the old shards.
    write_corpus(tmp_path, n_samples=50, image_size=48, seed=1, shard_size=100)
    assert len(_read(tmp_path)) == 50


def test_corpus_is_deterministic_per_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_corpus(a, 60, 32, seed=7, shard_size=25)
    write_corpus(b, 60, 32, seed=7, shard_size=25)
    write_corpus(c, 60, 32, seed=8, shard_size=25)
    for name in ("train-000000.tar", "train-000002.tar"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert [s["txt"] for s in _read(a)] != [s["txt"] for s in _read(c)]
    # Sample i does not depend on the shard size it was written with.
    img, caption, _ = make_sample(7, 30, 32)
    s30 = _read(a)[30]
    assert s30["txt"] == caption and np.array_equal(s30["png"], img)


def test_captions_avoid_the_domain_vocabulary() -> None:
    pattern = re.compile(r"\b(" + "|".join(FORBIDDEN_WORDS) + r")(s|es)?\b", re.IGNORECASE)
    captions = [make_sample(0, i, 16)[1] for i in range(3000)]
    bad = [c for c in captions if pattern.search(c)]
    assert not bad, bad[:5]
    # The corpus still has a rich vocabulary of its own.
    words = {w for c in captions for w in re.findall(r"[a-z]+", c.lower())}
    assert set(COLOURS) <= words and set(SHAPES) <= words
    assert {"checkerboard", "stripes", "dots", "gradient", "above", "below"} <= words
    assert len(set(captions)) > 1000  # phrasing varies, not a handful of templates


def test_captions_describe_the_image() -> None:
    """Texture and relation captions name the colours actually drawn."""
    for i in range(200):
        img, caption, meta = make_sample(3, i, 64)
        if meta["kind"] == "texture":
            for name in meta["colours"]:
                assert name in caption
                ref = np.array(COLOURS[name], float)
                if meta["texture"] != "gradient":  # a gradient has each pure colour only at one edge
                    assert (np.abs(img.astype(float) - ref).sum(-1) < 40).mean() > 0.05, (caption, name)
        elif meta["kind"] == "relation":
            (c1, s1), (c2, s2), rel = meta["first"], meta["second"], meta["relation"]
            assert f"{c1} {s1}" in caption and f"{c2} {s2}" in caption and rel in caption
            # The first shape's colour is where the relation says it is.
            mask = np.abs(img.astype(float) - np.array(COLOURS[c1], float)).sum(-1) < 30
            if c1 == meta["background"] or not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            centre = {"above": ys.mean() < 32, "below": ys.mean() > 32,
                      "to the left of": xs.mean() < 32, "to the right of": xs.mean() > 32}[rel]
            assert centre, caption


def test_json_metadata_is_valid(tmp_path: Path) -> None:
    write_corpus(tmp_path, 20, 32, seed=0)
    raw = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False))
    metas = [json.loads(s["json"]) for s in raw]
    assert [m["index"] for m in metas] == list(range(20))
