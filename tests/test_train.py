"""The training loop on the shipped tiny model and a synthetic colour-word WebDataset shard."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file

import pipelines.train as train_mod
from pipelines.data import count_samples, make_train_loader
from pipelines.models import ModelSpec, load_model
from pipelines.train import METRICS_HEADER, TrainConfig, train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 20),
           "white": (240, 240, 240), "black": (15, 15, 15)}


def write_shard(path: Path, n: int, seed: int = 0) -> str:
    """n noisy solid-colour 64x64 PNGs captioned with their colour (learnable in a few dozen steps)."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    with wds.TarWriter(str(path)) as sink:
        for i in range(n):
            name = names[i % len(names)]
            pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            sink.write({"__key__": f"s{i:05d}", "png": buf.getvalue(), "txt": f"a {name} square",
                        "json": json.dumps({"caption_variants": {}})})
    return str(path)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return [write_shard(tmp_path_factory.mktemp("data") / "train-000000.tar", 48)]


def tiny(seed: int = 0, freeze_token_embedding: bool = True):
    torch.manual_seed(seed)
    lm = load_model(ModelSpec("domainfm-tiny"))
    # the 49408 x 128 token table is 88% of the tiny model; freezing it keeps checkpoints and tests fast
    lm.model.token_embedding.weight.requires_grad_(not freeze_token_embedding)
    return lm


def run(shards: list[str], out: Path, cfg: TrainConfig, resume: bool = False, metrics: bool = True, model=None):
    lm = tiny()
    m = lm.model if model is None else model
    stats = train(m, lm.preprocess_train, lm.tokenizer, shards, cfg, out, resume=resume,
                  metrics_path=out / "metrics.csv" if metrics else None)
    return m, stats


def read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == METRICS_HEADER
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_loss_decreases_and_metrics(shards: list[str], tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=16, max_steps=30, lr=1e-3, warmup_steps=3, checkpoint_every=0)
    lm = tiny(freeze_token_embedding=False)  # the whole model this time
    _, stats = run(shards, tmp_path, cfg, model=lm.model)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert [int(r["epoch"]) for r in rows[:4]] == [0, 0, 0, 1]  # 48 samples / 16 = 3 steps per epoch
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    # warm-up then cosine decay to (almost) zero
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[2] == pytest.approx(1e-3) and lrs[-1] < 1e-5
    assert stats["steps"] == 30 and stats["samples"] == 30 * 16
    assert stats["final_loss"] == pytest.approx(losses[-1], rel=1e-5)
    assert stats["samples_per_s"] > 0


def test_deterministic_same_seed(shards: list[str], tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=16, max_steps=4, checkpoint_every=0)
    a, _ = run(shards, tmp_path / "a", cfg, metrics=False)
    b, _ = run(shards, tmp_path / "b", cfg, metrics=False)
    c, _ = run(shards, tmp_path / "c", TrainConfig(batch_size=16, max_steps=4, checkpoint_every=0, seed=1), metrics=False)
    sa, sb, sc = trainable_state(a), trainable_state(b), trainable_state(c)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert not all(torch.equal(sa[n], sc[n]) for n in sa)  # the seed does change the data order


