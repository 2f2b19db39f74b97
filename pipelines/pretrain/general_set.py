"""A held-out generic zero-shot set from the pretraining corpus's own renderer: what adaptation may cost.

One shape per image; the class is its colour (the corpus's 13 COLOURS), the shape (any of SHAPES), the
other-coloured background, size, position jitter and rotation vary; drawn exactly as the corpus draws
shapes. Colour, not shape: the demo's tiny base model names a shape's colour zero-shot (about 0.9 acc1)
but not its shape (chance), and forgetting is only measurable on an ability the base has. Each image comes from its
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
TEMPLATES = ("a {c} shape.", "a picture of a {c} shape.", "an illustration showing a {c} shape.",
             "simple drawing: a {c} shape.", "a {c} shape on a plain background.")
CLASSNAMES = tuple(COLOURS)


@dataclass
class GeneralSetConfig:
    """params.yaml `pretrain.general_set`: the held-out generic zero-shot set written beside the base model."""

    per_class: int = 16  # images per colour class
    seed: int = 0        # with GENERAL_STREAM; the corpus's own seed is `pretrain.seed`

    def __post_init__(self) -> None:
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")


def general_sample(seed: int, index: int, image_size: int) -> tuple[np.ndarray, int]:
    """Image `index` of the general set: (HxWx3 uint8 image, class index into CLASSNAMES, its colour)."""
    rng = np.random.default_rng([seed, GENERAL_STREAM, index])
    label = index % len(CLASSNAMES)  # balanced classes, interleaved
    colour = CLASSNAMES[label]
    (bg_name,) = _pick_colours(rng, 1, avoid=(colour,))
    shape = SHAPES[rng.integers(len(SHAPES))]
    big = image_size * SS
    bg = COLOURS[bg_name]
    img = Image.new("RGB", (big, big), bg)
    r = SIZES[str(rng.choice(list(SIZES)))] * big
    jitter = max(0.0, big / 2 - r) * 0.3
    cx, cy = big / 2 + rng.uniform(-jitter, jitter), big / 2 + rng.uniform(-jitter, jitter)
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, COLOURS[colour], bg, rng.uniform(-0.3, 0.3))
    return np.asarray(img.resize((image_size, image_size), Image.LANCZOS)), label


def write_general_set(out: Path, cfg: GeneralSetConfig, image_size: int) -> int:
    """Replace `out` with the set in CLIP_benchmark's zero-shot wds layout; returns the image count."""
    from pipelines.evaluate import clip_benchmark as cb  # the one writer of the layout

    n = cfg.per_class * len(CLASSNAMES)
    images, labels = [], []
    for index in range(n):
        array, label = general_sample(cfg.seed, index, image_size)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        images.append(buf.getvalue())
        labels.append(label)
    with atomic_dir(Path(out)) as tmp:
        cb.write_zeroshot_set(tmp, images, ["png"] * n, labels, list(CLASSNAMES), list(TEMPLATES))
        (tmp / "README.txt").write_text(
            f"Held-out generic zero-shot set: {n} single-shape images, classed by colour ({cfg.per_class} per class), drawn by the\n"
            "pretraining corpus's renderer from seeds disjoint from the corpus (pipelines/pretrain/general_set.py).\n"
            "Scored by `domainfm evaluate` as `general` (params <domain>.evaluate.general) to measure forgetting.\n",
            encoding="utf-8")
    return n
