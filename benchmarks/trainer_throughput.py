"""Training samples/s of domainfm's trainer next to stock `open_clip_train`, same model, data, batch and threads.

Every run is a fresh process with the same torch thread count (`--threads`, also OMP_NUM_THREADS)
and data workers (`--workers`, default none), fp32, one process, `--steps` optimizer steps on the
curated train shards:

- peer:   `python -m open_clip_train.main` (open_clip_torch[training]), full fine-tuning, its
          per-step samples/s read from its log;
- ours:   `pipelines.train.loop.fit` with `ClipTask` and the config's defaults, full fine-tuning
          and LoRA (`AdaptConfig(mode="lora")`), per-step samples/s read from the metrics CSV;
- before: with `--before REV`, ours again with the code of git revision REV (its `pipelines/`
          extracted to a temporary folder), for a before/after in the same command.

A run's figure is the median per-step samples/s after `WARMUP_STEPS`; the reported value is the
median over `--repeats` runs, the methods interleaved. Both trainers see the same model (`--model`:
an open_clip local-dir; by default the tiny demo architecture, randomly initialised with seed 0,
since throughput does not depend on the weights). The notes compare the first step's loss of our
runs (same data and initial weights: identical up to float rounding).

    python benchmarks/trainer_throughput.py [--data data/remote_sensing/curated] [--model local-dir:models/base]
        [--steps 12] [--repeats 3] [--threads 1] [--before main] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from contract import machine, random_model, write_json

ROOT = Path(__file__).resolve().parent.parent
WARMUP_STEPS = 3
DEFAULT_DATA = Path("data/remote_sensing/curated")


# ---------------------------------------------------------------- one run of ours (child process)


def run_ours(data: Path, model: str, batch: int, steps: int, mode: str, lora_forward: str, workers: int) -> dict:
    """Train `steps` steps in this process; per-step samples/s and the first step's loss.

    The config is the code's defaults, plus `lora_forward` where the code has that knob (older
    revisions train LoRA through peft's forward only).
    """
    import torch

    from pipelines.io.shards import shard_paths
    from pipelines.models.adapt import AdaptConfig, prepare
    from pipelines.models.clip import ModelSpec, load_model
    from pipelines.train import distributed as D
    from pipelines.train.clip_task import ClipTask, ClipTrainConfig
    from pipelines.train.loop import fit

    torch.manual_seed(0)
    loaded = load_model(ModelSpec(model))
    knobs = {"lora_forward": lora_forward} if "lora_forward" in AdaptConfig.__dataclass_fields__ else {}
    net = loaded.model if mode == "full" else prepare(loaded.model, AdaptConfig(mode="lora", **knobs))
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "steps.csv"
        cfg = ClipTrainConfig(batch_size=batch, max_steps=steps, checkpoint_every=0, warmup_steps=2, workers=workers)
        info = D.DistInfo()
        t0 = time.perf_counter()
        task = ClipTask(net, loaded.preprocess_train, loaded.tokenizer, shard_paths(data, "train"), cfg, info)
        fit(task, cfg, Path(tmp) / "run", info, metrics_path=metrics)
        wall = time.perf_counter() - t0
        rows = list(csv.DictReader(metrics.open()))
    rates = [float(r["samples_per_s"]) for r in rows][WARMUP_STEPS:]
    return {"samples_per_s": statistics.median(rates), "wall_s": wall, "first_loss": float(rows[0]["loss"])}


# ---------------------------------------------------------------- the runs (parent process)


def child_env(threads: int, code_root: Path) -> dict[str, str]:
    """Environment of a measured process: the thread count, and `code_root` first on the import path."""
    path = os.pathsep.join([str(code_root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": path}


def ours(code_root: Path, args: argparse.Namespace, mode: str) -> dict:
    """One run of our trainer with the code under `code_root`, in a fresh process."""
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(args.data), "--model", args.model,
           "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
           "--lora-forward", args.lora_forward, "--workers", str(args.workers)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args.threads, code_root), cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"domainfm trainer ({mode}, code {code_root}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stock(args: argparse.Namespace) -> dict:
    """One run of open_clip_train (full fine-tuning) in a fresh process."""
    shards = sorted(str(p) for p in (args.data / "shards").glob("train-*.tar"))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "open_clip_train.main", "--model", args.model, "--train-data", "::".join(shards),
               "--dataset-type", "webdataset", "--train-num-samples", str(args.batch * args.steps),
               "--batch-size", str(args.batch), "--epochs", "1", "--workers", str(args.workers), "--lr", "5e-4", "--warmup", "2",
               "--precision", "fp32", "--save-frequency", "0", "--logs", tmp, "--name", "bench",
               "--log-every-n-steps", "1", "--report-to", "", "--seed", "0"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=child_env(args.threads, ROOT), cwd=ROOT)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"open_clip_train failed:\n{out.stderr[-3000:]}")
        log = (Path(tmp) / "bench" / "out.log").read_text()
    # "Train Epoch: 0 [...] Data (t): 0.001 Batch (t): 0.190, 336.52/s, 336.52/s/gpu ..."
    rates = [float(x) for x in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s,", log)][WARMUP_STEPS:]
    if not rates:
        raise RuntimeError(f"open_clip_train logged no steps after warm-up:\n{log[-2000:]}")
    return {"samples_per_s": statistics.median(rates), "wall_s": wall}


def extract_code(rev: str, folder: Path) -> Path:
    """`pipelines/` of git revision `rev` under `folder` (what `--before` measures)."""
    archive = subprocess.run(["git", "archive", rev, "pipelines"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--before {rev}: git archive failed: {archive.stderr.decode(errors='replace').strip()}")
    folder.mkdir(parents=True, exist_ok=True)
    archive_path = folder / "code.tar"
    archive_path.write_bytes(archive.stdout)
    with tarfile.open(archive_path) as tar:
        tar.extractall(folder, filter="data")
    return folder


def default_model(folder: Path) -> str:
    """The demo's tiny architecture, randomly initialised (seed 0), as the `local-dir:` spec both trainers load."""
    return f"local-dir:{random_model(folder)}"


