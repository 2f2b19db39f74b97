"""Contrastive training loop for open_clip models (full fine-tuning or PEFT adapters alike).

`train()` optimises every parameter of `model` with requires_grad=True; `model` must have CLIP's
forward, `(image, text) -> (image_features, text_features, logit_scale[, logit_bias])` or the
equivalent dict. It is generic about what is trainable, so `adapt.prepare()` decides that.

Design notes:

* Steps are optimizer steps. One step consumes `grad_accum` micro-batches of `batch_size` per rank,
  so the effective batch is batch_size x grad_accum x world_size.
* Gradient accumulation is the standard kind: each micro-batch's loss is divided by grad_accum and
  back-propagated; gradients add up. For a contrastive loss that is NOT the big-batch gradient:
  each micro-batch only sees its own batch_size x world_size negatives. It saves memory, not
  negatives (open_clip's feature-caching variant would, at the price of a second forward pass).
  Under DDP the gradient all-reduce is skipped (no_sync) on all but the last micro-batch.
* DDP: features are gathered across ranks inside the loss (see pipelines/loss.py), so with W ranks
  one step equals a single-process step on the W x batch_size global batch.
* Determinism: the data order is a pure function of (seed, epoch, ...) (see pipelines/data.py) and
  the global RNG is reseeded from (seed, step) before every step, so a resumed run replays exactly
  what the uninterrupted run would have done.
* Checkpoints (`out_dir/checkpoints/step-XXXXXX/`): `trainable.safetensors` (trainable parameters
  by their named_parameters() names, plus `loss.*` for parameters owned by the loss),
  `optimizer.pt` (optimizer + LR scheduler state, plain tensors/containers: loads with
  weights_only=True), `state.json`. Each is written into a temp folder renamed into place; the
  last two are kept. The final `out_dir/trainable.safetensors` has the same format.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipelines import distributed as D
from pipelines.data import count_samples, make_train_loader, steps_for
from pipelines.loss import LOSSES, make_loss

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100)  # as open_clip (and the CLIP paper): temperature at most 100
METRICS_HEADER = ["step", "epoch", "loss", "lr", "samples_per_s"]
LOSS_PREFIX = "loss."
KEEP_CHECKPOINTS = 2
_CKPT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainConfig:
    loss: str = "clip"            # clip | siglip
    batch_size: int = 64          # per rank, per micro-batch
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    grad_accum: int = 1           # micro-batches per optimizer step
    precision: str = "fp32"       # fp32 | bf16 (autocast; on CPU and CUDA where supported)
    grad_checkpointing: bool = False
    seed: int = 0
    checkpoint_every: int = 50    # steps; 0 disables intermediate checkpoints
    workers: int = 0
    log_every: int = 1
    caption_variants: bool = False  # draw each sample's text from txt + json caption_variants per epoch

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("epochs", "warmup_steps", "checkpoint_every", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 when set")


# ----------------------------------------------------------------------------- pieces


def cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier for step s (0-based): linear warm-up to 1, then cosine decay to 0 at total."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return factor


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # open_clip's rule (1-d tensors, biases, norms, logit_scale) plus embeddings, as the brief asks.
    return param.ndim < 2 or any(k in name for k in ("bias", "ln_", "norm", "bn", "logit_scale", "embedding"))


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for n, p in named if not _no_decay(n, p)]
    plain = [p for n, p in named if _no_decay(n, p)]
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}) if g["params"]]


def unpack_outputs(out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CLIP's forward output (tuple or dict) -> (image_features, text_features, logit_scale, logit_bias)."""
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    if isinstance(out, (tuple, list)) and len(out) in (3, 4):
        return out[0], out[1], out[2], (out[3] if len(out) == 4 else None)
    raise TypeError(f"unexpected model output {type(out).__name__}; expected CLIP's (image, text, scale[, bias]) or dict")


