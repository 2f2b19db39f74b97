"""Training the CT model as Merlin does: phenotype supervision (BCE) plus report contrastive (InfoNCE).

Schedules (`ct.adapt.schedule`):
* "staged": phenotype loss only for the first `stage1_steps` steps (or `stage1_epochs` epochs),
  then `contrastive_weight * InfoNCE + phenotype_weight * BCE`;
* "multitask": the weighted sum from the first step.

Shared with the backbone trainer (pipelines/train.py): the cosine-with-warm-up schedule, AdamW
parameter groups, the checkpoint folder layout and retention, the metrics CSV header, the
per-step reseeding (so a resumed run ends on the same weights), DDP via pipelines.distributed with
the contrastive loss from pipelines.loss.make_loss (features gathered across ranks). Unlike the
backbone, checkpoints hold the full state dict (BatchNorm running statistics are buffers, not
parameters), and the data is map-style: epoch e's order is a seeded permutation, global batch k
is perm[k*B*W:(k+1)*B*W] and rank r takes its r-th slice, so W ranks x B see what 1 rank x W*B
sees. BatchNorm is the exception: SyncBatchNorm on CUDA makes its statistics global; on CPU/gloo
each rank normalises by its own slice, so the runs agree only approximately.

Report-splitting augmentation: each sample's text per epoch is the full findings or one organ
section (domains/ct/dataset.py:choose_text), seeded by (seed, epoch, key).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch.nn.parallel import DistributedDataParallel

from domains.ct import dataset as DS
from domains.ct import model as M
from domains.ct.text import tokenize
from pipelines import distributed as D
from pipelines.config import build, load_params, section
from pipelines.loss import make_loss
from pipelines.train import (KEEP_CHECKPOINTS, MAX_LOGIT_SCALE, autocast, checkpoint_dirs, cosine_with_warmup,
                             param_groups, prepare_metrics)

log = logging.getLogger(__name__)
SCHEDULES = ("staged", "multitask")
METRICS_FILE = "train_steps.csv"


@dataclass
class CTTrainConfig:
    """params.yaml `ct.train`. Defaults are the real setting (one GPU, 48 GB)."""

    schedule: str = "staged"
    stage1_steps: Optional[int] = None   # staged: phenotype-only steps; None -> stage1_epochs
    stage1_epochs: int = 1
    phenotype_weight: float = 1.0
    contrastive_weight: float = 1.0
    loss: str = "clip"                   # contrastive loss of pipelines.loss (clip | siglip)
    batch_size: int = 8                  # per rank, per micro-batch
    epochs: int = 10
    max_steps: Optional[int] = None      # optimizer steps; overrides epochs when set
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_accum: int = 1
    precision: str = "bf16"              # fp32 | bf16 autocast
    grad_checkpointing: bool = True
    full_report_prob: float = 0.5        # report splitting: P(full findings), else one organ section
    seed: int = 0
    checkpoint_every: int = 200          # steps; 0: only the final checkpoint
    log_every: int = 1

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.log_every < 1:
            raise ValueError("batch_size, grad_accum and log_every must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 when set")


def _save_checkpoint(out: Path, step: int, model: torch.nn.Module, loss_fn: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scheduler: Any, state: dict[str, Any]) -> Path:
    """out/checkpoints/step-N/{model,loss}.safetensors + optimizer.pt + state.json, renamed into place."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    save_model(loss_fn, str(tmp / "loss.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)  # a checkpoint is complete or absent, never half-written
    for old in checkpoint_dirs(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _tokenizer_for(cfg: M.CTModelConfig, index: DS.ShardIndex, out: Path, resume: bool, info: D.DistInfo):
    """Rank 0 trains (or, on resume, reuses) the tokenizer and saves it; other ranks read that copy."""
    tok_dir = out / M.TOKENIZER_DIR
    if info.is_main and not (resume and tok_dir.is_dir()):
        out.mkdir(parents=True, exist_ok=True)
        M.new_tokenizer(cfg, index.reports()).save_pretrained(str(tok_dir))
    D.barrier(info)
    from domains.ct.text import load_tokenizer

    return load_tokenizer(tok_dir)


def train_ct(data: Path, out: Path, model_cfg: M.CTModelConfig, cfg: CTTrainConfig, resume: bool = False,
             metrics_path: Optional[Path] = None) -> dict[str, Any]:
    """Train on DATA's train split; write the model folder OUT. Every rank calls this under torchrun."""
    cfg.validate()
    info = D.init_distributed()
    try:
        return _train(Path(data), Path(out), model_cfg, cfg, resume, metrics_path, info)
    finally:
        D.cleanup(info)


def _train(data: Path, out: Path, model_cfg: M.CTModelConfig, cfg: CTTrainConfig, resume: bool,
           metrics_path: Optional[Path], info: D.DistInfo) -> dict[str, Any]:
    device = info.device
    index = DS.split_index(data, "train")
    if len(index) == 0:
        raise FileNotFoundError(f"no train samples under {data}/shards (run `domainfm curate ct` first)")
    phenotypes = DS.read_phenotypes(data)
    if info.is_main and not resume:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # never resume into an older run later
    tokenizer = _tokenizer_for(model_cfg, index, out, resume, info)

    torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed (evaluate's "base" relies on it)
    model = M.build_model(model_cfg, phenotypes, tokenizer).to(device).train()
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    loss_fn = make_loss(cfg.loss, info.rank, info.world_size).to(device)
    named = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    optimizer = torch.optim.AdamW(param_groups(named, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)

    per_step = cfg.batch_size * info.world_size * cfg.grad_accum
    steps_per_epoch = len(index) // per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{len(index)} train samples are fewer than one step of {cfg.batch_size} x {cfg.grad_accum} x {info.world_size}")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    stage1 = 0
    if cfg.schedule == "staged":
        stage1 = cfg.stage1_steps if cfg.stage1_steps is not None else cfg.stage1_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup_steps, total))

    step, last_loss = 0, float("nan")
    ckpts = checkpoint_dirs(out) if resume else []
    if ckpts:
        latest = ckpts[-1]
        load_model(model, str(latest / "model.safetensors"), device=str(device))
        load_model(loss_fn, str(latest / "loss.safetensors"), device=str(device))
        opt = torch.load(latest / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        state = json.loads((latest / "state.json").read_text())
        step, last_loss = int(state["step"]), float(state.get("loss", "nan"))
    start_step = step
    metrics_path = Path(metrics_path) if metrics_path is not None else out / METRICS_FILE
    if info.is_main:
        prepare_metrics(metrics_path, step if ckpts else None)

    net: torch.nn.Module = model
    if info.distributed and device.type == "cuda":
        # BatchNorm statistics over the global batch, as one process would see it (SyncBatchNorm is
        # CUDA-only; on CPU/gloo each rank normalises by its own micro-batch). Same state-dict keys.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if info.distributed:
        # phase 1 of "staged" leaves the text tower unused
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=cfg.schedule == "staged")

    def state_of(s: int, loss: float) -> dict[str, Any]:
        return {"step": s, "loss": loss, "steps_per_epoch": steps_per_epoch, "total_steps": total,
                "world_size": info.world_size, "config": asdict(cfg), "model": asdict(model_cfg)}

    t0 = time.perf_counter()
    perm_epoch, perm = -1, None
    while step < total:
        epoch = step // steps_per_epoch
        if epoch != perm_epoch:
            g = torch.Generator().manual_seed(DS.stable_seed("order", cfg.seed, epoch))
            perm, perm_epoch = torch.randperm(len(index), generator=g).tolist(), epoch
        t_step = time.perf_counter()
        # dropout etc. replay identically on resume; the rank term keeps ranks' masks independent
        torch.manual_seed(DS.stable_seed("step", cfg.seed, step, info.rank))
        optimizer.zero_grad(set_to_none=True)
        contrastive = step >= stage1
        micro_losses = []
        for micro in range(cfg.grad_accum):
            k = (step % steps_per_epoch) * cfg.grad_accum + micro  # global micro-batch within the epoch
            start = k * cfg.batch_size * info.world_size + info.rank * cfg.batch_size
            samples = [index[i] for i in perm[start:start + cfg.batch_size]]
            volumes = DS.volume_batch(samples, model_cfg.input_size).to(device)
            targets = DS.phenotype_targets(samples, phenotypes).to(device)
            tokens = None
            if contrastive:
                texts = [DS.choose_text(s, cfg.seed, epoch, cfg.full_report_prob) for s in samples]
                tokens = {k_: v.to(device) for k_, v in tokenize(tokenizer, texts, model_cfg.context_length).items()}
            last = micro == cfg.grad_accum - 1
            sync = net.no_sync() if isinstance(net, DistributedDataParallel) and not last else contextlib.nullcontext()
            with sync:
                with autocast(device, cfg.precision):
                    outs = net(volumes, **(tokens or {}))
                loss = torch.zeros((), device=device)
                if phenotypes:
                    loss = loss + cfg.phenotype_weight * F.binary_cross_entropy_with_logits(
                        outs["phenotype_logits"].float(), targets)
                if contrastive:
                    loss = loss + cfg.contrastive_weight * loss_fn(
                        outs["image_features"].float(), outs["text_features"].float(), outs["logit_scale"].float())
                (loss / cfg.grad_accum).backward()
            micro_losses.append(loss.detach())
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        step += 1
        last_loss = D.all_reduce_mean(torch.stack(micro_losses).mean(), info).item()
        if not math.isfinite(last_loss):
            raise FloatingPointError(f"loss is {last_loss} at step {step}")
        rate = per_step / max(time.perf_counter() - t_step, 1e-9)
        if info.is_main and (step % cfg.log_every == 0 or step == total):
            with metrics_path.open("a", newline="") as f:
                csv.writer(f).writerow([step, epoch, f"{last_loss:.6f}", f"{lr:.6g}", f"{rate:.2f}"])
        if info.is_main and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            _save_checkpoint(out, step, model, loss_fn, optimizer, scheduler, state_of(step, last_loss))
        D.barrier(info)
    seconds = time.perf_counter() - t0

    if info.is_main:
        if not (ckpts and step == start_step):
            _save_checkpoint(out, step, model, loss_fn, optimizer, scheduler, state_of(step, last_loss))
        _write_model_folder(model, phenotypes, tokenizer, out, {"train": asdict(cfg), "steps": step})
        if metrics_path.resolve() != (out / METRICS_FILE).resolve():
            shutil.copyfile(metrics_path, out / METRICS_FILE)
    D.barrier(info)
    return {"steps": step, "seconds": seconds, "final_loss": last_loss,
            "samples_per_s": (step - start_step) * per_step / seconds if seconds > 0 else 0.0}


def _write_model_folder(model: M.CTCLIP, phenotypes: list[str], tokenizer, out: Path, extra: dict[str, Any]) -> None:
    """The final model files, each replaced atomically (weights last: their presence means done)."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    M.save_model_dir(model, phenotypes, tokenizer, tmp, extra)
    for name in (M.CONFIG_FILE, M.TOKENIZER_DIR, M.TEXT_CONFIG_DIR, M.WEIGHTS_FILE):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)


# CTTrainConfig fields read from params `ct.adapt` (what is learned: objectives and schedule); the
# rest come from `ct.train` (the optimisation loop). The same split as the open_clip domains' adapt/train.
ADAPT_FIELDS = ("schedule", "stage1_steps", "stage1_epochs", "phenotype_weight", "contrastive_weight", "loss", "full_report_prob")


def configs_from_params(params: Path) -> tuple[M.CTModelConfig, CTTrainConfig]:
    """`ct.base_model` -> CTModelConfig; `ct.adapt` + `ct.train` -> CTTrainConfig."""
    p = load_params(params)
    adapt, train = dict(section(p, "ct", "adapt")), dict(section(p, "ct", "train"))
    misplaced = sorted(set(adapt) - set(ADAPT_FIELDS)) + sorted(set(train) & set(ADAPT_FIELDS))
    if misplaced:
        raise ValueError(f"ct.adapt holds {', '.join(ADAPT_FIELDS)}; ct.train the rest. Misplaced: {', '.join(misplaced)}")
    return build(M.CTModelConfig, section(p, "ct", "base_model")), build(CTTrainConfig, {**adapt, **train})


def train_command(data: Path, out: Path, metrics: Optional[Path] = None, resume: bool = False,
                  params: Path = Path("params.yaml")) -> dict[str, Any]:
    """`domainfm train ct`: params `ct.base_model`, `ct.adapt` and `ct.train`; writes the model folder OUT."""
    model_cfg, cfg = configs_from_params(params)
    stats = train_ct(data, out, model_cfg, cfg, resume=resume, metrics_path=metrics)
    print(json.dumps(stats, indent=2))
    return stats
