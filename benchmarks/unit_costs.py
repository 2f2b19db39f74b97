"""Per-unit costs of curation and training on this machine, the inputs of docs/scale.md's capacity plan.

    python benchmarks/unit_costs.py [--root .] [--repeats 3] [--out reports/unit_costs.json]

Needs the demo's raw data (`dvc repro demo-data`) and, for training, its train_steps.csv files
(`dvc repro train`). For each domain it runs `domainfm curate` (one worker process, so the figure is
per core) on a sample of the demo's inputs, `--repeats` times, and records the median wall time and
the peak RSS of the curation processes, divided by the units of work:

- remote sensing: seconds per curated tile (window read, warped, checked, encoded);
- pathology: seconds per video minute and per slide (tissue tiles at the demo's MPP);
- CT: seconds per volume (read, reoriented, resampled, cropped, report de-identified);
- training: samples per second per domain, from the demo's own train_steps.csv (median of steps).

Memory flatness: pathology curation of 1x and 8x the videos (copies under new names, each its own
unit), peak RSS of each, which should stay within 20% of each other.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_curate(args: list[str], out: Path, cwd: Path) -> tuple[float, float, dict]:
    """(wall seconds, peak RSS MB of the process tree's largest process, summary.json) of one `domainfm curate` run."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / f".{out.name}.units", ignore_errors=True)  # no cache: every unit is processed
    cmd = [sys.executable, "-c", "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)",
           "domainfm", "curate", *args, "--workers", "1", "--out", str(out), "--allow-empty"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"curate failed: {' '.join(args)}\n{done.stderr[-2000:]}")
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return seconds, peak_kb / 1024, json.loads((out / "summary.json").read_text())


def video_minutes(folder: Path) -> float:
    """Total duration of the .mp4 files in `folder`, in minutes."""
    import av

    total = 0.0
    for path in sorted(folder.glob("*.mp4")):
        with av.open(str(path)) as container:
            total += float(container.duration) / av.time_base
    return total / 60


def median_run(repeats: int, args: list[str], out: Path, cwd: Path) -> tuple[float, float, dict]:
    """Median seconds, max peak RSS and the last summary over `repeats` runs."""
    runs = [run_curate(args, out, cwd) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2]


def samples_per_second(steps_csv: Path) -> float | None:
    """Median samples/s over a train_steps.csv's steps (the first 5 dropped as warm-up)."""
    if not steps_csv.is_file():
        return None
    with open(steps_csv) as f:
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")]
    return statistics.median(rates[5:] or rates) if rates else None


def main() -> None:
    """Measure and print the per-unit costs as JSON (and write them to --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project root holding data/ and params.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", type=int, default=3, help="videos in the 1x pathology sample (8x copies them)")
    parser.add_argument("--out", type=Path, default=None)
    a = parser.parse_args()
    root = a.root.resolve()
    params = str(root / "params.yaml")
    raw = root / "data"
    figures: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        rs = raw / "remote_sensing/raw"
        secs, peak, summary = median_run(a.repeats, ["remote_sensing", "--raster", str(rs / "scene.tif"), "--osm",
                                                     str(rs / "features.osm"), "--params", params], work / "rs", root)
        tiles = summary["pairs"]["kept"] + sum(summary["rejected"].values())
        figures["remote_sensing"] = {"seconds": round(secs, 2), "tiles": tiles, "s_per_tile": round(secs / tiles, 4),
                                     "peak_rss_mb": round(peak)}

        videos = work / "videos"
        videos.mkdir()
        for mp4 in sorted((raw / "pathology/raw/videos").glob("*.mp4"))[: a.videos]:
            for part in (mp4, mp4.with_suffix(".vtt")):
                shutil.copy(part, videos / part.name)
        minutes = video_minutes(videos)
        secs, peak_1x, _ = median_run(a.repeats, ["pathology", "--videos", str(videos), "--params", params], work / "p1", root)
        figures["pathology_video"] = {"seconds": round(secs, 2), "video_minutes": round(minutes, 2),
                                      "s_per_video_minute": round(secs / minutes, 2), "peak_rss_mb": round(peak_1x)}
        many = work / "videos8"
        many.mkdir()
        for copy in range(8):
            for part in videos.iterdir():
                shutil.copy(part, many / f"c{copy}_{part.name}")
        secs8, peak_8x, _ = median_run(1, ["pathology", "--videos", str(many), "--params", params], work / "p8", root)
        figures["memory_1x_vs_8x"] = {"input": "pathology videos", "peak_rss_mb_1x": round(peak_1x), "peak_rss_mb_8x": round(peak_8x),
                                      "ratio": round(peak_8x / peak_1x, 3), "seconds_1x": round(secs, 1), "seconds_8x": round(secs8, 1)}

        slides = raw / "pathology/raw/slides"
        secs, peak, summary = median_run(a.repeats, ["pathology", "--slides", str(slides), "--slide-captions",
                                                     str(slides / "captions.csv"), "--params", params], work / "ps", root)
        n_slides = len(list(slides.glob("*.tiff")))
        figures["pathology_slide"] = {"seconds": round(secs, 2), "slides": n_slides, "s_per_slide": round(secs / n_slides, 2),
                                      "tiles": summary["pairs"]["kept"], "peak_rss_mb": round(peak)}

        ct = raw / "ct/raw"
        ct_args = ["ct", "--volumes", str(ct / "volumes"), "--ehr", str(ct / "ehr.csv"), "--reports", str(ct / "reports.csv"),
                   "--phecode-map", str(ct / "phecode_map.csv"), "--key-file", str(ct / "demo.key"), "--params", params]
        secs, peak, summary = median_run(a.repeats, ct_args, work / "ct", root)
        volumes = len(list((ct / "volumes").iterdir()))
        figures["ct"] = {"seconds": round(secs, 2), "volumes": volumes, "s_per_volume": round(secs / volumes, 3),
                         "peak_rss_mb": round(peak)}

    figures["training_samples_per_s"] = {d: samples_per_second(root / f"metrics/{d}/train_steps.csv")
                                         for d in ("remote_sensing", "pathology", "ct", "pairs")}
    figures["rusage_self_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    text = json.dumps(figures, indent=1)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
