"""Demo inputs for the pathology domain, all procedural (no downloads).

- `videos/lecture_XX.mp4` + `.vtt`: narrated "lectures" mixing histology segments (one class each,
  slow pan/zoom) with a title slide, blank frames and a presenter; the transcript has fillers and
  off-topic talk, as real lecture videos do;
- `slides/slide_XX.tiff` + `slides/captions.csv`: small pyramidal whole-slide images (tiled generic
  TIFF, one page per level; OpenSlide 4 reads MPP from XResolution in pixels per centimetre, so
  `openslide.mpp-x` is exact) with class regions on glass and a pen stroke;
- `zeroshot/test-000000.tar` (png, cls, json) + `classnames.txt`: labelled patches from a different
  seed. No templates file: the evaluation takes its templates from params `pathology.evaluate.templates`
  or prompts.py and writes the ones it used beside its metrics (metrics/pathology/clip_benchmark/zeroshot/).

`render_tissue` draws every image, so videos, slides and the zero-shot set share one visual
vocabulary without sharing pixels. Feature sizes scale with `scale` (1.0 = slide pixels at
`slide_mpp`); the zero-shot patches use scale slide_mpp / zeroshot_mpp so that they match slide tiles
curated at `zeroshot_mpp`.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from scipy.spatial import cKDTree

# Must match CLASSNAMES in domains/pathology/__init__.py (not imported: that module imports this one).
CLASSNAMES = ("adipose tissue", "lymphocytes", "mucus", "stroma", "adenocarcinoma")
ADIPOSE, LYMPHOCYTES, MUCUS, STROMA, ADENOCARCINOMA = range(5)


@dataclass
class PathologyDemoConfig:
    """params.yaml `pathology.demo`."""

    seed: int = 0
    # videos
    n_videos: int = 4
    video_seconds: float = 75.0
    histology_seconds: list[float] = field(default_factory=lambda: [8.0, 10.0, 12.0])  # segment lengths drawn from
    fps: int = 10
    video_size: int = 256
    # slides
    n_slides: int = 2
    slide_size: int = 4096  # level-0 px (square)
    slide_mpp: float = 0.5
    slide_levels: int = 3  # pyramid levels, each half the previous
    tissue_scale: float = 1.0  # feature size in slide pixels
    video_tissue_scale: float = 2.7  # feature size in video pixels (a lecture's magnification)
    narration_gap_s: float = 1.0  # a histology cue starts/ends this long inside its segment (no cue spans a cut)
    slide_classes: int = 5  # distinct classes per slide (1 or 2: slides dominated by few classes)
    # zero-shot set
    patch_size: int = 64
    zeroshot_per_class: int = 40
    zeroshot_seed: int = 1000
    zeroshot_mpp: float = 1.0  # patches look like slide tiles read at this MPP


# ---------------------------------------------------------------- drawing helpers


def _noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth noise in about [-1, 1]."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return n / (n.std() + 1e-6) / 3


def _blobs(shape: tuple[int, int], centres: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of discs of `radius` around `centres` (N x 2, row/col)."""
    pts = np.zeros(shape, bool)
    if len(centres):
        r = np.clip(centres[:, 0].astype(int), 0, shape[0] - 1)
        c = np.clip(centres[:, 1].astype(int), 0, shape[1] - 1)
        pts[r, c] = True
    return ndimage.distance_transform_edt(~pts) <= radius


