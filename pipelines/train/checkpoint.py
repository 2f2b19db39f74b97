"""Checkpoint folders and the per-step metrics CSV of a training run.

`OUT/checkpoints/step-NNNNNN/` holds `trainable.safetensors` (what the task's
`checkpoint_tensors()` returns), `optimizer.pt` (optimizer and LR-scheduler state: plain tensors
and containers, read with `weights_only=True`) and `state.json`. Each is written into a temp
folder renamed into place, so a checkpoint is complete or absent; the newest two are kept.

`RunRecords` makes a fresh run destroy nothing before it has something to show: the previous
run's checkpoints and metrics CSV stay until the new run's first checkpoint exists, and are then
replaced together, so a kill at any point leaves a checkpoint and a CSV that belong together.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS_DIR = "checkpoints"
TENSORS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
KEEP_CHECKPOINTS = 2
METRICS_HEADER = ["step", "epoch", "loss", "lr", "samples_per_s"]
_CKPT_RE = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Finished checkpoints under out_dir/checkpoints, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    found = [(int(m.group(1)), p) for p in root.glob("step-*") if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Save tensors to `path` through a temp file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def save_checkpoint(out_dir: Path, step: int, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> Path:
    """Write checkpoint `step` atomically (RunRecords decides which older ones go)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": "pt"})
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    if final.exists():  # e.g. a rerun that reached the same step again
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def load_checkpoint(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors, optimizer/scheduler state, state.json) of one checkpoint folder."""
    tensors = load_file(str(path / TENSORS_FILE))
    opt_state = torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True)
    return tensors, opt_state, json.loads((path / STATE_FILE).read_text())


def prepare_metrics(path: Path, resume_step: int | None) -> None:
    """Start the CSV (fresh run) or drop rows past the restored step (resume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    if resume_step is not None and path.is_file():
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header == METRICS_HEADER:
                rows = [r for r in reader if r and int(r[0]) <= resume_step]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_HEADER)
        writer.writerows(rows)
    os.replace(tmp, path)


def write_metrics(path: Path, rows: list[list[str]]) -> None:
    """The whole metrics CSV (header and rows), replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(METRICS_HEADER)
        writer.writerows(rows)
    os.replace(tmp, path)


def metrics_row(step: int, epoch: int, loss: float, lr: float, samples_per_s: float) -> list[str]:
    """One row of the metrics CSV, formatted."""
    return [str(step), str(epoch), f"{loss:.6f}", f"{lr:.6g}", f"{samples_per_s:.2f}"]


class RunRecords:
    """A run's checkpoints and metrics CSV, written so that nothing older is lost before it is replaced.

    A resumed run continues the run on disk: its CSV is cut back to the restored step and its
    checkpoints rotate with the new ones. A fresh run holds its metrics rows back and leaves the
    previous run's checkpoints alone until its own first checkpoint is written; then the old
    checkpoints go and the CSV is replaced by the new run's rows.
    """

    def __init__(self, out_dir: Path, metrics_path: Path, resumed_step: int | None) -> None:
        self.out_dir, self.metrics_path = Path(out_dir), Path(metrics_path)
        self.ours: list[Path] = checkpoint_dirs(out_dir) if resumed_step is not None else []
        self.held: list[list[str]] | None = None if resumed_step is not None else []
        if resumed_step is not None:
            prepare_metrics(self.metrics_path, resumed_step)

    def log(self, step: int, epoch: int, loss: float, lr: float, samples_per_s: float) -> None:
        """Record one step's metrics (held back until the run's first checkpoint when it is fresh)."""
        row = metrics_row(step, epoch, loss, lr, samples_per_s)
        if self.held is not None:
            self.held.append(row)
            return
        with self.metrics_path.open("a", newline="") as f:
            csv.writer(f).writerow(row)

    def checkpoint(self, step: int, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> Path:
        """Write a checkpoint, then drop every checkpoint but this run's newest KEEP_CHECKPOINTS and publish the CSV."""
        path = save_checkpoint(self.out_dir, step, tensors, optimizer, scheduler, state)
        self.ours = [p for p in self.ours if p != path] + [path]
        keep = set(self.ours[-KEEP_CHECKPOINTS:])
        for old in checkpoint_dirs(self.out_dir):
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)
        self.ours = [p for p in self.ours if p in keep]
        self.publish()
        return path

    def publish(self) -> None:
        """Write the held-back rows as the run's CSV (a no-op once published)."""
        if self.held is not None:
            write_metrics(self.metrics_path, self.held)
            self.held = None
