"""DDP on 2 CPU ranks (gloo) through the one loop, for every training mode.

For open_clip models a DDP step equals one single-process step on the union of the ranks'
batches (full fine-tuning and LoRA, CLIP and SigLIP), the SigLIP loss's own scale and bias stay
identical on every rank, gradient accumulation keeps the ranks identical, and a DDP run killed
mid-way and resumed ends on the weights of an uninterrupted one. The volume model's BatchNorm
normalises per rank on CPU, so there the check is that ranks stay identical.

Why accumulation is not compared with one process: the data order of a small dataset depends on
the number of reading slots (pipelines/train/clip_data.py), so with two micro-batches per step one
process and two ranks see the same samples in differently composed micro-batches, and a
contrastive loss is not additive over micro-batches.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from train_fixtures import FAMILIES, tiny_clip, write_shard

import pipelines.train.loop as loop
from pipelines.models.adapt import AdaptConfig, prepare
from pipelines.train import distributed as D
from pipelines.train.loop import fit

WORLD, B = 2, 6
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Mode:
    family: str = "clip"
    adapt: str = "full"  # full | lora (open_clip only)
    lora_forward: str = "peft"  # peft | merged (AdaptConfig.lora_forward)
    loss: str = "clip"
    grad_accum: int = 1
    steps: int = 1


def _cfg(mode: Mode, batch: int):
    # No warm-up, so the step runs at the full lr. Adam's first step is about lr * sign(grad), which
    # turns float noise in near-zero gradients (e.g. attention key biases) into ~1e-2 * lr; a step
    # without the other rank's negatives differs by ~2 * lr = 2e-4, far beyond the 1e-5 tolerance.
    extra = {"loss": mode.loss} if mode.family == "clip" else {}
    return FAMILIES[mode.family].config(batch_size=batch, max_steps=mode.steps, grad_accum=mode.grad_accum, lr=1e-4,
                                        warmup_steps=0, checkpoint_every=1, **extra)


def _task(mode: Mode, data: Path, out: Path, cfg, info: D.DistInfo):
    fam = FAMILIES[mode.family]
    if mode.family != "clip":
        return fam.task(data, out, cfg, info=info)
    lm = tiny_clip()
    model = prepare(lm.model, AdaptConfig(mode="lora", lora_r=4, lora_forward=mode.lora_forward)) if mode.adapt == "lora" else lm.model
    return fam.task(data, out, cfg, info=info, model=model)


def _run(mode: Mode, data: Path, out: Path, batch: int, info: D.DistInfo, resume: bool = False):
    cfg = _cfg(mode, batch)
    task = _task(mode, data, out, cfg, info)
    stats = fit(task, cfg, out, info, resume=resume, metrics_path=out / "metrics.csv")
    return task, stats


def _worker(rank: int, mode: Mode, port: int, data: str, out: str, crash_at: int | None, resume: bool) -> None:
    torch.set_num_threads(1)
    # what torchrun would set
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if crash_at is not None:  # both ranks die at the start of that step, as when a job is killed
        real = loop.stable_seed

        def crash(*parts: object) -> int:
            if parts[:1] == ("step",) and parts[2] == crash_at:
                os._exit(3)
            return real(*parts)

        loop.stable_seed = crash
    info = D.init_distributed()
    try:
        batch = B if mode.family == "clip" else 3
        task, stats = _run(mode, Path(data), Path(out), batch, info, resume)
        save_file(task.checkpoint_tensors(), str(Path(out) / f"rank{rank}.safetensors"))
    finally:
        D.cleanup(info)
    (Path(out) / f"stats-rank{rank}.json").write_text(json.dumps(stats))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp(mode: Mode, data: Path, out: Path, crash_at: int | None = None, resume: bool = False) -> list[dict[str, torch.Tensor]]:
    ctx = mp.start_processes(_worker, args=(mode, _free_port(), str(data), str(out), crash_at, resume), nprocs=WORLD,
                             join=False, start_method="spawn")
    try:
        while not ctx.join():
            pass
    except mp.ProcessExitedException:
        if crash_at is None:
            raise
        return []
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(WORLD)]


def _data(mode: Mode, root: Path) -> Path:
    data = FAMILIES[mode.family].write_data(root / "data")
    if mode.family == "clip":  # one global micro-batch per step holds every sample of the epoch
        write_shard(data / "train-000000.tar", WORLD * B * mode.grad_accum)
    return data


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float, skip_buffers: bool = False) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if skip_buffers and ("running_" in name or "num_batches_tracked" in name):
            continue  # BatchNorm statistics: each rank's own batch on CPU (SyncBatchNorm on CUDA)
        torch.testing.assert_close(b[name], a[name], atol=atol, rtol=0, msg=name)


OPEN_CLIP_MODES = [Mode(), Mode(adapt="lora"), Mode(loss="siglip"), Mode(adapt="lora", loss="siglip"),
                   Mode(adapt="lora", lora_forward="merged")]


def _mode_id(m: Mode) -> str:
    return f"{m.adapt}-{m.loss}" + ("-merged" if m.lora_forward == "merged" else "")


@pytest.mark.parametrize("mode", OPEN_CLIP_MODES, ids=_mode_id)
def test_ddp_step_equals_one_process_on_the_doubled_batch(mode: Mode, tmp_path: Path) -> None:
    data = _data(mode, tmp_path)
    rank0, rank1 = _ddp(mode, data, tmp_path / "ddp")
    _assert_close(rank0, rank1, atol=0)  # gradients are averaged, so every rank takes the same step
    if mode.loss == "siglip":  # the loss's own scale and bias are synchronised like the model's
        assert {"loss.logit_scale", "loss.logit_bias"} <= set(rank0)
    stats = [json.loads((tmp_path / "ddp" / f"stats-rank{r}.json").read_text()) for r in range(WORLD)]
    single_task, single = _run(mode, data, tmp_path / "single", WORLD * B, D.DistInfo())
    assert abs(stats[0]["final_loss"] - single["final_loss"]) < 1e-5  # the logged loss is the global batch's
    want = single_task.checkpoint_tensors()
    init = {n: p.detach() for n, p in _task(mode, data, tmp_path / "init", _cfg(mode, B), D.DistInfo()).trainable_named()}
    assert max((want[n] - init[n]).abs().max().item() for n in want if n in init) > 5e-5  # the step moved the weights
    _assert_close(want, rank0, atol=1e-5)
    assert len((tmp_path / "ddp" / "metrics.csv").read_text().splitlines()) == mode.steps + 1  # only rank 0 writes


@pytest.mark.parametrize("mode", [Mode(grad_accum=2, steps=2), Mode(adapt="lora", loss="siglip", grad_accum=2, steps=2),
                                  Mode(adapt="lora", lora_forward="merged", grad_accum=2, steps=2)],
                         ids=["full-clip", "lora-siglip", "lora-clip-merged"])
def test_ddp_with_gradient_accumulation_keeps_ranks_identical(mode: Mode, tmp_path: Path) -> None:
    rank0, rank1 = _ddp(mode, _data(mode, tmp_path), tmp_path / "ddp")
    _assert_close(rank0, rank1, atol=0)
    stats = json.loads((tmp_path / "ddp" / "stats-rank0.json").read_text())
    assert stats["steps"] == 2 and stats["samples"] == 2 * WORLD * B * 2


def test_ddp_run_killed_and_resumed_ends_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    mode = Mode(adapt="lora", steps=4)
    data = _data(mode, tmp_path)
    full = _ddp(mode, data, tmp_path / "full")
    assert _ddp(mode, data, tmp_path / "split", crash_at=2) == []
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    resumed = _ddp(mode, data, tmp_path / "split", resume=True)
    _assert_close(full[0], resumed[0], atol=1e-6)
    _assert_close(resumed[0], resumed[1], atol=0)


def test_ddp_volume_model_ranks_stay_identical(tmp_path: Path) -> None:
    mode = Mode(family="volume", steps=2)
    rank0, rank1 = _ddp(mode, _data(mode, tmp_path), tmp_path / "ddp")
    _assert_close(rank0, rank1, atol=1e-6, skip_buffers=True)


def test_modes_are_distinct() -> None:  # guards the matrix above against a copy-paste that tests one mode twice
    assert len(set(OPEN_CLIP_MODES)) == len(OPEN_CLIP_MODES) and replace(Mode(), loss="siglip") in OPEN_CLIP_MODES