def _ellipses(img: np.ndarray, centres: np.ndarray, a: float, b: float, angles: np.ndarray, colour: np.ndarray) -> None:
    """Paint filled ellipses (semi-axes a along `angles`, b across) onto img in place."""
    h, w = img.shape[:2]
    ext = int(np.ceil(a)) + 1
    for (y, x), t in zip(centres, angles):
        y0, y1, x0, x1 = max(0, int(y) - ext), min(h, int(y) + ext + 1), max(0, int(x) - ext), min(w, int(x) + ext + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - y, xx - x
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        img[y0:y1, x0:x1][inside] = colour


def _mix(base: np.ndarray, colour: Any, mask: np.ndarray) -> np.ndarray:
    """Blend colour into base where mask (bool or 0-1 float)."""
    m = mask.astype(np.float32)[..., None]
    return base * (1 - m) + np.asarray(colour, np.float32) * m


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain variation and sensor noise, then uint8."""
    img = img * rng.uniform(0.93, 1.05, size=3) + rng.normal(0, 3.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- the five tissues


def render_tissue(cls: int, size: int, rng: np.random.Generator, scale: float | None = None) -> np.ndarray:
    """An H&E-like size x size RGB uint8 image of class `cls` (CLASSNAMES index).

    `scale` multiplies every feature size (default: size / 160, clipped to [0.4, 1.5], so small
    patches still show several cells).
    """
    if scale is None:
        scale = float(np.clip(size / 160, 0.4, 1.5))
    shape = (size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if cls == ADIPOSE:
        # Large empty polygonal cells with thin pink membranes and a few flattened nuclei.
        cell = 34 * scale * rng.uniform(0.85, 1.2)
        n = max(4, int((size / cell) ** 2 * 1.3))
        pts = rng.uniform(-cell, size + cell, size=(n, 2))
        d, idx = cKDTree(pts).query(np.stack([yy.ravel(), xx.ravel()], 1), k=2)
        edge = (d[:, 1] - d[:, 0]).reshape(shape)
        membrane = np.clip(1.0 - edge / (1.6 * max(scale, 0.5)), 0, 1)
        img = np.full(shape + (3,), 0, np.float32) + np.array([247, 243, 246], np.float32)
        img = _mix(img, (222, 150, 190), membrane)
        k = max(1, n // 6)
        on_edge = np.argwhere(edge < 1.2)
        if len(on_edge):
            sel = on_edge[rng.integers(0, len(on_edge), k)]
            _ellipses(img, sel, 3.5 * scale + 1, 1.3 * scale + 0.6, rng.uniform(0, np.pi, k), np.array([95, 60, 140], np.float32))
    elif cls == LYMPHOCYTES:
        # Dense small round dark-purple nuclei on scant pale cytoplasm.
        img = np.zeros(shape + (3,), np.float32) + np.array([214, 170, 208], np.float32)
        r = 3.2 * scale + 0.6
        n = int(size * size / (r * r * 7.0))
        centres = rng.uniform(0, size, size=(n, 2))
        nuclei = _blobs(shape, centres, r)
        shade = 0.85 + 0.15 * _noise(shape, 2, rng)
        img = _mix(img, np.array([62, 38, 118]) , nuclei * shade)
    elif cls == MUCUS:
        # Pale blue-grey / light-pink wispy amorphous material, very few cells.
        wisps = _noise(shape, 6 * scale + 1, rng)
        streak = np.sin((xx * rng.uniform(0.6, 1.4) + yy) / (5 * scale + 1) + 6 * _noise(shape, 14 * scale + 2, rng))
        t = np.clip(0.5 + 0.6 * wisps + 0.25 * streak, 0, 1)[..., None]
        img = np.array([205, 212, 226], np.float32) * (1 - t) + np.array([232, 214, 228], np.float32) * t
        k = max(1, int(size * size / 9000))
        centres = rng.uniform(0, size, size=(k, 2))
        img = _mix(img, (120, 100, 160), _blobs(shape, centres, 2.5 * scale + 0.5))
    elif cls == STROMA:
        # Pink eosinophilic wavy fibres with sparse elongated nuclei along them.
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        warp = 9 * scale * np.sin(u / (22 * scale + 1)) + 12 * scale * _noise(shape, 12 * scale + 2, rng)
        fibres = 0.5 + 0.5 * np.sin((v + warp) / (2.2 * scale + 0.5))
        img = np.array([236, 170, 196], np.float32) * (1 - fibres[..., None]) + np.array([208, 88, 140], np.float32) * fibres[..., None]
        k = max(2, int(size * size / 2200))
        centres = rng.uniform(0, size, size=(k, 2))
        _ellipses(img, centres, 7 * scale + 1.5, 1.6 * scale + 0.6, np.full(k, theta), np.array([90, 50, 130], np.float32))
    elif cls == ADENOCARCINOMA:
        # Irregular glands: white lumen ringed by crowded large dark nuclei, in purple-pink stroma.
        img = np.zeros(shape + (3,), np.float32) + np.array([200, 130, 180], np.float32)
        img = _mix(img, (175, 110, 175), np.clip(0.5 + _noise(shape, 3, rng), 0, 1))
        g = 30 * scale * rng.uniform(0.85, 1.15)
        n = max(2, int((size / (2.4 * g)) ** 2 * 1.6))
        lumen = np.zeros(shape, bool)
        ring = np.zeros(shape, bool)
        ext = int(g * 0.95) + 2
        for cy, cx in rng.uniform(-g / 2, size + g / 2, size=(n, 2)):
            y0, y1 = max(0, int(cy) - ext), min(size, int(cy) + ext)
            x0, x1 = max(0, int(cx) - ext), min(size, int(cx) + ext)
            if y0 >= y1 or x0 >= x1:
                continue
            ly, lx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx  # local window: glands are small
            ang = np.arctan2(ly, lx)
            rad = g * (0.55 + 0.25 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.12 * np.sin(5 * ang + rng.uniform(0, 6)))
            dist = np.hypot(ly, lx)
            lumen[y0:y1, x0:x1] |= dist < rad * 0.55
            ring[y0:y1, x0:x1] |= (dist < rad) & (dist >= rad * 0.55)
        img = _mix(img, (150, 80, 160), ring)
        r = 2.8 * scale + 0.7
        cand = np.argwhere(ring)
        if len(cand):
            k = int(len(cand) / (r * r * 2.2))
            nuclei = _blobs(shape, cand[rng.integers(0, len(cand), k)] + rng.normal(0, 0.5, (k, 2)), r)
            img = _mix(img, (48, 24, 96), nuclei & ~lumen)
        img = _mix(img, (246, 240, 244), lumen)
    else:
        raise ValueError(f"unknown class index {cls}")
    return _finish(img, rng)


# ---------------------------------------------------------------- zero-shot set


def write_zeroshot(out: Path, cfg: PathologyDemoConfig) -> int:
    """out/test-000000.tar (png, cls, json) + classnames.txt; returns the count."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.zeroshot_seed)
    scale = cfg.tissue_scale * cfg.slide_mpp / cfg.zeroshot_mpp
    items = [(c, i) for c in range(len(CLASSNAMES)) for i in range(cfg.zeroshot_per_class)]
    order = rng.permutation(len(items))  # mixed classes in the shard
    with wds.TarWriter(str(out / "test-000000.tar"), mtime=0) as sink:
        for j in order:
            c, i = items[j]
            img = render_tissue(c, cfg.patch_size, rng, scale=scale * rng.uniform(0.85, 1.15))
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            meta = {"classname": CLASSNAMES[c], "index": i}
            sink.write({
                "__key__": f"{CLASSNAMES[c].replace(' ', '_')}_{i:04d}",
                "png": buf.getvalue(),
                "cls": str(c).encode(),
                "json": json.dumps(meta).encode(),
            })
    (out / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    return len(items)


# ---------------------------------------------------------------- slides


def render_slide(cfg: PathologyDemoConfig, seed: int) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """Level-0 RGB of one slide and its tissue regions [(cls, (x0, y0, x1, y1))]."""
    rng = np.random.default_rng(seed)
    n = cfg.slide_size
    img = np.full((n, n, 3), 242, np.uint8)
    img += rng.integers(0, 4, size=(1, 1, 3), dtype=np.uint8)  # slightly tinted glass
    regions = []
    cell = n // 3
    slots = [(r, c) for r in range(3) for c in range(3)]
    picks = rng.permutation(len(slots))[: len(CLASSNAMES)]
    if cfg.slide_classes >= len(CLASSNAMES):
        classes = rng.permutation(len(CLASSNAMES))
    else:  # slide i: classes i, i+1, ... (mod 5) repeated over the regions
        first = (seed - 17 - cfg.seed * 1000) % len(CLASSNAMES)
        own = [(first + k) % len(CLASSNAMES) for k in range(max(1, cfg.slide_classes))]
        classes = np.array([own[k % len(own)] for k in range(len(CLASSNAMES))])
    for cls, slot in zip(classes, picks):
        r, c = slots[slot]
        side = int(cell * rng.uniform(0.6, 0.8))
        y0 = r * cell + rng.integers(0, cell - side)
        x0 = c * cell + rng.integers(0, cell - side)
        tissue = render_tissue(int(cls), side, rng, scale=cfg.tissue_scale)
        # irregular blob outline so the tissue edge is not a square
        yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
        ang = np.arctan2(yy, xx)
        rad = 0.42 + 0.05 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.03 * np.sin(7 * ang + rng.uniform(0, 6))
        inside = np.hypot(yy, xx) < rad
        img[y0 : y0 + side, x0 : x0 + side][inside] = tissue[inside]
        regions.append((int(cls), (int(x0), int(y0), int(x0 + side), int(y0 + side))))
    # a green marker stroke across the free slot region and one tissue edge
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    free = [slots[s] for s in range(len(slots)) if s not in set(picks.tolist())][0]
    cy, cx = (free[0] + 0.5) * cell, (free[1] + 0.5) * cell
    pts = [(cx - cell * 0.45 + i * cell * 0.09, cy + cell * 0.15 * np.sin(i / 2)) for i in range(11)]
    draw.line(pts, fill=(40, 150, 110), width=max(8, n // 120))
    return np.asarray(pil), regions


def write_slide(path: Path, img: np.ndarray, mpp: float, levels: int) -> None:
    """Tiled pyramidal generic TIFF (one page per level) with resolution in px/cm, so OpenSlide knows MPP."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        level = img
        for i in range(levels):
            res = 1e4 / (mpp * 2**i)  # pixels per centimetre
            tif.write(
                np.ascontiguousarray(level),
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if i == 0 else 1,
            )
            h, w = level.shape[:2]
            level = np.asarray(Image.fromarray(level).resize((max(1, w // 2), max(1, h // 2)), Image.BOX))


def write_slides(out: Path, cfg: PathologyDemoConfig) -> None:
    """Write `cfg.n_slides` pyramidal slides with their region boxes, and captions.csv naming each slide's classes."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cfg.n_slides):
        img, regions = render_slide(cfg, cfg.seed * 1000 + 17 + i)
        slide_id = f"slide_{i:02d}"
        write_slide(out / f"{slide_id}.tiff", img, cfg.slide_mpp, cfg.slide_levels)
        classes = list(dict.fromkeys(CLASSNAMES[c] for c, _ in sorted(regions, key=lambda r: (r[1][1], r[1][0]))))
        caption = (f"H&E section showing {', '.join(classes[:-1])} and {classes[-1]}." if len(classes) > 1
                   else f"H&E section showing {classes[0]}.")
        rows.append((slide_id, caption, ";".join(classes)))
        boxes = [{"cls": c, "classname": CLASSNAMES[c], "bbox_level0": b} for c, b in regions]
        (out / f"{slide_id}.regions.json").write_text(json.dumps(boxes, indent=1))
    with open(out / "captions.csv", "w", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["slide_id", "caption", "label"])
        w.writerows(rows)


# ---------------------------------------------------------------- lecture videos

NARRATION = {  # short, and the class name comes first: it must survive a 32-token text context
    ADIPOSE: [
        "adipose tissue, large empty fat cells",
        "adipose tissue with thin membranes",
        "this is adipose tissue, clear fat vacuoles",
    ],
    LYMPHOCYTES: [
        "lymphocytes, a dense infiltrate",
        "lymphocytes, small round dark nuclei",
        "these are sheets of lymphocytes",
    ],
    MUCUS: [
        "mucus, pale wispy mucin with few cells",
        "mucus here, pools of pale mucin",
        "this is extracellular mucus, bluish mucin",
    ],
    STROMA: [
        "stroma, pink wavy collagen fibres",
        "fibrous stroma with spindle nuclei",
        "this is desmoplastic stroma, pink and wavy",
    ],
    ADENOCARCINOMA: [
        "adenocarcinoma, glands with crowded nuclei",
        "adenocarcinoma at 40x, irregular glands",
        "this is adenocarcinoma, malignant glands",
    ],
}
FILLERS = ["um", "so, uh", "okay", "right, so", "uh, let me see"]
OFF_TOPIC = [
    "don't forget to like and subscribe",
    "if you have questions leave them in the comments",
    "welcome back to the channel everybody",
    "my coffee went cold, anyway",
]


def _vtt_time(t: float) -> str:
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:06.3f}"


def _title_frame(size: int, text: str) -> np.ndarray:
    """A title slide: white type, sized as a projected slide's, on a coloured background."""
    pil = Image.new("RGB", (size, size), (30, 50, 110))
    d = ImageDraw.Draw(pil)
    font = ImageFont.load_default(size=max(10, size // 14))
    for k, line in enumerate(text.split("\n")):
        d.text((size // 16, size // 3 + int(size / 10) * k), line, fill=(255, 255, 255), font=font)
    return np.asarray(pil)


def _presenter_frame(size: int, rng: np.random.Generator) -> np.ndarray:
    """A talking-head cut: a face filling about a third of the frame against a muted wall."""
    wall = rng.choice([(120, 120, 118), (150, 140, 120), (90, 100, 110), (170, 170, 160)])
    pil = Image.new("RGB", (size, size), tuple(int(v) for v in wall))
    d = ImageDraw.Draw(pil)
    c = size // 2
    d.rectangle((c - int(size * 0.42), int(size * 0.8), c + int(size * 0.42), size), fill=(40, 40, 60))  # shoulders
    d.rectangle((c - size // 9, int(size * 0.7), c + size // 9, int(size * 0.85)), fill=(214, 162, 130))  # neck
    d.ellipse((c - int(size * 0.27), int(size * 0.12), c + int(size * 0.27), int(size * 0.8)), fill=(224, 172, 140))  # face
    d.chord((c - int(size * 0.28), int(size * 0.08), c + int(size * 0.28), int(size * 0.45)), 180, 360, fill=(70, 50, 35))  # hair
    return np.asarray(pil)


def _segments(cfg: PathologyDemoConfig, rng: np.random.Generator, video: int) -> list[dict]:
    """Timeline of segments (kind, seconds, class) filling video_seconds."""
    segs = [{"kind": "title", "seconds": 5.0}]
    classes = list(rng.permutation(len(CLASSNAMES)))
    total = cfg.video_seconds
    used = 5.0
    i = 0
    while used < total - 1e-6:
        if i % 3 == 2:
            kind = "presenter" if rng.random() < 0.6 else "blank"
            secs = 4.0 if kind == "presenter" else 2.0
            seg = {"kind": kind, "seconds": secs}
        else:
            seg = {"kind": "histology", "seconds": float(rng.choice(cfg.histology_seconds)), "cls": int(classes[i % len(classes)])}
        seg["seconds"] = min(seg["seconds"], total - used)
        segs.append(seg)
        used += seg["seconds"]
        i += 1
    return segs


def _open_stream(container: Any, cfg: PathologyDemoConfig) -> Any:
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"  # libx264 is optional in PyAV builds
    stream = container.add_stream(codec, rate=cfg.fps)
    stream.width = stream.height = cfg.video_size
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": "23", "preset": "veryfast"}
    return stream


def write_video(mp4: Path, vtt: Path, cfg: PathologyDemoConfig, video: int) -> None:
    """Write lecture `video` (0-based): its segments encoded as MP4 and the narration as WebVTT."""
    import av

    rng = np.random.default_rng(cfg.seed * 7919 + 101 + video)
    segs = _segments(cfg, rng, video)
    size = cfg.video_size
    cues = []
    t = 0.0
    with av.open(str(mp4), "w") as container:
        stream = _open_stream(container, cfg)
        for seg in segs:
            n = int(round(seg["seconds"] * cfg.fps))
            if seg["kind"] == "histology":
                big = render_tissue(seg["cls"], int(size * 1.6), rng, scale=cfg.video_tissue_scale)
                frames = _pan_zoom(big, size, n, rng)
                phrase = str(rng.choice(NARRATION[seg["cls"]]))
                text = f"{rng.choice(FILLERS)} {phrase}" if rng.random() < 0.5 else phrase
            elif seg["kind"] == "title":
                frame = _title_frame(size, f"Pathology lecture {video + 1}\nColorectal histology\nDr. Demo")
                frames = (frame for _ in range(n))
                text = "welcome everybody, today we go through some colorectal histology"
            elif seg["kind"] == "presenter":
                frame = _presenter_frame(size, rng)
                frames = (frame for _ in range(n))
                text = f"{rng.choice(FILLERS)}, {rng.choice(OFF_TOPIC)}"
            else:
                frame = np.zeros((size, size, 3), np.uint8)
                frames = (frame for _ in range(n))
                text = str(rng.choice(FILLERS))
            for rgb in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                    container.mux(packet)
            gap = min(cfg.narration_gap_s, n / cfg.fps / 4) if seg["kind"] == "histology" else 0.0
            cues.append((t + gap, t + n / cfg.fps - gap, text))
            t += n / cfg.fps
        for packet in stream.encode():
            container.mux(packet)
    lines = ["WEBVTT", ""]
    for k, (a, b, text) in enumerate(cues, 1):
        lines += [str(k), f"{_vtt_time(a)} --> {_vtt_time(b)}", text, ""]
    vtt.write_text("\n".join(lines))


def _pan_zoom(big: np.ndarray, size: int, n: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """N frames panning/zooming slowly over `big`: neighbouring windows overlap, none identical."""
    h = big.shape[0]
    z0, z1 = rng.uniform(0.75, 0.95, 2)
    p0, p1 = rng.uniform(0, 1, (2, 2))
    pil = Image.fromarray(big)
    for i in range(n):
        a = i / max(1, n - 1)
        win = int(h * ((1 - a) * z0 + a * z1))
        oy, ox = ((1 - a) * p0 + a * p1) * (h - win)
        crop = pil.crop((int(ox), int(oy), int(ox) + win, int(oy) + win)).resize((size, size), Image.BILINEAR)
        yield np.asarray(crop)


def write_videos(out: Path, cfg: PathologyDemoConfig) -> None:
    """Write `cfg.n_videos` lectures (lecture_XX.mp4 + .vtt) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for v in range(cfg.n_videos):
        write_video(out / f"lecture_{v:02d}.mp4", out / f"lecture_{v:02d}.vtt", cfg, v)


# ---------------------------------------------------------------- entry point


def write_demo_data(out: Path, cfg: PathologyDemoConfig) -> None:
    """Write out/videos/, out/slides/ and out/zeroshot/ (see module docstring); params = pathology.demo."""
    out = Path(out)
    write_videos(out / "videos", cfg)
    write_slides(out / "slides", cfg)
    write_zeroshot(out / "zeroshot", cfg)
