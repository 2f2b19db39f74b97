"""The one training loop, run for every model family: metrics, determinism, resume, checkpoints,
precision and accumulation hold for the open_clip task and the volume task alike."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import FAMILIES, Family, run

import pipelines.train.loop as loop
from pipelines.train.checkpoint import METRICS_HEADER


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def data(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return family.write_data(tmp_path_factory.mktemp(f"{family.name}_data"))


def read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == METRICS_HEADER
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=atol, rtol=0, msg=name)


def test_loss_decreases_lr_schedule_and_metrics(family: Family, data: Path, tmp_path: Path) -> None:
    steps = 24
    cfg = family.config(max_steps=steps, lr=5e-3 if family.name == "volume" else 1e-3, warmup_steps=3)
    task, stats = run(family, data, tmp_path / "m", cfg, metrics=tmp_path / "steps.csv")
    rows = read_metrics(tmp_path / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    assert [int(r["epoch"]) for r in rows[:4]] == [0, 0, 0, 1]  # 3 steps per epoch in both fixtures
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(cfg.lr / 3, rel=1e-5) and lrs[2] == pytest.approx(cfg.lr, rel=1e-5)
    assert lrs[-1] < cfg.lr / 50
    assert stats["steps"] == steps and stats["samples"] == steps * cfg.batch_size
    assert stats["final_loss"] == pytest.approx(losses[-1], rel=1e-5) and stats["samples_per_s"] > 0
    # the run keeps its own copy of the metrics next to the model
    assert (tmp_path / "m" / "train_steps.csv").read_text() == (tmp_path / "steps.csv").read_text()


def test_same_seed_same_weights_other_seed_other_weights(family: Family, data: Path, tmp_path: Path) -> None:
    a, _ = run(family, data, tmp_path / "a", family.config(max_steps=4))
    b, _ = run(family, data, tmp_path / "b", family.config(max_steps=4))
    c, _ = run(family, data, tmp_path / "c", family.config(max_steps=4, seed=1))
    wa, wb, wc = family.weights(a), family.weights(b), family.weights(c)
    assert_same(wa, wb)
    assert not all(torch.equal(wa[n], wc[n]) for n in wa)


def test_resume_after_a_crash_matches_the_uninterrupted_run(family: Family, data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = family.config(max_steps=10, warmup_steps=2, checkpoint_every=4)
    full, _ = run(family, data, tmp_path / "full", cfg, metrics=tmp_path / "full.csv")

    # Crash at the start of step index 6: steps 1-6 are done and logged, the latest checkpoint is
    # step 4 (mid-epoch), so the resume must drop rows 5-6 and skip into epoch 1.
    real = loop.stable_seed

    def crash(*parts: object) -> int:
        if parts[:1] == ("step",) and parts[2] == 6:
            raise KeyboardInterrupt
        return real(*parts)

    out, metrics = tmp_path / "split", tmp_path / "split.csv"
    monkeypatch.setattr(loop, "stable_seed", crash)
    with pytest.raises(KeyboardInterrupt):
        run(family, data, out, cfg, metrics=metrics)
    monkeypatch.setattr(loop, "stable_seed", real)
    assert len(read_metrics(metrics)) == 6
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004"]

    resumed, stats = run(family, data, out, cfg, resume=True, metrics=metrics)
    assert stats["steps"] == 10 and stats["samples"] == 10 * cfg.batch_size
    assert_same(family.weights(full), family.weights(resumed), atol=1e-6)
    assert [int(r["step"]) for r in read_metrics(metrics)] == list(range(1, 11))
    # resuming a finished run trains nothing
    again, stats = run(family, data, out, cfg, resume=True, metrics=metrics)
    assert stats["steps"] == 10
    assert_same(family.weights(resumed), family.weights(again))


def test_checkpoints_are_atomic_rotated_and_complete(family: Family, data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m"
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(*a: object, **k: object) -> None:  # the second checkpoint dies half-written
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_save(*a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        run(family, data, out, family.config(max_steps=4, checkpoint_every=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-000002"]

    task, _ = run(family, data, out, family.config(max_steps=7, checkpoint_every=2))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-000006", "step-000007"]  # 2, 4, 6 + final 7 written, the last two kept, no temp dirs
    from safetensors.torch import load_file

    for name in names:
        folder = out / "checkpoints" / name
        assert set(load_file(str(folder / "trainable.safetensors"))) == set(task.checkpoint_tensors())
        opt = torch.load(folder / "optimizer.pt", weights_only=True)
        assert set(opt) == {"optimizer", "scheduler"} and opt["optimizer"]["state"]
        state = json.loads((folder / "state.json").read_text())
        assert state["step"] == int(name.split("-")[1]) and state["epoch"] == state["step"] // 3
        assert state["config"]["checkpoint_every"] == 2
    assert_same(load_file(str(out / "checkpoints" / "step-000007" / "trainable.safetensors")), family.weights(task))


def test_a_fresh_run_keeps_the_previous_run_until_its_own_first_checkpoint(family: Family, data: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out, metrics = tmp_path / "m", tmp_path / "steps.csv"
    run(family, data, out, family.config(max_steps=4, checkpoint_every=2), metrics=metrics)
    names = lambda: sorted(p.name for p in (out / "checkpoints").iterdir())  # noqa: E731
    before_ckpts, before_csv = names(), metrics.read_text()
    assert before_ckpts == ["step-000002", "step-000004"]
    real = loop.stable_seed

    def crash_at(index: int):
        def seed(*parts: object) -> int:
            if parts[:1] == ("step",) and parts[2] == index:
                raise KeyboardInterrupt
            return real(*parts)
        return seed

    monkeypatch.setattr(loop, "stable_seed", crash_at(2))  # killed before its first checkpoint (step 3)
    with pytest.raises(KeyboardInterrupt):
        run(family, data, out, family.config(max_steps=6, checkpoint_every=3, lr=1e-2), metrics=metrics)
    assert names() == before_ckpts and metrics.read_text() == before_csv  # nothing of the old run lost

    monkeypatch.setattr(loop, "stable_seed", crash_at(4))  # killed after its first checkpoint
    with pytest.raises(KeyboardInterrupt):
        run(family, data, out, family.config(max_steps=6, checkpoint_every=3, lr=1e-2), metrics=metrics)
    assert names() == ["step-000003"]  # the old run's checkpoints went with the new run's first one
    assert [int(r["step"]) for r in read_metrics(metrics)] == [1, 2, 3, 4]
    monkeypatch.setattr(loop, "stable_seed", real)
    _, stats = run(family, data, out, family.config(max_steps=6, checkpoint_every=3, lr=1e-2), resume=True, metrics=metrics)
    assert stats["steps"] == 6 and [int(r["step"]) for r in read_metrics(metrics)] == list(range(1, 7))


def test_bf16_autocast_and_grad_checkpointing(family: Family, data: Path, tmp_path: Path) -> None:
    cfg = family.config(max_steps=2, precision="bf16", grad_checkpointing=True)
    task, stats = run(family, data, tmp_path / "m", cfg)
    assert np.isfinite(stats["final_loss"]) and stats["steps"] == 2
    assert all(p.dtype == torch.float32 for p in task.parameters())  # autocast, not a cast of the weights


def test_grad_accumulation_counts_optimizer_steps(family: Family, data: Path, tmp_path: Path) -> None:
    half = family.config().batch_size // 2
    cfg = family.config(batch_size=half, grad_accum=2, max_steps=4)
    _, stats = run(family, data, tmp_path / "m", cfg, metrics=tmp_path / "steps.csv")
    assert stats["steps"] == 4 and stats["samples"] == 4 * 2 * half
    assert [int(r["epoch"]) for r in read_metrics(tmp_path / "steps.csv")] == [0, 0, 0, 1]


def test_too_little_data_for_one_step_is_refused(family: Family, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one step"):
        run(family, data, tmp_path / "m", family.config(batch_size=family.samples + 1, max_steps=1))


def test_precision_auto_is_bf16_on_a_bf16_gpu_and_fp32_on_the_cpu(monkeypatch) -> None:
    from pipelines.train.loop import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) == "fp32"  # CPU results stay those of fp32
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"


def test_adamw_implementations_agree_to_float_rounding(family: Family, data: Path, tmp_path: Path) -> None:
    # The documented tolerance of `train.adamw_impl`: after one step the three implementations agree to
    # 1e-3 of the learning rate (what one update can move a weight), and the losses of a short run stay close.
    lr = 1e-2
    runs = {impl: run(family, data, tmp_path / impl, family.config(max_steps=1, lr=lr, adamw_impl=impl))
            for impl in ("single-tensor", "foreach", "fused")}
    ref = family.weights(runs["single-tensor"][0])
    start = family.weights(family.task(data, tmp_path / "x", family.config()))
    assert any(not torch.equal(ref[n], start[n]) for n in ref)  # the step moved the weights
    for impl in ("foreach", "fused"):
        assert_same(ref, family.weights(runs[impl][0]), atol=1e-3 * lr)
    for impl in ("single-tensor", "fused"):
        run(family, data, tmp_path / f"{impl}-4", family.config(max_steps=4, lr=lr, adamw_impl=impl), metrics=tmp_path / f"{impl}.csv")
    losses = {impl: [float(r["loss"]) for r in read_metrics(tmp_path / f"{impl}.csv")] for impl in ("single-tensor", "fused")}
    # the first two losses agree to rounding; training amplifies rounding, so later ones drift (< 1% in 4 steps)
    np.testing.assert_allclose(losses["fused"][:2], losses["single-tensor"][:2], rtol=1e-4)
    np.testing.assert_allclose(losses["fused"], losses["single-tensor"], rtol=1e-2)


def test_adamw_impl_is_a_typed_knob(tmp_path: Path) -> None:
    from pipelines import params
    from pipelines.train.clip_task import ClipTrainConfig

    path = tmp_path / "params.yaml"
    path.write_text("remote_sensing:\n  train: {adamw_impl: foreach}\n")
    assert params.read(path, ClipTrainConfig, "remote_sensing", "train").adamw_impl == "foreach"
    path.write_text("remote_sensing:\n  train: {adamw_impl: fast}\n")
    with pytest.raises(params.ParamsError, match="adamw_impl"):
        params.read(path, ClipTrainConfig, "remote_sensing", "train")