def main() -> None:
    """Run the interleaved comparison, print it, and write the contract's JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="curated data (DATA/shards/train-*.tar)")
    parser.add_argument("--model", default=None, help="open_clip model both train (default: the tiny demo "
                        "architecture, random init)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every run (the same for all)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes of every run (the same for all)")
    parser.add_argument("--lora-forward", choices=["peft", "merged"], default="merged",
                        help="adapt.lora_forward of our LoRA runs (the demo's params.yaml: merged)")
    parser.add_argument("--before", default=None, help="git revision whose trainer to measure as well (e.g. main)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=["full", "lora"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_ours(args.data, args.model, args.batch, args.steps, args.child, args.lora_forward, args.workers)))
        return

    import open_clip
    import torch

    if not sorted((args.data / "shards").glob("train-*.tar")):
        raise SystemExit(f"{args.data}: no shards/train-*.tar; curate first (`dvc repro curate@remote_sensing`) or pass --data")
    if importlib.util.find_spec("open_clip_train") is None:
        raise SystemExit("open_clip_train is not importable: install open_clip_torch[training] "
                         "(benchmarks/requirements-peers.txt; `make bench` puts it in .venv-bench)")
    with tempfile.TemporaryDirectory() as tmp:
        args.model = args.model or default_model(Path(tmp))
        methods = {"peer": lambda: stock(args), "full": lambda: ours(ROOT, args, "full"), "lora": lambda: ours(ROOT, args, "lora")}
        if args.before:
            before_root = extract_code(args.before, Path(tmp) / "before")
            methods["full@before"] = lambda: ours(before_root, args, "full")
            methods["lora@before"] = lambda: ours(before_root, args, "lora")
        runs: dict[str, list[dict]] = {name: [] for name in methods}
        for repeat in range(args.repeats):  # interleaved, so machine noise hits every method alike
            for name, fn in methods.items():
                runs[name].append(fn())
                print(f"repeat {repeat + 1}/{args.repeats} {name:12s} {runs[name][-1]['samples_per_s']:8.1f} samples/s",
                      file=sys.stderr, flush=True)

    value = {name: statistics.median(r["samples_per_s"] for r in rs) for name, rs in runs.items()}
    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    peer_name = f"open_clip_train {open_clip.__version__} (full fine-tuning, --workers {args.workers})"
    sizes = (f"batch {args.batch}, {args.steps} steps ({WARMUP_STEPS} warm-up), fp32, {args.threads} torch thread(s), "
             f"{args.workers} data workers, "
             f"model {args.model}, data {args.data}")

    def loss_note(mode: str) -> str:
        first = [r["first_loss"] for r in runs[mode]]
        note = f"first-step loss {first[0]:.6f}"
        if f"{mode}@before" in runs:
            note += f" (before: {runs[f'{mode}@before'][0]['first_loss']:.6f})"
        return note

    rows = []
    lora_label = f"LoRA r=8, {args.lora_forward} forward (peer: full fine-tuning)"
    for mode, label, bar in (("full", "full fine-tuning", 1.3), ("lora", lora_label, 1.5)):
        for key, when in ((mode, "after"), (f"{mode}@before", f"before: domainfm at {args.before}")):
            if key not in value:
                continue
            rows.append({"figure": f"training samples/s, {label}" + ("" if when == "after" else f" [{when}]"),
                         "unit": "samples/s", "ours": round(value[key], 2), "peer": peer_name,
                         "peer_value": round(value["peer"], 2), "ratio": round(value[key] / value["peer"], 3),
                         "bar": bar if when == "after" else None, "repeats": args.repeats,
                         "notes": f"{sizes}; wall s per run: ours {wall[key]:.1f}, peer {wall['peer']:.1f}; {loss_note(mode)}"})
    doc = {"benchmark": Path(__file__).stem, "command": " ".join(shlex.quote(a) for a in sys.argv),
           "machine": machine(), "rows": rows}
    for row in rows:
        print(f"{row['figure']:80s} {row['ours']:8.2f} vs {row['peer_value']:8.2f}  x{row['ratio']:.2f}")
    if args.json:
        write_json(args.json, doc)


if __name__ == "__main__":
    main()
