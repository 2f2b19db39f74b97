"""DDP on 2 CPU ranks (gloo) through the one loop, for every model family.

open_clip: one step on 2 ranks equals one single-process step on the union of their batches.
volume: BatchNorm normalises per rank on CPU, so the check is that ranks stay identical.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from train_fixtures import FAMILIES, run, tiny_clip, write_shard

from pipelines.train import distributed as D
from pipelines.train.loop import fit

WORLD, B = 2, 6
pytestmark = pytest.mark.slow


def _cfg(family: str, batch_size: int):
    # No warm-up, so the step runs at the full lr. Adam's first step is about lr * sign(grad), which
    # turns float noise in near-zero gradients (e.g. attention key biases) into ~1e-2 * lr; a step
    # without the other rank's negatives differs by ~2 * lr = 2e-4, far beyond the 1e-5 tolerance.
    return FAMILIES[family].config(batch_size=batch_size, max_steps=1 if family == "clip" else 2, lr=1e-4, warmup_steps=0)


def _worker(rank: int, family: str, port: int, data: str, out: str, batch: int) -> None:
    torch.set_num_threads(1)
    # what torchrun would set
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    fam, cfg = FAMILIES[family], _cfg(family, batch)
    info = D.init_distributed()
    try:
        task = fam.task(Path(data), Path(out), cfg, info=info)
        stats = fit(task, cfg, Path(out), info, metrics_path=Path(out) / "metrics.csv")
        save_file(task.checkpoint_tensors(), str(Path(out) / f"rank{rank}.safetensors"))
    finally:
        D.cleanup(info)
    (Path(out) / f"stats-rank{rank}.json").write_text(json.dumps(stats))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ddp_ranks_agree_and_only_rank0_writes(family: str, tmp_path: Path) -> None:
    fam = FAMILIES[family]
    data = fam.write_data(tmp_path / "data")
    if family == "clip":  # one global batch holds every sample, whatever order each rank count reads them in
        write_shard(data / "train-000000.tar", WORLD * B)
    batch = B if family == "clip" else 3
    ddp_out = tmp_path / "ddp"
    mp.spawn(_worker, args=(family, _free_port(), str(data), str(ddp_out), batch), nprocs=WORLD, join=True)
    stats = [json.loads((ddp_out / f"stats-rank{r}.json").read_text()) for r in range(WORLD)]
    steps = _cfg(family, batch).max_steps
    assert all(s["steps"] == steps and s["samples"] == steps * WORLD * batch for s in stats)
    rank0, rank1 = (load_file(str(ddp_out / f"rank{r}.safetensors")) for r in range(WORLD))
    for name in rank0:  # gradients are averaged, so every rank takes the same step
        if "running_" in name or "num_batches_tracked" in name:
            continue  # BatchNorm statistics: each rank's own batch on CPU (SyncBatchNorm on CUDA)
        torch.testing.assert_close(rank1[name], rank0[name], atol=1e-6, rtol=0, msg=name)
    assert len((ddp_out / "metrics.csv").read_text().splitlines()) == steps + 1
    assert sorted(p.name for p in (ddp_out / "checkpoints").iterdir()) == [f"step-{steps:06d}"]

    if family == "clip":  # and the step equals one process on the doubled batch
        single, single_stats = run(fam, data, tmp_path / "single", _cfg(family, WORLD * batch))
        assert abs(stats[0]["final_loss"] - single_stats["final_loss"]) < 1e-5  # the logged loss is the rank mean
        want = fam.weights(single)
        init = {n: p.detach() for n, p in tiny_clip().model.named_parameters()}
        assert max((want[n] - init[n]).abs().max().item() for n in want if n in init) > 5e-5  # it moved
        for name in want:
            torch.testing.assert_close(rank0[name], want[name], atol=1e-5, rtol=0, msg=name)
