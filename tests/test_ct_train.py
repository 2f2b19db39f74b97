"""CT trainer on tiny fixture shards: learning, schedules, resume equivalence, checkpoint safety."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from domains.ct import dataset as DS
from domains.ct import train as CT
from domains.ct.model import CTModelConfig

MODEL = CTModelConfig(input_size=[16, 16, 12], image_width=4, embed_dim=16, text_hidden=32, text_layers=1,
                      text_heads=2, vocab_size=150, context_length=32)


def _cfg(**kw) -> CT.CTTrainConfig:
    base = dict(batch_size=4, max_steps=6, lr=3e-3, warmup_steps=1, precision="fp32", grad_checkpointing=False,
                checkpoint_every=0, schedule="multitask")
    return CT.CTTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ct_curated")
    DS.write_synthetic_shards(out, n=16, size=(16, 16, 12), seed=0, test_fraction=0.25)
    return out


def _losses(path: Path) -> list[float]:
    with path.open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_dataset_reader_is_tolerant(data, tmp_path):
    index = DS.split_index(data, "train")
    assert len(index) == 12
    s = index[0]
    assert s.volume.shape == (1, 16, 16, 12) and s.volume.dtype.name == "float32"
    assert set(s.organ_sections) == {"liver", "kidneys", "lungs"} and s.study_id.startswith("study")
    texts = {DS.choose_text(s, 0, e) for e in range(30)}
    assert s.findings in texts and len(texts) > 2  # report splitting: full findings and organ sections
    assert DS.choose_text(s, 0, 3) == DS.choose_text(s, 0, 3)  # seeded per sample/epoch
    (tmp_path / "phenotypes.json").write_text('{"phenotypes": [{"id": "x"}, {"id": "y"}]}')
    assert DS.read_phenotypes(tmp_path) == ["x", "y"]
    (tmp_path / "phenotypes.json").write_text('["p", "q"]')
    assert DS.read_phenotypes(tmp_path) == ["p", "q"]


def test_loss_decreases_and_outputs(data, tmp_path):
    out = tmp_path / "m"
    stats = CT.train_ct(data, out, MODEL, _cfg(max_steps=18, lr=5e-3, grad_checkpointing=True), metrics_path=tmp_path / "steps.csv")
    losses = _losses(tmp_path / "steps.csv")
    assert stats["steps"] == 18 and len(losses) == 18
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    for name in ("config.json", "model.safetensors", "tokenizer", "text_config", "train_steps.csv"):
        assert (out / name).exists(), name
    with (out / "train_steps.csv").open() as f:
        assert next(csv.reader(f)) == ["step", "epoch", "loss", "lr", "samples_per_s"]


def test_staged_trains_phenotypes_first_then_text(data, tmp_path):
    init = tmp_path / "init"
    CT.train_ct(data, init, MODEL, _cfg(max_steps=1, lr=1e-12, warmup_steps=0))  # ~ the initial weights
    staged = tmp_path / "staged"
    CT.train_ct(data, staged, MODEL, _cfg(schedule="staged", stage1_steps=3, max_steps=3))
    multi = tmp_path / "multi"
    CT.train_ct(data, multi, MODEL, _cfg(max_steps=3))
    w0, ws, wm = _weights(init), _weights(staged), _weights(multi)
    text_key = next(k for k in w0 if k.startswith("text.") and "word_embeddings" in k)
    vis_key = "visual.stages.0.0.conv1.conv.weight"
    assert torch.allclose(ws[text_key], w0[text_key], atol=1e-6)   # phase 1: text tower untouched
    assert not torch.allclose(ws[vis_key], w0[vis_key], atol=1e-6)  # ... image tower learns phenotypes
    assert not torch.allclose(wm[text_key], w0[text_key], atol=1e-6)  # multitask: contrastive from step 1
    # staged phase 1 is BCE only (<= ~ln 2 for a near-uniform head); multitask adds InfoNCE (~ln 4)
    assert _losses(staged / "train_steps.csv")[0] < _losses(multi / "train_steps.csv")[0]


def test_resume_matches_uninterrupted_run(data, tmp_path, monkeypatch):
    cfg = _cfg(schedule="staged", stage1_steps=2, max_steps=6, checkpoint_every=2, grad_accum=1, batch_size=3)
    full = tmp_path / "full"
    CT.train_ct(data, full, MODEL, cfg)

    broken = tmp_path / "broken"
    calls = {"n": 0}
    real = DS.phenotype_targets

    def crash_on_step_4(*a, **k):  # one call per micro-batch: dies inside step 4 (checkpoints at 2)
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(DS, "phenotype_targets", crash_on_step_4)
    with pytest.raises(KeyboardInterrupt):
        CT.train_ct(data, broken, MODEL, cfg)
    monkeypatch.setattr(DS, "phenotype_targets", real)
    assert [p.name for p in (broken / "checkpoints").iterdir()] == ["step-000002"]
    assert not (broken / "model.safetensors").exists()
    CT.train_ct(data, broken, MODEL, cfg, resume=True)

    a, b = _weights(full), _weights(broken)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [int(r[0]) for r in csv.reader((broken / "train_steps.csv").open()) if r[0] != "step"]
    assert steps == [1, 2, 3, 4, 5, 6]  # rows past the checkpoint were dropped, none duplicated


def test_checkpoint_write_is_atomic_and_fresh_runs_start_clean(data, tmp_path, monkeypatch):
    out = tmp_path / "m"
    cfg = _cfg(max_steps=4, checkpoint_every=2)
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(*a, **k):  # the second checkpoint dies half-written
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_save(*a, **k)

    monkeypatch.setattr(CT.torch, "save", failing_save)
    with pytest.raises(OSError):
        CT.train_ct(data, out, MODEL, cfg)
    monkeypatch.setattr(CT.torch, "save", real_save)
    finished = [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert finished == ["step-000002"]  # the broken step-4 checkpoint is not visible under its name
    state = (out / "checkpoints" / "step-000002" / "state.json").read_text()
    assert '"step": 2' in state
    # a fresh (non-resume) run must not leave old checkpoints for a later resume
    CT.train_ct(data, out, MODEL, _cfg(max_steps=2))
    assert [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-000002"]
    # retention: only the last two checkpoints are kept
    CT.train_ct(data, out, MODEL, _cfg(max_steps=6, checkpoint_every=1))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000005", "step-000006"]


def test_params_split_objectives_into_adapt_and_refuse_misplaced_keys(tmp_path) -> None:
    import yaml

    from domains.ct.train import configs_from_params

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ct": {"base_model": {"embed_dim": 32}, "adapt": {"schedule": "multitask", "contrastive_weight": 0.5},
                                             "train": {"batch_size": 2, "lr": 0.01}}}))
    model_cfg, cfg = configs_from_params(params)
    assert (model_cfg.embed_dim, cfg.schedule, cfg.contrastive_weight, cfg.batch_size, cfg.lr) == (32, "multitask", 0.5, 2, 0.01)
    params.write_text(yaml.safe_dump({"ct": {"adapt": {"lr": 0.01}, "train": {"schedule": "staged"}}}))
    with pytest.raises(ValueError, match="Misplaced: lr, schedule"):
        configs_from_params(params)
