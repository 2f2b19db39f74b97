"""Demo inputs for the pairs domain: procedural road-sign photos with captions, all drawn with PIL.

- `images/*.png` + `captions.csv` (open_clip's `filepath`/`title` columns, paths relative to the
  CSV's folder): what a user who already has captioned images would bring;
- `zeroshot/test-000000.tar` (png, cls, json) + `classnames.txt`: a labelled held-out set drawn
  from another seed.

Five sign classes (CLASSNAMES) on sky, foliage, street or dusk backgrounds, at a random position,
size and tilt, sometimes on a post, with sensor noise and lighting changes. The base model's
corpus (pipelines/pretrain/synthetic_corpus.py) teaches colours and simple shapes but no sign, street
or octagon words, so naming these signs is what adaptation has to learn.

Each image is drawn from its own generator seeded by (seed, index), as the base corpus is: the
demo is deterministic and any image can be regenerated alone.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw, ImageFilter

# Label order of the zero-shot set; params.yaml `pairs.evaluate.classnames` names them in this order.
CLASSNAMES = ("stop sign", "yield sign", "speed limit sign", "no entry sign", "parking sign")
STOP, YIELD, SPEED, NO_ENTRY, PARKING = range(5)
BACKGROUNDS = ("sky", "foliage", "street", "dusk")
SS = 2  # supersampling factor: drawn at SS x the size and downsampled for smooth edges

RED, WHITE, BLACK, BLUE = (200, 30, 35), (240, 240, 236), (20, 20, 20), (25, 70, 170)

# Captions. The class name is the phrase zero-shot prompts use; descriptions say what is drawn in
# words the base model already knows (colours, circle, triangle, square), which is what lets a few
# hundred captions tie a new name to its look. Some captions only describe, as real alt text often does.
DESCRIPTIONS: dict[int, tuple[str, ...]] = {
    STOP: ("a red octagon", "a red octagon with white letters", "an eight-sided red shape reading STOP"),
    YIELD: ("a white triangle with a red border", "a red and white triangle pointing down", "an upside-down red triangle"),
    SPEED: ("a white circle in a red ring", "a red ring around the number {n}", "a white disc with black numbers"),
    NO_ENTRY: ("a red circle with a white bar", "a red disc crossed by a white bar", "a red circle with a white stripe"),
    PARKING: ("a blue square with a white P", "a white letter P on blue", "a blue square"),
}
CONTEXTS: dict[str, tuple[str, ...]] = {
    "sky": ("against a blue sky", "under a clear sky", "with the sky behind it"),
    "foliage": ("in front of trees", "surrounded by green leaves", "beside a hedge"),
    "street": ("at a street corner", "on a city street", "beside the road"),
    "dusk": ("at dusk", "in the evening light", "at sunset"),
}
TEMPLATES = (
    "a {name}", "{name}: {desc}", "photo of a {name}", "{desc}: a {name}", "traffic sign: {name}",
    "a roadside {name}, {desc}", "a {name}, {desc}",
)
UNNAMED = ("{desc}", "a traffic sign, {desc}", "{desc} on a pole")

# Stroke glyphs in a unit box (x right, y down): 7-segment digits plus the letters signs need.
_SEG = {"a": ((0, 0), (1, 0)), "b": ((1, 0), (1, .5)), "c": ((1, .5), (1, 1)), "d": ((0, 1), (1, 1)),
        "e": ((0, .5), (0, 1)), "f": ((0, 0), (0, .5)), "g": ((0, .5), (1, .5))}
_GLYPHS = {ch: [_SEG[s] for s in segs] for ch, segs in {
    "0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd", "6": "afgedc", "7": "abc",
    "8": "abcdefg", "9": "abcdfg", "S": "afgcd", "O": "abcdef", "P": "abfge"}.items()}
_GLYPHS["T"] = [((0, 0), (1, 0)), ((.5, 0), (.5, 1))]
SPEEDS = (20, 30, 40, 50, 60, 70, 80, 90)


@dataclass
class PairsDemoConfig:
    """params.yaml `pairs.demo`."""

    seed: int = 0
    n_images: int = 600  # captioned training images, classes in turn
    image_size: int = 64
    zeroshot_per_class: int = 30
    zeroshot_seed: int = 1000  # the held-out set's seed: never the training images' pixels
    named_fraction: float = 0.85  # share of captions that use the class name (the rest only describe)
    context_fraction: float = 0.3  # share of captions that also say where the sign stands

    def __post_init__(self) -> None:
        if self.n_images < len(CLASSNAMES):
            raise ValueError(f"n_images must be at least {len(CLASSNAMES)}, one image per class")
        if self.image_size < 16:
            raise ValueError("image_size must be at least 16")
        if self.zeroshot_per_class < 1:
            raise ValueError("zeroshot_per_class must be at least 1")
        for name in ("named_fraction", "context_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")


# ---------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, kind: str, big: int) -> Image.Image:
    """A sky, foliage, street or dusk scene, big x big px."""
    y = np.linspace(0, 1, big, dtype=np.float32)[:, None, None]
    if kind in ("sky", "dusk"):
        if kind == "sky":
            top, bottom = np.array([70, 130, 215]) * rng.uniform(0.85, 1.1), np.array([175, 205, 240])
        else:
            top, bottom = np.array([60, 50, 110]) * rng.uniform(0.8, 1.1), np.array([245, 150, 80])
        img = Image.fromarray(np.broadcast_to(top + (bottom - top) * y, (big, big, 3)).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        cloud = (240, 240, 245) if kind == "sky" else (230, 160, 130)
        for _ in range(int(rng.integers(0, 4))):
            cx, cy, w = rng.uniform(0, big), rng.uniform(0, 0.7 * big), rng.uniform(0.15, 0.4) * big
            draw.ellipse([cx - w, cy - 0.3 * w, cx + w, cy + 0.3 * w], fill=cloud)
    elif kind == "foliage":
        img = Image.new("RGB", (big, big), tuple(int(v) for v in np.array([45, 95, 40]) * rng.uniform(0.8, 1.2)))
        draw = ImageDraw.Draw(img)
        for _ in range(60):
            cx, cy, r = rng.uniform(0, big), rng.uniform(0, big), rng.uniform(0.03, 0.1) * big
            g = rng.uniform(0.6, 1.4)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(int(40 * g), int(110 * g), int(35 * g)))
    else:
        horizon = rng.uniform(0.45, 0.7) * big
        img = Image.new("RGB", (big, big), (95, 95, 100))
        draw = ImageDraw.Draw(img)
        x = -rng.uniform(0, 0.3) * big
        while x < big:  # a row of building fronts above the pavement
            w = rng.uniform(0.25, 0.5) * big
            shade = rng.uniform(0.7, 1.2)
            colour = [(175, 165, 150), (190, 185, 170), (130, 130, 138), (150, 140, 125)][int(rng.integers(4))]
            draw.rectangle([x, rng.uniform(0, 0.2) * big, x + w, horizon], fill=tuple(int(c * shade) for c in colour))
            for wy in np.arange(0.25 * big, horizon - 0.1 * big, 0.16 * big):
                draw.rectangle([x + 0.2 * w, wy, x + 0.45 * w, wy + 0.08 * big], fill=(60, 70, 85))
            x += w
        draw.rectangle([0, horizon, big, big], fill=(85, 85, 90))
        lane = horizon + rng.uniform(0.3, 0.6) * (big - horizon)
        for lx in np.arange(rng.uniform(-0.2, 0) * big, big, 0.3 * big):
            draw.rectangle([lx, lane, lx + 0.15 * big, lane + 0.02 * big], fill=(225, 220, 200))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.5, 3.0) * SS))


def _text(draw: ImageDraw.ImageDraw, text: str, cx: float, cy: float, h: float, colour: tuple, width: int) -> None:
    """Stroke glyphs centred on (cx, cy), h px tall."""
    w, gap = 0.55 * h, 0.3 * h
    x0 = cx - (len(text) * w + (len(text) - 1) * gap) / 2
    for k, ch in enumerate(text):
        ox = x0 + k * (w + gap)
        for (ax, ay), (bx, by) in _GLYPHS[ch]:
            draw.line([(ox + ax * w, cy - h / 2 + ay * h), (ox + bx * w, cy - h / 2 + by * h)], fill=colour, width=width)


def _regular(n: int, cx: float, cy: float, r: float, offset: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(offset + 2 * math.pi * k / n), cy + r * math.sin(offset + 2 * math.pi * k / n)) for k in range(n)]


def _sign(cls: int, big: int, cx: float, cy: float, r: float, n: int, tint: np.ndarray) -> Image.Image:
    """The sign of class `cls` on a transparent big x big layer, centred on (cx, cy), about r px in radius."""
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)

    def c(rgb: tuple) -> tuple:  # paint under the scene's light
        return tuple(int(v) for v in np.clip(np.array(rgb) * tint, 0, 255)) + (255,)

    stroke = max(1, int(round(0.09 * r)))
    if cls == STOP:
        draw.polygon(_regular(8, cx, cy, r, math.pi / 8), fill=c(WHITE))
        draw.polygon(_regular(8, cx, cy, 0.9 * r, math.pi / 8), fill=c(RED))
        _text(draw, "STOP", cx, cy, 0.42 * r, c(WHITE), stroke)
    elif cls == YIELD:
        outer = _regular(3, cx, cy, 1.15 * r, math.pi / 2)  # apex down
        draw.polygon(outer, fill=c(RED))
        draw.polygon(_regular(3, cx, cy, 0.6 * r, math.pi / 2), fill=c(WHITE))
    elif cls == SPEED:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c(RED))
        draw.ellipse([cx - 0.76 * r, cy - 0.76 * r, cx + 0.76 * r, cy + 0.76 * r], fill=c(WHITE))
        _text(draw, str(n), cx, cy, 0.7 * r, c(BLACK), max(1, int(round(0.13 * r))))
    elif cls == NO_ENTRY:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c(RED))
        draw.rectangle([cx - 0.68 * r, cy - 0.17 * r, cx + 0.68 * r, cy + 0.17 * r], fill=c(WHITE))
    else:
        s = 0.88 * r
        draw.rounded_rectangle([cx - s, cy - s, cx + s, cy + s], radius=0.15 * s, fill=c(WHITE))
        draw.rounded_rectangle([cx - 0.9 * s, cy - 0.9 * s, cx + 0.9 * s, cy + 0.9 * s], radius=0.12 * s, fill=c(BLUE))
        _text(draw, "P", cx, cy, 1.1 * s, c(WHITE), max(1, int(round(0.22 * s))))
    return layer


def render_sign(rng: np.random.Generator, cls: int, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One photo of a sign of class `cls`: (size x size x 3 uint8 image, what was drawn)."""
    big = size * SS
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    img = _background(rng, kind, big).convert("RGBA")
    r = rng.uniform(0.28, 0.42) * big
    margin = 0.8 * r  # the sign may be cut a little by the frame, as in a real crop
    cx, cy = rng.uniform(margin, big - margin), rng.uniform(margin, big - margin)
    tint = rng.uniform(0.75, 1.1) * rng.uniform(0.92, 1.08, 3)  # light level and colour cast
    if kind == "dusk":
        tint = tint * np.array([1.0, 0.85, 0.8])
    n = int(SPEEDS[int(rng.integers(len(SPEEDS)))])
    if rng.random() < 0.6:  # a post under the sign
        post = Image.new("RGBA", (big, big), (0, 0, 0, 0))
        grey = tuple(int(v) for v in np.clip(np.array([140, 140, 145]) * tint, 0, 255)) + (255,)
        ImageDraw.Draw(post).rectangle([cx - 0.08 * r, cy, cx + 0.08 * r, big], fill=grey)
        img = Image.alpha_composite(img, post)
    angle = float(rng.uniform(-18, 18))
    layer = _sign(cls, big, cx, cy, r, n, tint).rotate(angle, resample=Image.BICUBIC, center=(cx, cy))
    img = Image.alpha_composite(img, layer).convert("RGB").resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(2, 8), (size, size, 3))
    meta = {"classname": CLASSNAMES[cls], "background": kind, "radius": round(r / big, 4),
            "centre": [round(cx / big, 4), round(cy / big, 4)], "angle": round(angle, 2)}
    if cls == SPEED:
        meta["limit"] = n
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8), meta


