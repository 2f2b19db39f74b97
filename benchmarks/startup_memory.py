"""Peak memory and wall time of commands next to the same commands with the libraries they no longer import imported first.

Curation imports torch nowhere (tests/test_startup.py asserts it); before, the CLI imported it at
the top, so every curation process and every pool worker paid for it, and CT curation imported
MONAI (and with it torch) for its preprocessing. Each command runs as its own process, `--repeats`
times, interleaved:

- ours:  the command as the project runs it (`python -m pipelines.cli ...`);
- peer:  the same command started by `python -c "import torch; ..."`, which is what the CLI cost
         when it imported torch at the top (the naive way: the model library imported with the CLI);
         for CT, `python -c "import monai; ..."`: what CT curation cost when its preprocessing
         imported MONAI (`import monai` imports all of it, torch and torchvision included); for the
         map command's help, `python -c "import open_clip; ..."`: what it cost when the map and search
         commands imported the model's code (open_clip, torch) with their options.

Commands: `domainfm curate remote_sensing --help`, `domainfm curate ct --help`, `domainfm map
pathology --help` (it runs no model, so it needs no torch: the analysts' first command), and two small
curations: `domainfm curate pairs` of the pairs demo and `domainfm curate ct` of a smaller CT demo
(`domainfm demo-data ...`, written first and not timed), each with 1 worker, so the process
measured is the one that curates. And one command that runs a model, so torch stays: `domainfm
predict ct` on TotalSegmentator's small example CT (the demo's CT architecture randomly
initialised, `contract.random_ct_export`), whose preprocessing imported MONAI too: with an empty
embedding cache each run (a first prediction); and the same first prediction whose peer is the same
command on a copy of the export without its prompt embeddings (`prompt_embeddings.safetensors`: the
text encoder built and the prompts embedded, as a first prediction did before exports shipped
them, and as a prediction with other prompts does before the cache holds them). Peak memory is
the largest resident set of the process and of the children it waited for (`os.wait4`'s
ru_maxrss); the rows' ratio is peer / ours, times less memory (and times faster for the wall time).
Whether torch ended up imported is checked by a second run of each command that prints
`sys.modules` at exit.

Usage: python benchmarks/startup_memory.py [--repeats 3] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from contract import REALDATA, machine, write_json

ROOT = Path(__file__).resolve().parent.parent
RUN_CLI = "import sys; from pipelines.cli import main; sys.argv = ['domainfm', *sys.argv[1:]]; main()"
TORCH_FIRST = "import torch; " + RUN_CLI
MONAI_FIRST = "import monai; " + RUN_CLI
OPEN_CLIP_FIRST = "import open_clip; " + RUN_CLI
TORCH_PEER = "the same command with torch imported first (the CLI before: torch imported at the top)"
MONAI_PEER = "the same command with MONAI imported first (CT preprocessing before: MONAI, and so torch, imported)"
OPEN_CLIP_PEER = ("the same command with open_clip imported first (the map and search commands before: the model's code imported "
                  "with their options)")
SHIPPED_PROMPTS_PEER = ("the same command on a copy of the export without its prompt embeddings (the text encoder built and the "
                        "prompts embedded, as a first prediction did before exports shipped them)")
CT_DEMO = {"n_patients": 40, "n_studies": 50}  # of the demo's 300 and 400: the same volumes, fewer
SMALL_CT = REALDATA / "ct" / "totalsegmentator" / "example_ct_sm.nii.gz"
# run at exit, after the command: did it import torch?
REPORT_TORCH = ("import atexit, sys; atexit.register(lambda: sys.stderr.write(f\"TORCH_IMPORTED={'torch' in sys.modules}\\n\")); "
                + RUN_CLI)


def measure(code: str, args: list[str]) -> tuple[float, float]:
    """(peak resident MB, wall seconds) of `python -c code args...` run from the repository root."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    errors = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{shlex.join(args)} failed ({proc.returncode}): {errors[-2000:]}")
    return usage.ru_maxrss / 1024.0, wall  # ru_maxrss is in KiB on Linux


