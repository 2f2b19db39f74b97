"""Training throughput of domainfm's trainer next to stock `open_clip_train`, same model, data, batch.

Both train every parameter (open_clip_train has no LoRA) with the CLIP loss in fp32, one process,
no data workers. The figure is the median per-step samples/s after warm-up, read from each
trainer's own per-step log, plus whole-run wall time. Our LoRA mode is reported alongside.

    .venv/bin/python benchmarks/trainer_throughput.py --data data/remote_sensing/curated --model local-dir:models/base
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.io.shards import count_samples, shard_paths
from pipelines.models.adapt import AdaptConfig, prepare
from pipelines.models.clip import ModelSpec, load_model
from pipelines.train import distributed as D
from pipelines.train.clip_task import ClipTask, ClipTrainConfig
from pipelines.train.loop import fit

WARMUP_STEPS = 3


def ours(shards: list[str], model: str, batch: int, steps: int, mode: str) -> dict:
    loaded = load_model(ModelSpec(model))
    net = loaded.model if mode == "full-model" else prepare(loaded.model, AdaptConfig(mode="lora"))
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "steps.csv"
        t0 = time.perf_counter()
        cfg = ClipTrainConfig(batch_size=batch, max_steps=steps, checkpoint_every=0, warmup_steps=2)
        info = D.DistInfo()
        task = ClipTask(net, loaded.preprocess_train, loaded.tokenizer, shards, cfg, info)
        fit(task, cfg, Path(tmp) / "run", info, metrics_path=metrics)
        wall = time.perf_counter() - t0
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(metrics.open())][WARMUP_STEPS:]
    return {"median_samples_per_s": statistics.median(rates), "wall_s": wall, "steps": steps}


def stock(shards: list[str], model: str, batch: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "open_clip_train.main", "--model", model, "--train-data", "::".join(shards),
               "--dataset-type", "webdataset", "--train-num-samples", str(batch * steps), "--batch-size", str(batch),
               "--epochs", "1", "--workers", "0", "--lr", "5e-4", "--warmup", "2", "--precision", "fp32",
               "--save-frequency", "0", "--logs", tmp, "--name", "bench", "--log-every-n-steps", "1", "--report-to", "", "--seed", "0"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        log = (Path(tmp) / "bench" / "out.log").read_text()
    # "Train Epoch: 0 [...] Data (t): 0.001 Batch (t): 0.190, 336.52/s, 336.52/s/gpu ..."
    rates = [float(x) for x in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s,", log)][WARMUP_STEPS:]
    return {"median_samples_per_s": statistics.median(rates), "wall_s": wall, "steps": len(rates) + WARMUP_STEPS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    shards = shard_paths(args.data, "train")
    if sum(count_samples(shards)) < args.batch * args.steps:
        print("note: fewer samples than batch*steps; both trainers repeat data", file=sys.stderr)
    result = {
        "open_clip_train (full)": stock(shards, args.model, args.batch, args.steps),
        "domainfm (full)": ours(shards, args.model, args.batch, args.steps, "full-model"),
        "domainfm (lora)": ours(shards, args.model, args.batch, args.steps, "lora"),
    }
    base = result["open_clip_train (full)"]["median_samples_per_s"]
    for name, r in result.items():
        r["ratio_vs_open_clip_train"] = r["median_samples_per_s"] / base
        print(f"{name:24s} {r['median_samples_per_s']:8.1f} samples/s  x{r['ratio_vs_open_clip_train']:.2f}  wall {r['wall_s']:.1f}s")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