def test_resume_matches_uninterrupted(shards: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(batch_size=16, max_steps=10, warmup_steps=2, checkpoint_every=4)
    full, _ = run(shards, tmp_path / "full", cfg)

    # Crash at the start of step index 6: steps 1-6 done and logged, latest checkpoint is step 4
    # (mid-epoch: epoch 1, one batch in), so the resume must drop rows 5-6 and skip one batch.
    real_seed = train_mod._step_seed

    def crash(seed: int, step: int) -> int:
        if step == 6:
            raise KeyboardInterrupt
        return real_seed(seed, step)

    out = tmp_path / "split"
    monkeypatch.setattr(train_mod, "_step_seed", crash)
    with pytest.raises(KeyboardInterrupt):
        run(shards, out, cfg)
    assert len(read_metrics(out / "metrics.csv")) == 6
    monkeypatch.setattr(train_mod, "_step_seed", real_seed)

    resumed, stats = run(shards, out, cfg, resume=True)
    assert stats["steps"] == 10 and stats["samples"] == 160
    sf, sr = trainable_state(full), trainable_state(resumed)
    for name in sf:
        torch.testing.assert_close(sr[name], sf[name], atol=1e-6, rtol=0)
    assert [int(r["step"]) for r in read_metrics(out / "metrics.csv")] == list(range(1, 11))
    # and the written outputs agree as well
    final_full, final_resumed = load_file(str(tmp_path / "full" / "trainable.safetensors")), load_file(str(out / "trainable.safetensors"))
    assert final_full.keys() == final_resumed.keys()
    # resuming a finished run is a no-op
    again, stats = run(shards, out, cfg, resume=True)
    assert stats["steps"] == 10
    torch.testing.assert_close(trainable_state(again)["logit_scale"], sf["logit_scale"], atol=0, rtol=0)


def test_checkpoint_files(shards: list[str], tmp_path: Path) -> None:
    lm = tiny()
    for p in lm.model.visual.parameters():  # partial training: only these names may be stored
        p.requires_grad_(False)
    frozen_before = {n: p.detach().clone() for n, p in lm.model.visual.named_parameters()}
    cfg = TrainConfig(batch_size=16, max_steps=7, checkpoint_every=2)
    model, _ = run(shards, tmp_path, cfg, model=lm.model)

    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step-000006", "step-000007"]  # 2, 4, 6 + final 7 written; last two kept, no temp dirs
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    assert expected and not any(n.startswith("visual.") for n in expected)
    for ck in ckpts:
        d = tmp_path / "checkpoints" / ck
        assert set(load_file(str(d / "trainable.safetensors"))) == expected
        opt = torch.load(d / "optimizer.pt", weights_only=True)
        assert set(opt) == {"optimizer", "scheduler"} and opt["optimizer"]["state"]
        state = json.loads((d / "state.json").read_text())
        assert state["step"] == int(ck.split("-")[1]) and state["config"]["checkpoint_every"] == 2
        assert state["epoch"] == state["step"] // 3
    final = load_file(str(tmp_path / "trainable.safetensors"))
    assert set(final) == expected
    assert torch.equal(final["text_projection"], model.text_projection.detach())
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.visual.named_parameters())


def test_siglip_owns_bias_and_checkpoints_it(shards: list[str], tmp_path: Path) -> None:
    _, stats = run(shards, tmp_path, TrainConfig(loss="siglip", batch_size=16, max_steps=3, lr=1e-2, warmup_steps=1))
    saved = load_file(str(tmp_path / "trainable.safetensors"))
    assert {"loss.logit_scale", "loss.logit_bias"} <= set(saved)
    assert saved["loss.logit_bias"].item() != -10.0  # it was optimised
    assert np.isfinite(stats["final_loss"])


def test_bf16_and_grad_checkpointing_run_on_cpu(shards: list[str], tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=16, max_steps=2, precision="bf16", grad_checkpointing=True, checkpoint_every=0)
    model, stats = run(shards, tmp_path, cfg)
    assert np.isfinite(stats["final_loss"]) and stats["steps"] == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast of the weights
    assert model.visual.transformer.grad_checkpointing


def test_grad_accumulation(shards: list[str], tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=8, grad_accum=2, max_steps=4, checkpoint_every=0)
    _, stats = run(shards, tmp_path, cfg)
    assert stats["steps"] == 4 and stats["samples"] == 4 * 16
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 0, 0, 1]  # 48 / (8 x 2) = 3 optimizer steps per epoch


def test_loader_splits_ranks_disjointly_and_resumes(tmp_path: Path) -> None:
    shard_list = [write_shard(tmp_path / f"train-{i:06d}.tar", 20, seed=i) for i in range(3)]
    assert count_samples(shard_list) == [20, 20, 20]
    ident = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32).mean(axis=(0, 1)))  # noqa: E731
    tok = lambda texts: torch.tensor([[hash(t) % 1000] for t in texts])  # noqa: E731

    def epoch(rank: int, world: int, workers: int = 0, skip: int = 0, ep: int = 0) -> list[torch.Tensor]:
        loader, steps = make_train_loader(shard_list, ident, tok, 4, 0, ep, workers, rank, world, skip_batches=skip)
        batches = [imgs for imgs, _ in loader]
        assert len(batches) == steps - skip
        return batches

    r0, r1 = epoch(0, 2), epoch(1, 2)
    assert len(r0) == len(r1) == 60 // 8  # same step count on every rank
    rows0 = {tuple(x.tolist()) for b in r0 for x in b}
    rows1 = {tuple(x.tolist()) for b in r1 for x in b}
    assert len(rows0) == 28 and not rows0 & rows1  # disjoint, no repeats within an epoch
    # deterministic, epoch-dependent, resumable mid-epoch
    assert all(torch.equal(x, y) for x, y in zip(epoch(0, 1), epoch(0, 1)))
    assert not all(torch.equal(x, y) for x, y in zip(epoch(0, 1), epoch(0, 1, ep=1)))
    full = epoch(0, 1, workers=2)
    assert all(torch.equal(x, y) for x, y in zip(full[5:], epoch(0, 1, workers=2, skip=5)))