def trainable_tensors(model: nn.Module, loss_fn: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: the trainable parameters by name, plus loss.* parameters."""
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    tensors.update({LOSS_PREFIX + n: p.detach().cpu().contiguous() for n, p in loss_fn.named_parameters()})
    return tensors


def load_trainable(model: nn.Module, loss_fn: nn.Module, path: Path) -> None:
    """Copy a trainable.safetensors back into the model and the loss (names must match exactly)."""
    saved = load_file(str(path))
    targets = {n: p for n, p in model.named_parameters() if p.requires_grad}
    targets.update({LOSS_PREFIX + n: p for n, p in loss_fn.named_parameters()})
    missing, unexpected = sorted(set(targets) - set(saved)), sorted(set(saved) - set(targets))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the trainable parameters "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    with torch.no_grad():
        for name, param in targets.items():
            param.copy_(saved[name].to(param.device, param.dtype))


def _write_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """Finished checkpoints under out_dir/checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step-*") if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(out_dir: Path, step: int, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> Path:
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_tensors(model, loss_fn), str(tmp / "trainable.safetensors"), metadata={"format": "pt"})
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if final.exists():  # e.g. a rerun that reached the same step again
        shutil.rmtree(final)
    os.rename(tmp, final)  # the checkpoint appears complete or not at all
    for old in checkpoint_dirs(out_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _step_seed(seed: int, step: int) -> int:
    return zlib.crc32(f"step:{seed}:{step}".encode())


# ----------------------------------------------------------------------------- loop


def train(
    model: nn.Module,
    preprocess_train: Callable,
    tokenizer: Callable,
    shards: list[str],
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    metrics_path: Path | None = None,
) -> dict[str, Any]:
    """Train `model`'s trainable parameters on `shards`; write checkpoints and out_dir/trainable.safetensors.

    Returns {steps, samples, seconds, samples_per_s, final_loss} (steps and samples are totals
    including any resumed part; seconds and samples_per_s cover this call only). Under torchrun
    every rank calls this; only rank 0 writes files.
    """
    cfg.validate()
    info = D.init_distributed()
    try:
        return _train(model, preprocess_train, tokenizer, shards, cfg, Path(out_dir), resume, metrics_path, info)
    finally:
        D.cleanup(info)


def _train(model: nn.Module, preprocess_train: Callable, tokenizer: Callable, shards: list[str], cfg: TrainConfig,
           out_dir: Path, resume: bool, metrics_path: Path | None, info: D.DistInfo) -> dict[str, Any]:
    device = info.device
    precision = cfg.precision
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("bf16 is not supported on this GPU; training in fp32")
        precision = "fp32"

    torch.manual_seed(cfg.seed)
    model.to(device).train()
    if cfg.grad_checkpointing:
        setter = getattr(model, "set_grad_checkpointing", None)  # peft models forward the attribute to the CLIP
        if setter is None:
            log.warning("grad_checkpointing requested but the model has no set_grad_checkpointing; ignored")
        else:
            setter(True)

    loss_fn = make_loss(cfg.loss, info.rank, info.world_size,
                        model_has_logit_bias=getattr(model, "logit_bias", None) is not None).to(device)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    named += [(LOSS_PREFIX + n, p) for n, p in loss_fn.named_parameters()]
    if not named:
        raise ValueError("the model has no parameters with requires_grad=True")
    # betas/eps as open_clip's defaults for ViT CLIP training
    optimizer = torch.optim.AdamW(param_groups(named, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    counts = count_samples(shards)
    batches_per_epoch = steps_for(sum(counts), cfg.batch_size, info.world_size, cfg.grad_accum)
    steps_per_epoch = batches_per_epoch // cfg.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(f"{sum(counts)} samples are fewer than one step of {cfg.batch_size} x {cfg.grad_accum} "
                         f"(grad_accum) x {info.world_size} (ranks)")
    total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup_steps, total_steps))

    step, samples, last_loss = 0, 0, float("nan")
    ckpts = checkpoint_dirs(out_dir) if resume else []
    if ckpts:
        latest = ckpts[-1]
        load_trainable(model, loss_fn, latest / "trainable.safetensors")
        opt_state = torch.load(latest / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(opt_state["optimizer"])
        scheduler.load_state_dict(opt_state["scheduler"])
        state = json.loads((latest / "state.json").read_text())
        step, samples, last_loss = int(state["step"]), int(state["samples"]), float(state.get("loss", "nan"))
        if state.get("config") != asdict(cfg) and info.is_main:
            log.warning("resuming %s with a different config than it was written with", latest)
        if info.is_main:
            log.info("resumed from %s (step %d)", latest, step)
    elif resume and info.is_main:
        log.info("no checkpoint under %s; starting from scratch", out_dir / "checkpoints")
    start_step = step

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            # a fresh run must not leave an older run's checkpoints for a later resume to pick up
            shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        if metrics_path is not None:
            prepare_metrics(Path(metrics_path), step if ckpts else None)

    net: nn.Module = model
    if info.distributed:
        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # a siglip loss that owns its scale leaves the model's logit_scale without a gradient
            find_unused_parameters=getattr(loss_fn, "owns_params", False),
        )

    clamp_targets = [m for m in (model, loss_fn) if isinstance(getattr(m, "logit_scale", None), torch.Tensor)]
    global_batch = cfg.batch_size * cfg.grad_accum * info.world_size

    def state_dict_for(step_: int, loss_: float) -> dict[str, Any]:
        return {"step": step_, "epoch": step_ // steps_per_epoch, "samples": samples, "loss": loss_,
                "world_size": info.world_size, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "config": asdict(cfg)}

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not info.is_main, dynamic_ncols=True)
    t_start = time.perf_counter()
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            loader, _ = make_train_loader(
                shards, preprocess_train, tokenizer, cfg.batch_size, cfg.seed, epoch, cfg.workers,
                info.rank, info.world_size, counts=counts,
                skip_batches=(step - epoch * steps_per_epoch) * cfg.grad_accum, batches_multiple_of=cfg.grad_accum,
                caption_variants=cfg.caption_variants,
            )
            batches = iter(loader)
            while step < total_steps and step < (epoch + 1) * steps_per_epoch:
                t_step = time.perf_counter()
                torch.manual_seed(_step_seed(cfg.seed, step))  # model-side randomness replays on resume
                optimizer.zero_grad(set_to_none=True)
                micro_losses = []
                for micro in range(cfg.grad_accum):
                    images, texts = next(batches)
                    images = images.to(device, non_blocking=True)
                    texts = texts.to(device, non_blocking=True)
                    last_micro = micro == cfg.grad_accum - 1
                    sync = net.no_sync() if isinstance(net, DistributedDataParallel) and not last_micro else contextlib.nullcontext()
                    with sync:
                        with autocast(device, precision):
                            image_f, text_f, scale, bias = unpack_outputs(net(images, texts))
                        # loss in fp32: the logits/softmax are where bf16 hurts most
                        loss = loss_fn(image_f.float(), text_f.float(), scale.float(),
                                       None if bias is None else bias.float())
                        (loss / cfg.grad_accum).backward()
                    micro_losses.append(loss.detach())
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    for m in clamp_targets:
                        m.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                step += 1
                samples += global_batch
                last_loss = D.all_reduce_mean(torch.stack(micro_losses).mean(), info).item()
                if not math.isfinite(last_loss):
                    raise FloatingPointError(f"loss is {last_loss} at step {step}")
                rate = global_batch / max(time.perf_counter() - t_step, 1e-9)

                if info.is_main:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", samples_per_s=f"{rate:.1f}")
                    if metrics_path is not None and (step % cfg.log_every == 0 or step == total_steps):
                        with Path(metrics_path).open("a", newline="") as f:
                            csv.writer(f).writerow([step, epoch, f"{last_loss:.6f}", f"{lr:.6g}", f"{rate:.2f}"])
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
                    if info.is_main:
                        save_checkpoint(out_dir, step, model, loss_fn, optimizer, scheduler, state_dict_for(step, last_loss))
                    D.barrier(info)
            del batches, loader
    finally:
        bar.close()
    seconds = time.perf_counter() - t_start

    if info.is_main:
        # the final checkpoint makes a later resume=True a no-op instead of a retrain
        if not (ckpts and step == start_step):
            save_checkpoint(out_dir, step, model, loss_fn, optimizer, scheduler, state_dict_for(step, last_loss))
        _write_safetensors_atomic(trainable_tensors(model, loss_fn), out_dir / "trainable.safetensors")
    D.barrier(info)
    run_samples = samples - (start_step * global_batch)
    return {
        "steps": step,
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": run_samples / seconds if seconds > 0 else 0.0,
        "final_loss": last_loss,
    }
