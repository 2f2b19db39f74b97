"""Wall time and peak memory of one analyst command with the entry point's garbage-collector setting versus CPython's default.

`domainfm` (pipelines.cli.main) runs a full garbage collection once per 1000 middle-generation ones
(`FULL_COLLECTION_EVERY`) instead of CPython's 10: start-up imports about half a million long-lived
objects (torch, open_clip, transformers, MONAI) and each full collection scans them all. Per command,
interleaved, `--repeats` times, each a fresh process (an empty embedding cache for the maps):

- ours:  the command as installed (`domainfm ...`);
- peer:  the same command with CPython's default (one full collection per 10), the naive way.

Commands, on ../shared/realdata: `map pathology` on CMU-1-Small-Region, `map remote_sensing` on
rasterio's RGB.byte.tif, `predict ct` on TotalSegmentator's small example CT. Models randomly
initialised: the demo's tiny open_clip architecture, the demo's CT architecture (`contract`). Each
command's JSON (timings left out) is checked to be the same both ways. Peak memory is the process's
largest resident set (`startup_memory.measure`).

Usage: python benchmarks/collector.py [--repeats 5] [--json PATH]
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from contract import REALDATA, machine, random_ct_export, random_model, write_json
from many_per_command import CT, LANDSAT, summaries
from pathology_map import SLIDE
from startup_memory import RUN_CLI, measure

DEFAULT_COLLECTOR = RUN_CLI.replace("from pipelines.cli import main; ", "from pipelines import cli; cli.FULL_COLLECTION_EVERY = 10; "
                                    "from pipelines.cli import main; ")


def main() -> None:
    """Measure, print and (with --json) write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="write the benchmark contract's JSON here")
    args = ap.parse_args()
    volume = CT / "example_ct_sm.nii.gz"
    missing = [str(p) for p in (SLIDE, LANDSAT, volume) if not p.exists()]
    if missing:
        raise SystemExit(f"missing real data ({REALDATA}): {', '.join(missing)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, ct_model = random_model(folder), random_ct_export(folder / "ct")
        commands = {"map pathology": ["map", "pathology", "--model", str(model), "--slide", str(SLIDE)],
                    "map remote_sensing": ["map", "remote_sensing", "--model", str(model), "--raster", str(LANDSAT)],
                    "predict ct": ["predict", "ct", "--model", str(ct_model), "--volume", str(volume)]}
        for name, command in commands.items():
            seconds: dict[str, list[float]] = {"ours": [], "peer": []}
            memory: dict[str, list[float]] = {"ours": [], "peer": []}
            for run in range(args.repeats):  # interleaved, so machine noise hits both alike
                for who, code in (("ours", RUN_CLI), ("peer", DEFAULT_COLLECTOR)):
                    out = folder / f"{name}-{who}-{run}".replace(" ", "_")
                    cache = ["--cache", str(out / "cache")] if command[0] == "map" else []
                    peak, wall = measure(code, [*command, "--out", str(out), *cache])
                    seconds[who].append(round(wall, 2))
                    memory[who].append(round(peak))
                if summaries(folder / f"{name}-ours-{run}".replace(" ", "_")) != summaries(folder / f"{name}-peer-{run}".replace(" ", "_")):
                    raise SystemExit(f"{name}: the two collector settings wrote different outputs")
            wall = {who: statistics.median(v) for who, v in seconds.items()}
            peak = {who: statistics.median(v) for who, v in memory.items()}
            print(f"domainfm {name}: {wall['ours']:.2f} s vs {wall['peer']:.2f} s ({wall['peer'] / wall['ours']:.2f}x), peak "
                  f"{peak['ours']:.0f} vs {peak['peer']:.0f} MB; runs {seconds}, {memory}", flush=True)
            common = {"peer": "the same command with CPython's default collector (a full collection per 10 middle ones)",
                      "bar": None, "repeats": args.repeats,
                      "notes": f"{shlex.join(command[:2])} on {Path(command[-1]).name}, a fresh process each run, the same outputs "
                               f"both ways; runs: wall s {seconds}, peak MB {memory}"}
            rows += [{"figure": f"`domainfm {name}`, one input, whole command: wall time (ratio = peer / ours: times faster)",
                      "unit": "s", "ours": wall["ours"], "peer_value": wall["peer"], "ratio": round(wall["peer"] / wall["ours"], 3),
                      **common},
                     {"figure": f"`domainfm {name}`, one input, whole command: peak memory (ratio = peer / ours: times less)",
                      "unit": "MB", "ours": peak["ours"], "peer_value": peak["peer"], "ratio": round(peak["peer"] / peak["ours"], 3),
                      **common}]
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
