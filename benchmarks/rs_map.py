"""Windows per second of `domainfm map remote_sensing` versus a plain loop that reads and scores one window at a time.

On one scene and one exported model (loaded once), the same windows (the grid is planned once) are
scored five ways, interleaved, `--repeats` times:

- plain:    one set of raster handles in this process; for each window, read it (the same mosaic
            read, stretch and resampling), preprocess it, embed it alone (batch of 1, in fp32: the model as
            open_clip loads it, run with torch's default kernels: `contract.open_clip_embed`) and score it;
- batched:  `domains.remote_sensing.analyst.embed_grid` (at most `--batch-size` windows per model call; on a CPU two calls
            at once, each model thread reading its own batches; on a GPU reader threads read ahead) and the same scoring,
            in the commands' default precision (auto: bf16 where the device computes it natively, pipelines/infer/device.py);
- batched_fp32: the same in fp32 (`--precision fp32`), which the plain loop's probabilities equal to float rounding;
- map:      `map_raster` end to end (scene checks, scoring, GeoTIFFs, GeoJSON regions, quick-look, JSON), a first
            map: an empty embedding cache each run (the cache key's hash of the scene and the save included);
- remap:    `map_raster` again with other class names (the demo's in reverse order), the windows' embeddings
            from the cache of an earlier map: what an analyst trying class lists pays.

Prints windows, median seconds, windows and pixels per second and the ratio batched / plain
(medians), once per `--threads` count; `--json PATH` writes the benchmark contract's rows (batched and
map, each against plain, per thread count).
The probabilities of plain and batched are checked to agree. Without `--raster`, a synthetic
`--size` x `--size` px scene at 1 m (EPSG:32631) is written first: a procedural landscape of the
demo (`render_landscape`, 1024 px) repeated and mirrored to size. Without `--model`, the export
`exports/remote_sensing` when there is one, else the demo's tiny architecture randomly initialised
(throughput does not depend on the weights) with the demo's windows (64 px at 2 m: `--tile-m 128`).
`--arch ViT-B-32` maps with that open_clip architecture randomly initialised instead (a model of
realistic size, built here: nothing is downloaded), on the same windows read at its input size;
its rows are named after it.

Usage: python benchmarks/rs_map.py [--raster R.tif] [--model EXPORT | --arch ViT-B-32] [--size 4096] [--tile-m M] [--repeats 3]
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
from typing import Any, Callable

import numpy as np
import rasterio
import torch
from contract import (
    machine,
    open_clip_embed,
    random_model,
    readers_label,
    synthetic_scene,
    threads_label,
    versus_plain_loop_rows,
    write_json,
)

from domains.remote_sensing.analyst import embed_grid, load_encoder, map_raster, window_grid
from domains.remote_sensing.analyst_windows import WindowGrid, WindowReader, open_scene
from domains.remote_sensing.prompts import CLASSNAMES, TEMPLATES
from pipelines.infer.clip import ClipEncoder, ZeroShotClassifier
from pipelines.infer.stream import batches_at_once

MODEL = Path("exports/remote_sensing")
DEMO_TILE_M = 128.0  # the demo's curated tiles: 64 px at 2 m


def score_plain(encoder: ClipEncoder, classifier: ZeroShotClassifier, grid: WindowGrid) -> np.ndarray:
    """Read, preprocess, embed and score each window alone (windows without data are skipped, as in the map)."""
    read = WindowReader.of(grid)
    rows = []
    for window in grid.windows:
        pixels = read(window)
        if pixels is None:
            continue
        rows.append(classifier.probabilities(open_clip_embed(encoder.model, encoder.to_tensor(pixels).unsqueeze(0)))[0])
    read.close()
    return np.asarray(rows)


def score_batched(encoder: ClipEncoder, classifier: ZeroShotClassifier, grid: WindowGrid, batch_size: int, workers: int) -> np.ndarray:
    """The map command's reading and scoring."""
    _, embeddings = embed_grid(encoder, grid, batch_size, workers)
    return classifier.probabilities(embeddings)


