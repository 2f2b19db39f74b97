"""The volume family's task: its data reader, report splitting, staged schedule, model folder and params."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import FAMILIES, run

from pipelines import params as P
from pipelines.io import volume_shards as DS
from pipelines.train.volume_task import VolumeAdaptConfig, VolumeTrainConfig, choose_text

VOLUME = FAMILIES["volume"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return VOLUME.write_data(tmp_path_factory.mktemp("volume_data"))


def _losses(path: Path) -> list[float]:
    with path.open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_dataset_reader_is_tolerant(data: Path, tmp_path: Path) -> None:
    index = DS.split_index(data, "train")
    assert len(index) == 12
    s = index[0]
    assert s.volume.shape == (1, 16, 16, 12) and s.volume.dtype.name == "float32"
    assert set(s.organ_sections) == {"liver", "kidneys", "lungs"} and s.study_id.startswith("study")
    texts = {choose_text(s, 0, e) for e in range(30)}
    assert s.findings in texts and len(texts) > 2  # report splitting: full findings and organ sections
    assert choose_text(s, 0, 3) == choose_text(s, 0, 3)  # seeded per sample/epoch
    (tmp_path / "phenotypes.json").write_text('{"phenotypes": [{"id": "x"}, {"id": "y"}]}')
    assert DS.read_phenotypes(tmp_path) == ["x", "y"]
    (tmp_path / "phenotypes.json").write_text('["p", "q"]')
    assert DS.read_phenotypes(tmp_path) == ["p", "q"]


def test_model_folder_is_written(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    run(VOLUME, data, out, VOLUME.config(max_steps=2))
    for name in ("config.json", "model.safetensors", "tokenizer", "text_config", "train_steps.csv"):
        assert (out / name).exists(), name


def test_staged_trains_phenotypes_first_then_text(data: Path, tmp_path: Path) -> None:
    init = tmp_path / "init"
    run(VOLUME, data, init, VOLUME.config(max_steps=1, lr=1e-12, warmup_steps=0))  # ~ the initial weights
    staged, multi = tmp_path / "staged", tmp_path / "multi"
    run(VOLUME, data, staged, VOLUME.config(max_steps=3), adapt=VolumeAdaptConfig(schedule="staged", stage1_steps=3))
    run(VOLUME, data, multi, VOLUME.config(max_steps=3), adapt=VolumeAdaptConfig(schedule="multitask"))
    w0, ws, wm = (load_file(str(p / "model.safetensors")) for p in (init, staged, multi))
    text_key = next(k for k in w0 if k.startswith("text.") and "word_embeddings" in k)
    vis_key = "visual.stages.0.0.conv1.conv.weight"
    assert torch.allclose(ws[text_key], w0[text_key], atol=1e-6)   # phase 1: text tower untouched
    assert not torch.allclose(ws[vis_key], w0[vis_key], atol=1e-6)  # ... image tower learns phenotypes
    assert not torch.allclose(wm[text_key], w0[text_key], atol=1e-6)  # multitask: contrastive from step 1
    # staged phase 1 is BCE only (<= ~ln 2 for a near-uniform head); multitask adds InfoNCE (~ln 4)
    assert _losses(staged / "train_steps.csv")[0] < _losses(multi / "train_steps.csv")[0]


def test_params_sections_hold_objectives_and_loop_apart(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ct": {"adapt": {"schedule": "multitask", "contrastive_weight": 0.5},
                                             "train": {"batch_size": 2, "lr": 0.01}}}))
    adapt, train = P.read(params, VolumeAdaptConfig, "ct", "adapt"), P.read(params, VolumeTrainConfig, "ct", "train")
    assert (adapt.schedule, adapt.contrastive_weight, train.batch_size, train.lr) == ("multitask", 0.5, 2, 0.01)
    assert train.precision == "auto" and train.grad_checkpointing  # the real-size defaults (auto: bf16 on the GPU)
    params.write_text(yaml.safe_dump({"ct": {"adapt": {"lr": 0.01}, "train": {"schedule": "staged"}}}))
    with pytest.raises(P.ParamsError, match=r"ct\.adapt\.lr: unknown key"):
        P.read(params, VolumeAdaptConfig, "ct", "adapt")
    with pytest.raises(P.ParamsError, match=r"ct\.train\.schedule: unknown key"):
        P.read(params, VolumeTrainConfig, "ct", "train")
