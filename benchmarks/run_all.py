"""Run every benchmark that follows the JSON contract and render reports/benchmarks.md (`make bench`).

    .venv-bench/bin/python benchmarks/run_all.py [--out reports/benchmarks] [--only rs_tiles wsi_tiles] [--list]

A benchmark follows the contract when its script takes `--json PATH` (the contract is in
and benchmarks/report.py). Each runs as `<python> benchmarks/<stem>.py [EXTRA_ARGS] --json <out>/<stem>.json`
from the repository root, with the root first on PYTHONPATH (the checkout's code is what is measured),
then the further runs of MORE_RUNS (to `<out>/<stem>-<name>.json`), one after another (they time
themselves; running two at once would time each other). A failure is reported and the others still
run; the report is rendered from every JSON file present; the exit status is 1 when any failed.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Arguments a benchmark needs beyond its defaults (the default sizes are meant for this command).
EXTRA_ARGS: dict[str, list[str]] = {
    # mapping at 1 torch thread and at torch's default (0): the bar is against a plain loop on the same machine;
    # 7 repeats: on a busy host some runs of the threaded methods take 2-4x their usual time (0.14-0.60 s for the
    # same scene's windows in one process), and 3 repeats let two of them set the median
    "rs_map": ["--size", "2048", "--threads", "1", "0", "--repeats", "7"],
    # the slide tiled 3 x 3 (437 tissue tiles): the small slide alone is mostly per-slide fixed costs
    "pathology_map": ["--mosaic", "3", "--threads", "1", "0", "--repeats", "7"],
    "trainer_throughput": ["--steps", "10", "--repeats", "5"],
    # the demo-size volume preprocesses in about 25 ms: 3 repeats left its ratio at the mercy of one slow run
    "ct_preprocess_cache": ["--repeats", "7"],
    # TIAToolbox's runs on CMU-1-Small-Region took 0.40-0.84 s in one command (ours 0.29-0.39 s): with 3 repeats two
    # slow runs put its median, and the bar's ratio, anywhere from 0.9 to 1.6
    "wsi_tiles": ["--repeats", "7"],
}
# Further runs of a benchmark with other arguments, each written to <stem>-<name>.json.
MORE_RUNS: dict[str, dict[str, list[str]]] = {
    # mapping inputs 4x larger, at 1 torch thread: a first map's fixed costs (scene checks, tissue mask, outputs)
    # weigh less than on the small inputs above, as on real scenes and slides, which are larger still
    "rs_map": {"4096px": ["--size", "4096", "--threads", "1", "--repeats", "5"],
               # a model of realistic size (ViT-B/32 at 224 px, random init) on 64 windows: what precision does where the
               # model, not reading, is the cost
               "vitb32": ["--arch", "ViT-B-32", "--size", "1024", "--threads", "0", "--repeats", "3"]},
    "pathology_map": {"mosaic6": ["--mosaic", "6", "--threads", "1", "--repeats", "5"]},
    # a model of realistic size (ViT-B/32 at 224 px): the forward pass, not decoding, is the cost
    "evaluate_throughput": {"vitb32": ["--arch", "ViT-B-32", "--images", "64"]},
}


def contract_scripts(folder: Path) -> list[Path]:
    """benchmarks/*.py whose argument parser has a --json option, sorted by name (this runner and report.py excluded)."""
    found = []
    for path in sorted(folder.glob("*.py")):
        if path.stem in ("run_all", "report", "bench_env", "gpu_figures"):  # gpu_figures: on a lent GPU only
            continue
        if re.search(r"""add_argument\(\s*["']--json["']""", path.read_text(encoding="utf-8")):
            found.append(path)
    return found


def main() -> None:
    """Run the benchmarks, then the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks", help="folder of the JSON files")
    ap.add_argument("--report", type=Path, default=ROOT / "reports" / "benchmarks.md")
    ap.add_argument("--only", nargs="*", help="script stems to run (default: all that follow the contract)")
    ap.add_argument("--list", action="store_true", help="print the scripts that would run and stop")
    args = ap.parse_args()
    scripts = contract_scripts(ROOT / "benchmarks")
    if args.only:
        unknown = sorted(set(args.only) - {p.stem for p in scripts})
        if unknown:
            raise SystemExit(f"--only: {', '.join(unknown)} not among the contract's benchmarks ({', '.join(p.stem for p in scripts)})")
        scripts = [p for p in scripts if p.stem in args.only]
    if args.list:
        print("\n".join(p.stem for p in scripts))
        return
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    failed = []
    runs = [(path, path.stem, EXTRA_ARGS.get(path.stem, [])) for path in scripts]
    runs += [(path, f"{path.stem}-{name}", extra) for path in scripts for name, extra in MORE_RUNS.get(path.stem, {}).items()]
    for path, name, extra in runs:
        json_path = os.path.relpath(args.out.resolve() / f"{name}.json", ROOT)
        cmd = [sys.executable, str(path.relative_to(ROOT)), *extra, "--json", json_path]
        print(f"== {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env)
        print(f"== {name}: exit {done.returncode} after {time.perf_counter() - t0:.0f} s", flush=True)
        if done.returncode:
            failed.append(name)
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--json-dir", str(args.out), "--out", str(args.report)],
                   cwd=ROOT, check=True)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)} (their previous JSON, if any, is what the report shows)")


if __name__ == "__main__":
    main()
