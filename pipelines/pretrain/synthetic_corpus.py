"""A generic, out-of-domain image-text corpus for "pretraining" the tiny demo CLIP.

Coloured shapes, textures and simple compositions with varied captions. It teaches colour, shape,
texture and layout words, and deliberately never any land-cover concept (see FORBIDDEN_WORDS), so
that zero-shot skill on the remote-sensing classes must come from domain adaptation.

Each sample is drawn from its own generator seeded by (seed, index): the corpus is deterministic
and any sample can be regenerated alone, whatever the shard size.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

# Words the corpus must never use (checked by tests): the demo's domain vocabulary.
FORBIDDEN_WORDS = (
    "water", "forest", "farmland", "field", "residential", "building", "house", "road", "street",
    "park", "parking", "car", "tree", "grass", "lake", "river", "satellite", "aerial",
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (130, 50, 170), "pink": (245, 150, 190), "black": (15, 15, 15),
    "white": (245, 245, 245), "gray": (128, 128, 128), "brown": (120, 75, 40), "cyan": (40, 210, 220),
    "magenta": (210, 40, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "hexagon")
SIZES = {"small": 0.13, "medium": 0.22, "large": 0.34}  # radius as a fraction of the image side
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
RELATIONS = ("above", "below", "to the left of", "to the right of")
SS = 2  # supersampling factor: shapes are drawn large and downsampled for smooth edges


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, offset: float = 0.0) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(offset + rot + 2 * math.pi * k / n), cy + radius * math.sin(offset + rot + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if shape == "square":
        return ring(4, r * 1.25, math.pi / 4)
    if shape == "diamond":
        return ring(4, r * 1.2)
    if shape == "triangle":
        return ring(3, r * 1.2, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r)
    if shape == "star":
        outer, inner = ring(5, r * 1.2, -math.pi / 2), ring(5, r * 0.5, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        t = r * 0.38
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(shape)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple, bg: tuple, rot: float) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        draw.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r], fill=bg)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, rot), fill=colour)


def _pick_colours(rng: np.random.Generator, k: int, avoid: tuple[str, ...] = ()) -> list[str]:
    names = [c for c in COLOURS if c not in avoid]
    return [names[i] for i in rng.choice(len(names), size=k, replace=False)]


def _shapes_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, dict]:
    """One to three groups of shapes on a plain background, placed in distinct grid cells."""
    big = size * SS
    (bg_name,) = _pick_colours(rng, 1)
    bg = COLOURS[bg_name]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    n_groups = int(rng.choice([1, 1, 2, 2, 3]))
    colours = _pick_colours(rng, n_groups, avoid=(bg_name,))
    groups = []
    for colour in colours:
        shape = SHAPES[rng.integers(len(SHAPES))]
        count = 1 if n_groups == 3 else int(rng.choice([1, 1, 2, 3]))
        groups.append((count, shape, colour))
    total = sum(g[0] for g in groups)
    # A lone shape may be any size; several share the image, so they are small or medium.
    size_word = str(rng.choice(list(SIZES) if total == 1 else ["small", "medium"]))
    span = big / 3 if total > 1 else big  # side of each shape's grid cell
    r = min(SIZES[size_word] * big, 0.45 * span)
    cells = rng.permutation(9)[:total] if total > 1 else np.array([4])
    k = 0
    for count, shape, colour in groups:
        for _ in range(count):
            cell = int(cells[k]) if total > 1 else 0
            k += 1
            jitter = max(0.0, span / 2 - r) * 0.6
            cx = (cell % 3 + 0.5) * span + rng.uniform(-jitter, jitter)
            cy = (cell // 3 + 0.5) * span + rng.uniform(-jitter, jitter)
            _draw_shape(draw, shape, cx, cy, r, COLOURS[colour], bg, rng.uniform(-0.3, 0.3))
    parts = [
        f"{_a(size_word)} {colour} {shape}" if count == 1 else f"{NUMBERS[count]} {size_word} {colour} {_plural(shape)}"
        for count, shape, colour in groups
    ]
    if len(parts) > 1:
        things = ", ".join(parts[:-1]) + " and " + parts[-1]
    else:
        things = parts[0]
    templates = (
        "{t} on {bg} background", "a picture of {t} on {bg} background", "{t} against a plain {b} backdrop",
        "an illustration showing {t} on {bg} background", "{t}, {b} background", "simple drawing: {t} on {b}",
    )
    caption = templates[rng.integers(len(templates))].format(t=things, bg=_a(bg_name), b=bg_name)
    meta = {"kind": "shapes", "background": bg_name, "groups": [list(g) for g in groups]}
    return np.asarray(img.resize((size, size), Image.LANCZOS)), caption, meta


def _relation_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, dict]:
    """Two shapes in a stated spatial relation ("a yellow star above a green triangle")."""
    big = size * SS
    bg_name, c1, c2 = _pick_colours(rng, 3)
    bg = COLOURS[bg_name]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    s1, s2 = (SHAPES[i] for i in rng.integers(len(SHAPES), size=2))
    rel = RELATIONS[rng.integers(len(RELATIONS))]
    r = big * rng.uniform(0.13, 0.19)
    near, far = big * 0.27, big * 0.73
    along = big / 2 + rng.uniform(-0.12, 0.12) * big
    first, second = {"above": ((along, near), (along, far)), "below": ((along, far), (along, near)),
                     "to the left of": ((near, along), (far, along)), "to the right of": ((far, along), (near, along))}[rel]
    _draw_shape(draw, s1, *first, r, COLOURS[c1], bg, rng.uniform(-0.3, 0.3))
    _draw_shape(draw, s2, *second, r, COLOURS[c2], bg, rng.uniform(-0.3, 0.3))
    templates = ("{a} {rel} {b}", "{a} {rel} {b} on {bg} background", "{a} is {rel} {b}", "there is {a} {rel} {b}")
    caption = templates[rng.integers(len(templates))].format(a=_a(f"{c1} {s1}"), b=_a(f"{c2} {s2}"), rel=rel, bg=_a(bg_name))
    meta = {"kind": "relation", "background": bg_name, "first": [c1, s1], "second": [c2, s2], "relation": rel}
    return np.asarray(img.resize((size, size), Image.LANCZOS)), caption, meta


TEXTURES = ("stripes", "checkerboard", "dots", "noise", "gradient")


def _texture_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, dict]:
    """A two-colour texture filling the image."""
    n1, n2 = _pick_colours(rng, 2)
    a, b = np.array(COLOURS[n1], np.float32), np.array(COLOURS[n2], np.float32)
    kind = TEXTURES[rng.integers(len(TEXTURES))]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(size / 10, size / 4)
    detail = ""
    if kind == "stripes":
        detail = str(rng.choice(["horizontal", "vertical", "diagonal"]))
        coord = {"horizontal": y, "vertical": x, "diagonal": (x + y) / math.sqrt(2)}[detail]
        t = (np.mod(coord + rng.uniform(0, period), period) < period / 2).astype(np.float32)
    elif kind == "checkerboard":
        t = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    elif kind == "dots":
        u, v = np.mod(x, period) - period / 2, np.mod(y, period) - period / 2
        t = (u * u + v * v < (period * rng.uniform(0.2, 0.35)) ** 2).astype(np.float32)
    elif kind == "noise":
        t = (rng.random((size, size)) < 0.5).astype(np.float32)
    else:
        detail = str(rng.choice(["left to right", "top to bottom"]))
        t = (x if detail == "left to right" else y) / (size - 1)
    img = a * (1 - t[..., None]) + b * t[..., None]
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    captions = {
        "stripes": ["{d} {a} and {b} stripes", "a pattern of {d} stripes in {a} and {b}", "{a} and {b} striped pattern"],
        "checkerboard": ["a checkerboard of {a} and {b} squares", "{a} and {b} checkered pattern", "a {a} and {b} chessboard pattern"],
        "dots": ["{b} dots on {a_a} background", "a polka dot pattern, {b} on {a}", "a grid of {b} spots on {a}"],
        "noise": ["random {a} and {b} speckles", "{a_a} and {b} noise texture", "speckled pattern of {a} and {b}"],
        "gradient": ["a smooth gradient from {a} to {b}", "{a} fading into {b}, {d}", "a {d} gradient of {a} and {b}"],
    }[kind]
    caption = captions[rng.integers(len(captions))].format(a=n1, b=n2, a_a=_a(n1), d=detail).strip()
    meta = {"kind": "texture", "texture": kind, "colours": [n1, n2], "detail": detail}
    return img, caption, meta


def make_sample(seed: int, index: int, image_size: int) -> tuple[np.ndarray, str, dict[str, Any]]:
    """Sample `index` of the corpus for `seed`: (HxWx3 uint8 image, caption, metadata)."""
    rng = np.random.default_rng([seed, index])
    u = rng.random()
    if u < 0.45:
        img, caption, meta = _shapes_sample(rng, image_size)
    elif u < 0.7:
        img, caption, meta = _relation_sample(rng, image_size)
    else:
        img, caption, meta = _texture_sample(rng, image_size)
    return img, caption, {**meta, "index": index, "seed": seed}


def write_corpus(out: Path, n_samples: int, image_size: int, seed: int, shard_size: int = 1000) -> int:
    """Write n_samples as WebDataset shards out/train-{NNNNNN}.tar (png, txt, json); returns the count."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("train-*.tar"):  # a smaller rerun must not leave stale shards behind
        old.unlink()
    sink = None
    for i in range(n_samples):
        if i % shard_size == 0:
            if sink is not None:
                sink.close()
            sink = wds.TarWriter(str(out / f"train-{i // shard_size:06d}.tar"), mtime=0)  # mtime: reproducible bytes
        img, caption, meta = make_sample(seed, i, image_size)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        sink.write({"__key__": f"syn{i:08d}", "png": buf.getvalue(), "txt": caption, "json": json.dumps(meta).encode()})
    if sink is not None:
        sink.close()
    return n_samples