def measure(methods: dict[str, Callable[[], Any]], repeats: int, cuda: bool) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Every method's run times, interleaved `repeats` times so machine noise hits every method alike, and its last output."""
    times: dict[str, list[float]] = {m: [] for m in methods}
    outputs = {}
    for _ in range(repeats):
        for name, fn in methods.items():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, outputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raster", type=Path, default=None, help="scene to map (default: a synthetic --size px scene)")
    ap.add_argument("--arch", default=None, help="an open_clip architecture randomly initialised instead of the export, e.g. "
                    "ViT-B-32 (a model of realistic size, built here without download); its rows are named after it")
    ap.add_argument("--model", type=Path, default=None, help=f"export to map with (default: {MODEL} when present, "
                    "else the tiny demo architecture, random init)")
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile-m", type=float, default=None, help="window side in metres (default: the model's training tiles)")
    ap.add_argument("--stride-m", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch CPU threads (0: torch's default); several "
                    "values measure each in turn, every method at the same count; on a busy machine 1 spares a batch of "
                    "one the threads' synchronisation")
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark contract's JSON here")
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    results, rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.arch is not None and args.model is not None:
            raise SystemExit("--arch and --model exclude each other")
        if args.model is None:
            args.model = MODEL if MODEL.is_dir() and args.arch is None else random_model(Path(tmp), args.arch or "domainfm-tiny")
            if args.model != MODEL and args.tile_m is None:
                args.tile_m = DEMO_TILE_M
        started = time.perf_counter()
        raster = args.raster or synthetic_scene(args.size, Path(tmp))
        prepare_s = time.perf_counter() - started
        encoder = load_encoder(args.model, args.device)  # the commands' default precision: auto
        reference = load_encoder(args.model, args.device, "fp32")  # the plain loop's: open_clip's model as it loads, fp32
        classifier = encoder.zero_shot(list(CLASSNAMES), list(TEMPLATES))
        scene = open_scene([raster])
        grid = window_grid(encoder, scene, args.tile_m, args.stride_m, 0.5)
        n = len(grid.windows)
        with rasterio.open(raster) as src:
            shape = [src.height, src.width]
        caches = (Path(tmp) / f"cache-{i}" for i in itertools.count())  # a first map: an empty cache each run
        warm = Path(tmp) / "warm-cache"
        map_raster(encoder, raster, Path(tmp) / "warm", tile_m=grid.tile_m, stride_m=grid.stride_m, cache=warm)  # for remap
        methods = {
            "plain": lambda: score_plain(reference, classifier, grid),
            "batched": lambda: score_batched(encoder, classifier, grid, args.batch_size, args.workers),
            "batched_fp32": lambda: score_batched(reference, classifier, grid, args.batch_size, args.workers),
            "map": lambda: map_raster(encoder, raster, Path(tmp) / "out", tile_m=grid.tile_m, stride_m=grid.stride_m,
                                      batch_size=args.batch_size, workers=args.workers, cache=next(caches)),
            "remap": lambda: map_raster(encoder, raster, Path(tmp) / "remap", list(reversed(CLASSNAMES)), tile_m=grid.tile_m,
                                        stride_m=grid.stride_m, batch_size=args.batch_size, workers=args.workers, cache=warm),
        }
        for threads in args.threads:
            torch.set_num_threads(threads or default_threads)
            times, outputs = measure(methods, args.repeats, encoder.device.type == "cuda")
            agree = float(np.abs(outputs["plain"] - outputs["batched"]).max())
            agree_fp32 = float(np.abs(outputs["plain"] - outputs["batched_fp32"]).max())
            medians = {name: float(np.median(t)) for name, t in times.items()}
            pixels = n * (grid.stride_m / scene.gsd_m) ** 2
            result = {
                "raster": str(args.raster or f"synthetic {args.size} x {args.size} px, 1 m (written in {prepare_s:.1f} s, not timed)"),
                "pixels": shape, "model": str(args.model), "device": str(encoder.device), "torch_threads": torch.get_num_threads(),
                "torch_default_threads": default_threads,
                "tile_m": grid.tile_m, "stride_m": grid.stride_m, "window_px": grid.window_px, "windows": n, "grid": [grid.rows, grid.cols],
                "batch_size": args.batch_size, "workers": args.workers, "repeats": args.repeats,
                "precision": encoder.precision, "max_probability_difference_plain_vs_batched": agree,
                "max_probability_difference_plain_vs_batched_fp32": agree_fp32,
                **{name: {"median_s": round(t, 3), "windows_per_s": round(n / t, 1), "megapixels_per_s": round(pixels / t / 1e6, 2),
                          "runs_s": [round(v, 3) for v in times[name]]} for name, t in medians.items()},
                "ratio_batched_vs_plain": round(medians["plain"] / medians["batched"], 2),
                "ratio_batched_fp32_vs_plain": round(medians["plain"] / medians["batched_fp32"], 2),
                "ratio_map_end_to_end_vs_plain": round(medians["plain"] / medians["map"], 2),
                "ratio_remap_vs_plain": round(medians["plain"] / medians["remap"], 2),
            }
            results.append(result)
            print(json.dumps(result, indent=2), flush=True)
            count = torch.get_num_threads()
            at = threads_label(count, default_threads)
            at_once = batches_at_once(encoder.device)
            notes = (f"{n} windows of {grid.window_px} px ({grid.tile_m:g} m), scene {result['raster']}, model {args.model}, "
                     f"{at} per model call for every method "
                     f"(batched and map: {at_once} calls at once), batch {args.batch_size}, {readers_label(at_once, args.workers)}; "
                     f"precision: ours {encoder.precision} (the commands' default, auto), the plain loop fp32; "
                     f"max |p_plain - p_batched| = {agree:.2e} (fp32 batched: {agree_fp32:.2e})")
            model_tag = f", {n} windows" + (f" [{args.arch}, random init]" if args.arch else "")
            rows += versus_plain_loop_rows(
                n, medians, {"batched": f"scene mapping: reading and scoring the windows (embed_grid){model_tag}",
                             "batched_fp32": f"scene mapping: reading and scoring the windows (embed_grid) in fp32 (--precision fp32)"
                                             f"{model_tag}",
                             "map": f"scene mapping end to end (map_raster: scoring, GeoTIFFs, GeoJSON, quick-look){model_tag}",
                             "remap": f"scene re-mapped with other classes, embeddings from the cache (map_raster end to end)"
                                      f"{model_tag}"},
                "windows/s", "window", at, args.repeats, notes, unbarred=("remap",))
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
