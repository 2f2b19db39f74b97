"""One DDP step on 2 CPU ranks (gloo) equals one single-process step on the union of their batches."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from pipelines.models import ModelSpec, load_model
from pipelines.train import TrainConfig, train

WORLD, B = 2, 6


def _cfg(batch_size: int) -> TrainConfig:
    # No warm-up, so the step runs at the full lr. Adam's first step is about lr * sign(grad), which
    # turns float noise in near-zero gradients (e.g. attention key biases) into ~1e-2 * lr; a step
    # without the other rank's negatives differs by ~2 * lr = 2e-4, far beyond the 1e-5 tolerance.
    return TrainConfig(batch_size=batch_size, max_steps=1, lr=1e-4, warmup_steps=0, checkpoint_every=0)


def _run(shards: list[str], out: Path, cfg: TrainConfig) -> dict:
    torch.manual_seed(0)  # same initial weights in every process
    lm = load_model(ModelSpec("domainfm-tiny"))
    return train(lm.model, lm.preprocess_train, lm.tokenizer, shards, cfg, out, metrics_path=out / "metrics.csv")


def _ddp_worker(rank: int, port: int, shards: list[str], out: str) -> None:
    torch.set_num_threads(1)
    # what torchrun would set
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    stats = _run(shards, Path(out), _cfg(B))
    (Path(out) / f"stats-rank{rank}.json").write_text(json.dumps(stats))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_step_equals_single_process_big_batch(tmp_path: Path) -> None:
    from test_train import write_shard  # the synthetic colour shard

    shards = [write_shard(tmp_path / "train-000000.tar", WORLD * B)]
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"

    mp.spawn(_ddp_worker, args=(_free_port(), shards, str(ddp_out)), nprocs=WORLD, join=True)
    single = _run(shards, single_out, _cfg(WORLD * B))

    ddp_stats = [json.loads((ddp_out / f"stats-rank{r}.json").read_text()) for r in range(WORLD)]
    assert all(s["steps"] == 1 and s["samples"] == WORLD * B for s in ddp_stats)
    # the logged loss is the rank mean, i.e. the loss on the global batch
    assert abs(ddp_stats[0]["final_loss"] - single["final_loss"]) < 1e-5

    got = load_file(str(ddp_out / "trainable.safetensors"))
    want = load_file(str(single_out / "trainable.safetensors"))
    assert got.keys() == want.keys()
    torch.manual_seed(0)
    init = dict(load_model(ModelSpec("domainfm-tiny")).model.named_parameters())
    moved = max((want[n] - init[n].detach()).abs().max().item() for n in want)
    assert moved > 5e-5  # the step moved weights well beyond the tolerance below
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=0, msg=name)
    # only rank 0 writes outputs
    assert len((ddp_out / "metrics.csv").read_text().splitlines()) == 2
    assert sorted(p.name for p in (ddp_out / "checkpoints").iterdir()) == ["step-000001"]
