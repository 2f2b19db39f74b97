"""Seconds for the analyst commands to take several inputs in one command versus a command per input.

An analyst with a folder of slides, scenes or CT volumes can give them all to one command (`--slide`
repeated or a folder; `--raster` repeated or a folder with `--each`; `--volume` repeated) or, the
naive way and the only way before, run the command once per input. Each process imports torch and
open_clip (or the CT model's code), loads the model and embeds the prompts before it reads an input:
about 4 s on the CI machine, most of a small input's map. Per command, interleaved, `--repeats`
times, each with an empty embedding cache (first maps):

- ours:  one process, e.g. `domainfm map pathology --slide A --slide B ...`;
- peer:  a process per input, `domainfm map pathology --slide A`, then B, ...

Inputs, all from ../shared/realdata:
- slides (`domainfm map pathology`): CMU-1-Small-Region, its level-0 image tiled 2 x 2 and 3 x 3 into
  pyramidal TIFFs (`pathology_map.mosaic_slide`), and the TCGA excerpt (it records no MPP:
  `--slide-mpp 0.25`, which slides that record theirs ignore);
- scenes (`domainfm map remote_sensing --each`): rasterio's Landsat RGB.byte.tif, a Sentinel-2 true-colour
  tile of Ghent (EPSG:3857), and the demo landscape at 1 m mirrored to 2048 px (`contract.synthetic_scene`);
- CT volumes (`domainfm predict ct`): TotalSegmentator's example CT (NIfTI), its smaller copy and its
  DICOM series.

Each input's JSON (its timings left out) is checked to be the same both ways. The models are randomly
initialised: `--arch` (the demo's tiny architecture by default) for slides and scenes, the demo's CT
architecture (params.yaml ct.base_model, its curation's preprocessing) for volumes: the start-up is
what differs, not the model's speed.

Usage: python benchmarks/many_per_command.py [--arch domainfm-tiny] [--repeats 3] [--only slides scenes volumes] [--json PATH]
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
from dataclasses import dataclass
from pathlib import Path

from contract import REALDATA, machine, random_ct_export, random_model, synthetic_scene, write_json
from pathology_map import SLIDE, mosaic_slide
from startup_memory import RUN_CLI

ROOT = Path(__file__).resolve().parent.parent
TCGA = SLIDE.parent / "tcga-cr-7395-01a-01-ts1.svs"
LANDSAT = REALDATA / "rs" / "rasterio" / "RGB.byte.tif"
GHENT = REALDATA / "rs" / "gent" / "2020-09-17_Sentinel_2_L1C_True_color.tiff"
CT = REALDATA / "ct" / "totalsegmentator"
TIMINGS = ("run", "timing_s")  # the JSON keys that hold a run's timings: left out of the comparison


@dataclass
class Case:
    """One analyst command given several inputs.

    Run as `command`, (`option`, input) per input, `at_once` when one command takes them all, then
    `--out` and `--cache` (an empty embedding cache per run).
    """

    name: str  # the row's inputs, e.g. "slides"
    command: list[str]  # `domainfm ...` up to the inputs
    option: str  # the repeated input option
    inputs: list[Path]
    at_once: list[str]  # what one command for all adds (--each)


def run_cli(args: list[str]) -> None:
    """Run `domainfm ARGS` as its own process from the repository root; SystemExit with its output if it fails."""
    done = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"domainfm {shlex.join(args)} failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")


def summaries(out: Path) -> dict[str, dict]:
    """Each input's JSON in `out`, its timings left out."""
    found = {}
    for path in sorted(out.glob("*.json")):
        summary = json.loads(path.read_text())
        for key in TIMINGS:
            summary.pop(key, None)
        found[path.name] = summary
    return found