def caption(rng: np.random.Generator, cls: int, meta: dict[str, Any], named_fraction: float, context_fraction: float) -> str:
    """A caption for a sign photo: its class name in a varied phrase, or a description only."""
    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    desc = pick(DESCRIPTIONS[cls]).format(n=meta.get("limit", 0))
    if rng.random() >= named_fraction:
        text = pick(UNNAMED).format(desc=desc)
    else:
        name = CLASSNAMES[cls]
        if cls == SPEED and rng.random() < 0.3:
            name = f"{meta['limit']} speed limit sign"
        text = pick(TEMPLATES).format(name=name, desc=desc)
    if rng.random() < context_fraction:
        text += " " + pick(CONTEXTS[meta["background"]])
    return re.sub(r"\ba (?=[aeiou8])", "an ", text)


def make_sample(seed: int, index: int, cls: int, cfg: PairsDemoConfig) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Sample `index` for `seed`, of class `cls`: (image, caption, metadata)."""
    rng = np.random.default_rng([seed, index])
    img, meta = render_sign(rng, cls, cfg.image_size)
    return img, caption(rng, cls, meta, cfg.named_fraction, cfg.context_fraction), {**meta, "seed": seed, "index": index}


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- writers


def write_pairs(out: Path, cfg: PairsDemoConfig) -> int:
    """out/images/*.png and out/captions.csv (filepath, title); returns the number of images."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("sign_*.png"):  # a smaller rerun must not leave stale images behind
        old.unlink()
    rows = []
    for i in range(cfg.n_images):
        img, text, _ = make_sample(cfg.seed, i, i % len(CLASSNAMES), cfg)
        name = f"sign_{i:05d}.png"
        (images / name).write_bytes(_png(img))
        rows.append((f"images/{name}", text))
    with (out / "captions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return len(rows)


def write_zeroshot(out: Path, cfg: PairsDemoConfig) -> int:
    """WebDataset shard out/test-000000.tar (png, cls, json) plus classnames.txt; returns the sample count."""
    out.mkdir(parents=True, exist_ok=True)
    labels = [c for c in range(len(CLASSNAMES)) for _ in range(cfg.zeroshot_per_class)]
    order = np.random.default_rng(cfg.zeroshot_seed).permutation(len(labels))  # mixed classes in the shard
    with wds.TarWriter(str(out / "test-000000.tar"), mtime=0) as sink:
        for i, j in enumerate(order):
            img, _, meta = make_sample(cfg.zeroshot_seed, int(j), labels[j], cfg)
            sink.write({"__key__": f"zs{i:06d}", "png": _png(img), "cls": str(labels[j]).encode("ascii"),
                        "json": json.dumps(meta).encode()})
    (out / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    return len(labels)


def write_demo_data(out: Path, cfg: PairsDemoConfig) -> None:
    """Write out/images/, out/captions.csv and out/zeroshot/ (see module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_pairs(out, cfg)
    write_zeroshot(out / "zeroshot", cfg)