def imports_torch(args: list[str]) -> bool:
    """Whether the command, run as the project runs it, had torch imported when it exited."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", REPORT_TORCH, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True)
    return "TORCH_IMPORTED=True" in done.stderr


def main() -> None:
    """Measure, print and (with --json) write the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write the figures here (benchmarks' JSON contract)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = folder / "params.yaml"
        # the project's params with one curation worker: the process measured is the one that curates
        values = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
        values["pairs"]["curate"]["workers"] = values["ct"]["curate"]["workers"] = 1
        values["ct"]["demo"].update(CT_DEMO)
        params.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
        measure(RUN_CLI, ["demo-data", "pairs", "--params", str(params), "--out", str(folder / "raw")])
        ct_raw = folder / "ct_raw"
        measure(RUN_CLI, ["demo-data", "ct", "--params", str(params), "--out", str(ct_raw)])
        commands = {  # name: (arguments, the peer's code, what the peer is[, the peer's arguments when they differ])
            "`domainfm curate remote_sensing --help`": (["curate", "remote_sensing", "--help"], TORCH_FIRST, TORCH_PEER),
            "a small curation (`domainfm curate pairs`, the pairs demo: 600 images, 1 worker)":
                (["curate", "pairs", "--csv", str(folder / "raw" / "captions.csv"), "--params", str(params),
                  "--out", str(folder / "curated")], TORCH_FIRST, TORCH_PEER),
            "`domainfm curate ct --help`": (["curate", "ct", "--help"], MONAI_FIRST, MONAI_PEER),
            "`domainfm map pathology --help`": (["map", "pathology", "--help"], OPEN_CLIP_FIRST, OPEN_CLIP_PEER),
            f"a small CT curation (`domainfm curate ct`, the CT demo with {CT_DEMO['n_studies']} studies, 1 worker)":
                (["curate", "ct", "--volumes", str(ct_raw / "volumes"), "--ehr", str(ct_raw / "ehr.csv"),
                  "--reports", str(ct_raw / "reports.csv"), "--phecode-map", str(ct_raw / "phecode_map.csv"),
                  "--key-file", str(ct_raw / "demo.key"), "--params", str(params), "--out", str(folder / "ct" / "curated")],
                 MONAI_FIRST, MONAI_PEER),
        }
        if SMALL_CT.is_file():
            # built in a child: torch imported here would count in every later child's peak (Linux keeps the
            # forking process's high-water mark across exec)
            model = folder / "ct_model"
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
                            f"from pathlib import Path; from contract import random_ct_export; random_ct_export(Path({str(model)!r}))"],
                           cwd=ROOT, check=True, capture_output=True)
            bare = shutil.copytree(model, folder / "ct_model_bare")
            (bare / "prompt_embeddings.safetensors").unlink()  # M.PROMPTS_FILE (torch not imported here: it counts in children's peaks)

            def predict(export: Path) -> list[str]:  # a first prediction: the cache is emptied before every run, as all of folder/ct
                return ["predict", "ct", "--model", str(export), "--volume", str(SMALL_CT), "--out", str(folder / "ct" / "predicted"),
                        "--cache", str(folder / "ct" / "cache")]

            commands["`domainfm predict ct` (one small real CT, a model run: torch imported by both)"] = (
                predict(model), MONAI_FIRST, MONAI_PEER)
            commands["`domainfm predict ct` with the prompts' embeddings its export ships (a first prediction)"] = (
                predict(model), RUN_CLI, SHIPPED_PROMPTS_PEER, predict(bare))
        else:
            print(f"{SMALL_CT} not found: no predict ct row")
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeats):  # interleaved
            for name, (command, peer_code, _, *peer_args) in commands.items():
                peer_command = peer_args[0] if peer_args else command
                for who, code, run_args in (("ours", RUN_CLI, command), ("peer", peer_code, peer_command)):
                    shutil.rmtree(folder / "ct", ignore_errors=True)  # every CT curation preprocesses its volumes (no cache)
                    runs.setdefault((name, who), []).append(measure(code, run_args))
        torch_seen = {name: imports_torch(command) for name, (command, *_) in commands.items()}

    rows = []
    for name in commands:
        ours_mb = statistics.median(mb for mb, _ in runs[(name, "ours")])
        peer_mb = statistics.median(mb for mb, _ in runs[(name, "peer")])
        ours_s = statistics.median(s for _, s in runs[(name, "ours")])
        peer_s = statistics.median(s for _, s in runs[(name, "peer")])
        note = (f"torch imported by the command: {torch_seen[name]}; median wall s: ours {ours_s:.2f}, peer {peer_s:.2f}; "
                "peak = largest resident set of the process and its waited-for children")
        print(f"{name}: peak {ours_mb:.0f} MB vs {peer_mb:.0f} MB for the peer; {ours_s:.2f} s vs {peer_s:.2f} s; "
              f"torch imported: {torch_seen[name]}")
        peer = commands[name][2]
        rows.append({"figure": f"{name}: peak memory (ratio = peer / ours: times less)", "unit": "MB", "ours": ours_mb,
                     "peer": peer, "peer_value": peer_mb, "ratio": peer_mb / ours_mb, "bar": None, "repeats": args.repeats,
                     "notes": note})
        rows.append({"figure": f"{name}: wall time (ratio = peer / ours: times faster)", "unit": "s", "ours": ours_s,
                     "peer": peer, "peer_value": peer_s, "ratio": peer_s / ours_s, "bar": None, "repeats": args.repeats,
                     "notes": note})
    if args.json:
        write_json(args.json, {"benchmark": Path(__file__).stem, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                               "machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
