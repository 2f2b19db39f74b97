"""Peak memory and time of curating one lecture video, by its length: the pathology curation now versus as it was.

Writes demo-style lectures (`domains/pathology/demo`: title, histology views held 30 to 120 s, presenter
and blank cuts, a WebVTT narration; `--size` px square, 10 fps) of `--minutes` each, then, in one process
and interleaved, runs `process_video` (the demo's `sample_fps` of 2, tiles of 224 px) on each:

- ours:     domains.pathology.curation.video.process_video: each stable window is made into its pair as
            soon as the next sample closes it, so only the open window's pictures are held, and each
            frame is made a Pillow picture once for its thumbnail, the detector's copy and its tile;
- baseline: the same function as on main at `--baseline-rev` (read from git), which held every
            histology frame's picture and thumbnail until the last frame, then made the windows (and
            converted each frame three times).

A second lecture is one histology view held `--long-view-minutes` (after the 5 s title), the case a
static slide shown while the lecturer talks makes: one stable window as long as the view. It is
curated by ours and by the function as on main at `--long-view-baseline-rev`, which held every
picture of the open window in memory until it closed (ours holds up to `WINDOW_PICTURES_IN_MEMORY`
bytes of them and puts the rest in a temporary file, read back for the median's frames).

Their pairs, rejects and counts are checked to be identical. Peak memory is tracemalloc's peak over
one call (numpy's arrays are traced; the process's imports are not counted, nor the temporary file,
which is on disk or in the page cache the system reclaims); time is the median of `--repeats` calls,
with tracemalloc off. The figures: the peak of each length (MB; ratio baseline / ours) and frames
sampled per second on the longest (ratio ours / baseline), and both for the long view.

    python benchmarks/video_memory.py [--minutes 2.5 5 10] [--long-view-minutes 10] [--size 256] [--repeats 3]
        [--baseline-rev REV] [--long-view-baseline-rev REV] [--json PATH]
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from contract import machine, module_at, write_json

import domains.pathology.curation.video as ours_module
from domains.pathology.demo.demo_data import PathologyDemoConfig, write_video
from pipelines.curation import WorkUnit

BASELINE_REV = "67fd502"  # main before the windows were made as the samples came
LONG_VIEW_BASELINE_REV = "1ee1c6b"  # main before the open window's pictures went to a file past a budget


def curate(module: Any, video: Path) -> Any:
    """`module.process_video` on one lecture, with the demo's sampling and 224 px tiles."""
    cfg = dataclasses.asdict(module.VideoConfig(sample_fps=2.0, image_size=224))
    return module.process_video(WorkUnit("bench", module.VideoJob(str(video), str(video.with_suffix(".vtt")), cfg)))


def outcome(result: Any) -> tuple:
    """What a unit result says, comparable: pairs (ids, captions, pixels, provenance), rejects and counts in order."""
    pairs = [(p.id, p.caption, p.image.tobytes(), repr(p.provenance), p.group, p.source, p.caption_variants) for p in result.pairs]
    return pairs, [(r.input, r.stage, r.reason) for r in result.rejects], list(result.counts.items())


def peak_mb(module: Any, video: Path) -> float:
    """The peak of memory traced by tracemalloc (MB) over one `curate` call."""
    tracemalloc.start()
    try:
        curate(module, video)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def compare(modules: dict[str, Any], video: Path, repeats: int) -> tuple[bool, dict[str, float], dict[str, float], Any]:
    """Whether both give the same result, their median peaks (MB) and times (s), interleaved, and our counts."""
    results = {name: curate(module, video) for name, module in modules.items()}
    same = outcome(results["ours"]) == outcome(results["baseline"])
    peaks: dict[str, list[float]] = {name: [] for name in modules}
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        for name, module in modules.items():
            peaks[name].append(peak_mb(module, video))
            t0 = time.perf_counter()
            curate(module, video)
            times[name].append(time.perf_counter() - t0)
    peak = {name: statistics.median(v) for name, v in peaks.items()}
    seconds = {name: statistics.median(v) for name, v in times.items()}
    return same, peak, seconds, results["ours"].counts