def cases(folder: Path, arch: str, only: list[str]) -> list[Case]:
    """The commands to measure, their models and inputs made in `folder`."""
    needed = {"slides": [SLIDE, TCGA], "scenes": [LANDSAT, GHENT], "volumes": [CT]}
    missing = [str(p) for name in only for p in needed[name] if not p.exists()]
    if missing:
        raise SystemExit(f"missing real data ({REALDATA}): {', '.join(missing)}")
    found = []
    if {"slides", "scenes"} & set(only):
        model = random_model(folder, arch)
    if "slides" in only:
        slides = [SLIDE, mosaic_slide(SLIDE, 2, folder), mosaic_slide(SLIDE, 3, folder), TCGA]
        found.append(Case("slides", ["map", "pathology", "--model", str(model), "--slide-mpp", "0.25"], "--slide", slides, []))
    if "scenes" in only:
        scenes = [LANDSAT, GHENT, synthetic_scene(2048, folder)]
        found.append(Case("scenes", ["map", "remote_sensing", "--model", str(model)], "--raster", scenes, ["--each"]))
    if "volumes" in only:
        volumes = [CT / "example_ct.nii.gz", CT / "example_ct_sm.nii.gz", CT / "example_ct_dicom"]
        export = random_ct_export(folder / "ct")
        found.append(Case("volumes", ["predict", "ct", "--model", str(export)], "--volume", volumes, []))
    return found


def measure(case: Case, folder: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of one command for all the inputs and of a command per input, interleaved; the outputs checked alike."""
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    for run in range(repeats):  # interleaved, so machine noise hits both alike
        for who in times:
            out = folder / f"{case.name}-{who}-{run}"
            tail = ["--out", str(out), "--cache", str(folder / f"cache-{case.name}-{who}-{run}")]
            start = time.perf_counter()
            if who == "ours":
                run_cli([*case.command, *[a for p in case.inputs for a in (case.option, str(p))], *case.at_once, *tail])
            else:
                for path in case.inputs:
                    run_cli([*case.command, case.option, str(path), *tail])
            times[who].append(round(time.perf_counter() - start, 2))
        ours, peer = summaries(folder / f"{case.name}-ours-{run}"), summaries(folder / f"{case.name}-peer-{run}")
        if ours != peer or len(ours) != len(case.inputs):
            raise SystemExit(f"{case.name}: one command and a command per input wrote different outputs")
    return times


VERBS = {"slides": "mapping {n} slides with `domainfm map pathology`, first maps",
         "scenes": "mapping {n} scenes with `domainfm map remote_sensing --each`, first maps",
         "volumes": "predicting {n} CT volumes with `domainfm predict ct`"}


def main() -> None:
    """Measure, print and (with --json) write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="domainfm-tiny", help="open_clip architecture of the slide and scene export (random weights)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", nargs="+", choices=list(VERBS), default=list(VERBS), help="which commands to measure")
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark contract's JSON here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(Path(tmp), args.arch, args.only):
            times = measure(case, Path(tmp), args.repeats)
            ours, peer = statistics.median(times["ours"]), statistics.median(times["peer"])
            names = ", ".join(p.name for p in case.inputs)
            print(f"{len(case.inputs)} {case.name} ({names}): one command {ours:.2f} s, a command per input {peer:.2f} s, "
                  f"{peer / ours:.2f}x; runs {times}", flush=True)
            model = f"[{args.arch}, random init]" if case.name != "volumes" else "[the demo's CT architecture, random init]"
            command = shlex.join(["domainfm", *case.command[:2]])
            rows.append({"figure": f"{VERBS[case.name].format(n=len(case.inputs))} {model} (ratio = peer / ours: times faster)",
                         "unit": "s", "ours": ours, "peer": f"a `{command}` command per input (the naive way)", "peer_value": peer,
                         "ratio": round(peer / ours, 3), "bar": None, "repeats": args.repeats,
                         "notes": f"ours: one command, the inputs as repeated {case.option}{' with --each' if case.at_once else ''}; "
                                  f"{case.name}: {names}; the same outputs both ways; runs {times}"})
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
