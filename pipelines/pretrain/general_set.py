"""A held-out generic zero-shot set from the pretraining corpus's own renderer: what adaptation may cost.

One shape per image (classes: the corpus's SHAPES), any colour on any other background, any size,
position jitter and rotation, drawn exactly as the corpus draws shapes. Each image comes from its
own generator seeded by (seed, GENERAL_STREAM, index): the corpus seeds by (seed, index), so no
general-set draw can replay a training sample, whatever the corpus size (numpy's SeedSequence
hashes the whole entropy list, and the lists differ in length). It is written in CLIP_benchmark's
wds layout (pipelines/evaluate/clip_benchmark.py), so `clip_benchmark eval` scores it too and any
other CLIP_benchmark zero-shot folder can stand in for it (params `<domain>.evaluate.general`).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.io.atomic import atomic_dir
from pipelines.pretrain.synthetic_corpus import COLOURS, SHAPES, SIZES, SS, _draw_shape, _pick_colours

GENERAL_STREAM = 1_000_003  # the extra entropy word that separates general-set draws from corpus draws
TEMPLATES = ("a {c}.", "a picture of a {c}.", "an illustration showing a {c}.", "simple drawing: a {c}.",
             "a {c} on a plain background.")


@dataclass
class GeneralSetConfig:
    """params.yaml `pretrain.general_set`: the held-out generic zero-shot set written beside the base model."""

    per_class: int = 25  # images per shape class
    seed: int = 0        # with GENERAL_STREAM; the corpus's own seed is `pretrain.seed`

    def __post_init__(self) -> None:
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")


def general_sample(seed: int, index: int, image_size: int) -> tuple[np.ndarray, int]:
    """Image `index` of the general set: (HxWx3 uint8 image, shape class index into SHAPES)."""
    rng = np.random.default_rng([seed, GENERAL_STREAM, index])
    label = index % len(SHAPES)  # balanced classes, interleaved
    big = image_size * SS
    bg_name, colour = _pick_colours(rng, 2)
    bg = COLOURS[bg_name]
    img = Image.new("RGB", (big, big), bg)
    r = SIZES[str(rng.choice(list(SIZES)))] * big
    jitter = max(0.0, big / 2 - r) * 0.3
    cx, cy = big / 2 + rng.uniform(-jitter, jitter), big / 2 + rng.uniform(-jitter, jitter)
    _draw_shape(ImageDraw.Draw(img), SHAPES[label], cx, cy, r, COLOURS[colour], bg, rng.uniform(-0.3, 0.3))
    return np.asarray(img.resize((image_size, image_size), Image.LANCZOS)), label


def write_general_set(out: Path, cfg: GeneralSetConfig, image_size: int) -> int:
    """Replace `out` with the set in CLIP_benchmark's zero-shot wds layout; returns the image count."""
    from pipelines.evaluate import clip_benchmark as cb  # the one writer of the layout

    n = cfg.per_class * len(SHAPES)
    images, labels = [], []
    for index in range(n):
        array, label = general_sample(cfg.seed, index, image_size)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        images.append(buf.getvalue())
        labels.append(label)
    with atomic_dir(Path(out)) as tmp:
        cb.write_zeroshot_set(tmp, images, ["png"] * n, labels, list(SHAPES), list(TEMPLATES))
        (tmp / "README.txt").write_text(
            f"Held-out generic zero-shot set: {n} single-shape images ({cfg.per_class} per class), drawn by the\n"
            "pretraining corpus's renderer from seeds disjoint from the corpus (pipelines/pretrain/general_set.py).\n"
            "Scored by `domainfm evaluate` as `general` (params <domain>.evaluate.general) to measure forgetting.\n",
            encoding="utf-8")
    return n