def rows_of(what: str, peer: str, same: bool, peak: dict[str, float], seconds: dict[str, float], counts: Any,
            repeats: int, setting: str, with_speed: bool) -> list[dict[str, Any]]:
    """The peak-memory row of one lecture, and its frames-per-second row when `with_speed`."""
    notes = (f"identical pairs, rejects and counts: {same}; {counts['frames_sampled']} frames sampled, "
             f"{counts['histology_frames']} histology, {counts['windows']} windows, {counts['pairs']} pairs; "
             f"{setting}; time ours {seconds['ours']:.2f} s, baseline {seconds['baseline']:.2f} s")
    rows = [{"figure": f"video curation peak memory, {what}", "unit": "MB",
             "ours": round(peak["ours"], 1), "peer": peer, "peer_value": round(peak["baseline"], 1),
             "ratio": round(peak["baseline"] / peak["ours"], 2), "bar": None, "repeats": repeats, "notes": notes}]
    if with_speed:
        sampled = counts["frames_sampled"]
        rows.append({"figure": f"video curation, {what}", "unit": "frames/s",
                     "ours": round(sampled / seconds["ours"], 1), "peer": peer, "peer_value": round(sampled / seconds["baseline"], 1),
                     "ratio": round(seconds["baseline"] / seconds["ours"], 2), "bar": None, "repeats": repeats, "notes": notes})
    return rows


def main() -> None:
    """Write the lectures, measure both versions interleaved, print (and write with --json) the rows."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[2.5, 5.0, 10.0])
    ap.add_argument("--long-view-minutes", type=float, default=10.0, help="the long view's length (0: no long-view lecture)")
    ap.add_argument("--size", type=int, default=256, help="frame side (px)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision whose video curation is the 'before'")
    ap.add_argument("--long-view-baseline-rev", default=LONG_VIEW_BASELINE_REV, help="the 'before' of the long view")
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark JSON here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baselines = {}
        for rev in {args.baseline_rev, args.long_view_baseline_rev}:
            baselines[rev] = module_at(rev, "domains/pathology/curation/video.py", Path(tmp))
            if baselines[rev] is None:
                raise SystemExit(f"video_memory: no git revision {rev} to compare with")
        modules = {"ours": ours_module, "baseline": baselines[args.baseline_rev]}
        peer = f"our video curation on main {args.baseline_rev}"
        for i, minutes in enumerate(args.minutes):
            video = Path(tmp) / f"lecture_{minutes:g}min.mp4"
            cfg = PathologyDemoConfig(video_seconds=minutes * 60, video_size=args.size, histology_seconds=[30.0, 60.0, 120.0])
            write_video(video, video.with_suffix(".vtt"), cfg, 0)
            same, peak, seconds, counts = compare(modules, video, args.repeats)
            rows += rows_of(f"a {minutes:g}-minute lecture", peer, same, peak, seconds, counts, args.repeats,
                            f"{minutes:g} min at {args.size} px, 10 fps", with_speed=i == len(args.minutes) - 1)
        if args.long_view_minutes > 0:
            minutes = args.long_view_minutes
            video = Path(tmp) / f"long_view_{minutes:g}min.mp4"
            cfg = PathologyDemoConfig(video_seconds=5.0 + minutes * 60, video_size=args.size, histology_seconds=[minutes * 60])
            write_video(video, video.with_suffix(".vtt"), cfg, 0)
            modules = {"ours": ours_module, "baseline": baselines[args.long_view_baseline_rev]}
            same, peak, seconds, counts = compare(modules, video, args.repeats)
            budget = ours_module.WINDOW_PICTURES_IN_MEMORY / 2**20
            rows += rows_of(f"one {minutes:g}-minute histology view", f"our video curation on main {args.long_view_baseline_rev}",
                            same, peak, seconds, counts, args.repeats,
                            f"a 5 s title then one view of {minutes:g} min at {args.size} px, 10 fps; "
                            f"ours holds {budget:g} MB of the open window's pictures in memory", with_speed=True)
    for row in rows:
        print(f"{row['figure']}: ours {row['ours']} {row['unit']}, {row['peer']} {row['peer_value']} ({row['ratio']}x); {row['notes']}")
    if args.json is not None:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": shlex.join([Path(sys.executable).name, *sys.argv]),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
