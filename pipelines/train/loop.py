"""The one training loop.

It knows nothing about the objective: a `TrainingTask` supplies the model, the losses, the data and
the final artefacts (see pipelines/train/task.py).

Design notes:

* Steps are optimizer steps. One step consumes `grad_accum` micro-batches of `batch_size` per rank,
  so the effective batch is batch_size x grad_accum x world_size; an epoch is
  num_samples // (batch_size x grad_accum x world_size) steps (drop-last).
* Gradient accumulation is the standard kind: each micro-batch's summed loss is divided by
  grad_accum and back-propagated; gradients add up. For a contrastive loss that is NOT the
  big-batch gradient: each micro-batch only sees its own batch_size x world_size negatives. It saves
  memory, not negatives. Under DDP the gradient all-reduce is skipped (no_sync) on all but the last
  micro-batch.
* DDP wraps the task (model and loss together); contrastive losses gather features across ranks
  themselves (pipelines/train/loss.py), so with W ranks a step equals a single-process step on the
  W x batch_size global batch. On CUDA, BatchNorm layers become SyncBatchNorm.
* Determinism: the task's data order is a pure function of (seed, epoch, ...) and the global RNG is
  reseeded from (seed, step, rank) before every step, so a resumed run replays exactly what the
  uninterrupted run would have done, and ranks draw independent dropout masks.
* Precision: `bf16` runs the forward under autocast; tasks compute their losses in fp32.
* Checkpoints and the metrics CSV: see pipelines/train/checkpoint.py. A fresh run leaves the
  previous run's checkpoints and CSV in place until its own first checkpoint exists. A final
  checkpoint makes a later `resume` a no-op instead of a retrain; `task.save` then writes the
  run's artefacts, each replaced atomically.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipelines.train import distributed as D
from pipelines.train.checkpoint import CHECKPOINTS_DIR, RunRecords, checkpoint_dirs, load_checkpoint
from pipelines.train.seeds import stable_seed
from pipelines.train.task import Progress, TrainingTask

log = logging.getLogger(__name__)

METRICS_FILE = "train_steps.csv"
Precision = Literal["auto", "fp32", "bf16"]
AdamWImpl = Literal["fused", "foreach", "single-tensor"]


@dataclass
class TrainConfig:
    """params.yaml `<domain>.train`: the optimisation loop, the same for every model family."""

    batch_size: int = 64          # per rank, per micro-batch
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    grad_accum: int = 1           # micro-batches per optimizer step
    precision: Precision = "auto"  # auto: bf16 autocast on a GPU that supports it, fp32 elsewhere; bf16 also on CPU
    grad_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 50    # steps; 0 keeps only the final checkpoint
    log_every: int = 1
    # fused: AdamW's whole update in one kernel per step (CPU and CUDA); foreach: batched tensor ops;
    # single-tensor: a Python loop over parameters (torch's CPU default). Same update up to float rounding.
    adamw_impl: AdamWImpl = "fused"

    def validate(self) -> None:
        """Refuse values the loop cannot run with."""
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("epochs", "warmup_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 when set")


def cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier for step s (0-based): linear warm-up to 1, then cosine decay to 0 at total."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return factor


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # open_clip's rule (1-d tensors, biases, norms, logit_scale) plus embeddings.
    return param.ndim < 2 or any(k in name for k in ("bias", "ln_", "norm", "bn", "logit_scale", "embedding"))


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices, none on biases, norms, scales and embeddings."""
    decay = [p for n, p in named if not _no_decay(n, p)]
    plain = [p for n, p in named if _no_decay(n, p)]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}) if g["params"]]


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """`auto` is bf16 on a CUDA device that supports it (where it pays) and fp32 elsewhere (CPU results unchanged)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def make_adamw(groups: list[dict[str, Any]], lr: float, impl: AdamWImpl) -> torch.optim.AdamW:
    """AdamW with open_clip's betas and eps for ViT CLIP training, in the chosen implementation."""
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single-tensor": {"foreach": False}}[impl]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, **flags)


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device`, or nothing for fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def fit(task: TrainingTask, cfg: TrainConfig, out_dir: Path, info: D.DistInfo, resume: bool = False,
        metrics_path: Path | None = None) -> dict[str, Any]:
    """Train `task` under `cfg`; write checkpoints, the metrics CSV and the task's artefacts to `out_dir`.

    Returns {steps, samples, seconds, samples_per_s, final_loss} (steps and samples are totals
    including any resumed part; seconds and samples_per_s cover this call only). Under torchrun
    every rank calls this with its DistInfo; only rank 0 writes files.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    metrics_path = Path(metrics_path) if metrics_path is not None else out_dir / METRICS_FILE
    device = info.device
    precision = resolve_precision(cfg.precision, device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("bf16 is not supported on this GPU; training in fp32")
        precision = "fp32"

    torch.manual_seed(cfg.seed)
    task.to(device).train()
    if cfg.grad_checkpointing and not task.set_grad_checkpointing(True):
        log.warning("grad_checkpointing requested but the model has no set_grad_checkpointing; ignored")

    named = task.trainable_named()
    if not named:
        raise ValueError("the model has no parameters with requires_grad=True")
    optimizer = make_adamw(param_groups(named, cfg.weight_decay), cfg.lr, cfg.adamw_impl)

    n_samples = task.num_samples()
    global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
    steps_per_epoch = n_samples // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{n_samples} samples are fewer than one step of {cfg.batch_size} x {cfg.grad_accum} "
                         f"(grad_accum) x {info.world_size} (ranks)")
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup_steps, total_steps))

    step, samples, last_loss = 0, 0, float("nan")
    ckpts = checkpoint_dirs(out_dir) if resume else []
    if ckpts:
        latest = ckpts[-1]
        tensors, opt_state, state = load_checkpoint(latest, device)
        task.load_checkpoint_tensors(tensors, str(latest))
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        step, samples, last_loss = int(state["step"]), int(state.get("samples", 0)), float(state.get("loss", "nan"))
        if state.get("config") != asdict(cfg) and info.is_main:
            log.warning("resuming %s with a different config than it was written with", latest)
        if info.is_main:
            log.info("resumed from %s (step %d)", latest, step)
    elif resume and info.is_main:
        log.info("no checkpoint under %s; starting from scratch", out_dir / CHECKPOINTS_DIR)
    start_step = step

    records = None
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # a fresh run replaces an older run's checkpoints and CSV only once it has its own checkpoint
        records = RunRecords(out_dir, metrics_path, step if ckpts else None)

    net: nn.Module = task
    if info.distributed:
        if device.type == "cuda":  # BatchNorm statistics over the global batch, as one process sees it
            net = task = nn.SyncBatchNorm.convert_sync_batchnorm(task)
        net = DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=task.may_leave_parameters_unused)

    def state_for(step_: int, loss_: float) -> dict[str, Any]:
        return {"step": step_, "epoch": step_ // steps_per_epoch, "samples": samples, "loss": loss_,
                "world_size": info.world_size, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "config": asdict(cfg)}

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not info.is_main, dynamic_ncols=True)
    t_start = time.perf_counter()
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            batches = task.batches(epoch=epoch, skip=(step - epoch * steps_per_epoch) * cfg.grad_accum,
                                   batch_size=cfg.batch_size, multiple_of=cfg.grad_accum, seed=cfg.seed,
                                   rank=info.rank, world_size=info.world_size)
            while step < total_steps and step < (epoch + 1) * steps_per_epoch:
                t_step = time.perf_counter()
                torch.manual_seed(stable_seed("step", cfg.seed, step, info.rank))  # model-side randomness replays on resume
                optimizer.zero_grad(set_to_none=True)
                progress = Progress(step, epoch, steps_per_epoch, total_steps)
                micro_losses = []
                for micro in range(cfg.grad_accum):
                    batch = to_device(next(batches), device)
                    last_micro = micro == cfg.grad_accum - 1
                    sync = net.no_sync() if isinstance(net, DistributedDataParallel) and not last_micro else contextlib.nullcontext()
                    with sync:
                        with autocast(device, precision):
                            losses = net(batch, progress)
                        loss = sum(losses.values())
                        (loss / cfg.grad_accum).backward()
                    micro_losses.append(loss.detach())
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                task.after_optimizer_step()
                step += 1
                samples += global_batch
                last_loss = D.all_reduce_mean(torch.stack(micro_losses).mean(), info).item()
                if not math.isfinite(last_loss):
                    raise FloatingPointError(f"loss is {last_loss} at step {step}")
                rate = global_batch / max(time.perf_counter() - t_step, 1e-9)

                if info.is_main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", samples_per_s=f"{rate:.1f}")
                    if step % cfg.log_every == 0 or step == total_steps:
                        records.log(step, epoch, last_loss, lr, rate)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                    if info.is_main:
                        records.checkpoint(step, task.checkpoint_tensors(), optimizer, scheduler, state_for(step, last_loss))
                    D.barrier(info)
            del batches
    finally:
        bar.close()
    seconds = time.perf_counter() - t_start

    if info.is_main:
        if not (ckpts and step == start_step):
            records.checkpoint(step, task.checkpoint_tensors(), optimizer, scheduler, state_for(step, last_loss))
        records.publish()
        task.save(out_dir)
        if metrics_path.resolve() != (out_dir / METRICS_FILE).resolve():
            shutil.copyfile(metrics_path, out_dir / METRICS_FILE)
    D.barrier(info)
    run_samples = samples - start_step * global_batch
    return {
        "steps": step,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": run_samples / seconds if seconds > 0 else 0.0,
        "final_loss": last_loss,
    }
