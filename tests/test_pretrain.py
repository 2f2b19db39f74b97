"""The demo's base model: reproducible from its seed, saved in open_clip's local-dir format."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from pipelines.models.clip import ModelSpec, load_model
from pipelines.pretrain.pretrain import PretrainConfig, pretrain
from pipelines.train.clip_task import ClipTrainConfig

CFG = PretrainConfig(n_samples=96, train=ClipTrainConfig(batch_size=32, epochs=1, warmup_steps=1, checkpoint_every=0))


def test_same_seed_same_weights_whatever_the_global_rng(tmp_path):
    torch.manual_seed(123)
    pretrain(CFG, tmp_path / "a", tmp_path / "work_a")
    torch.manual_seed(456)  # a different global RNG state must not change the result
    pretrain(CFG, tmp_path / "b", tmp_path / "work_b")
    a = load_file(tmp_path / "a" / "open_clip_model.safetensors")
    b = load_file(tmp_path / "b" / "open_clip_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_base_loads_through_local_dir_and_differs_from_random_init(tmp_path):
    pretrain(CFG, tmp_path / "base", tmp_path / "work")
    loaded = load_model(ModelSpec(f"local-dir:{tmp_path / 'base'}"))
    saved = load_file(tmp_path / "base" / "open_clip_model.safetensors")
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    torch.manual_seed(0)
    fresh = load_model(ModelSpec("domainfm-tiny")).model.state_dict()
    assert not torch.equal(fresh["visual.conv1.weight"], state["visual.conv1.weight"])  # training moved the weights
