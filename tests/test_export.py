"""pipelines.export.clip: stock open_clip folders, merged exports, model cards, checkpoint safety."""
from __future__ import annotations

import copy
import json
import pickle

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from pipelines.export import clip as export_mod
from pipelines.export.clip import export, render_card
from pipelines.models.adapt import AdaptConfig, prepare, save_trainable, write_adapt_spec
from pipelines.models.clip import ModelSpec, load_model, model_config_of, preprocess_config_of, save_open_clip_dir

TOL = 1e-5
TEXTS = ["an aerial photo of a harbour", "terraced fields", "a motorway junction"]

CARD = {
    "domain": "aerial",
    "description": "Aerial imagery adaptation of a tiny CLIP (test).",
    "data": {
        "summary": {"pairs": 1200, "dropped": {"dedup": 30, "nsfw": 0}},
        "sources": ["OpenAerialMap", "OSM captions"],
        "licences": ["CC-BY-4.0", "ODbL-1.0"],
    },
    "training": {"epochs": 3, "lr": 1e-4, "batch_size": 64},
    "metrics": {
        "base": {"zero_shot": {"top1": 0.25, "top5": 0.6}, "retrieval": {"i2t_r@1": 0.1}},
        "adapted": {"zero_shot": {"top1": 0.5, "top5": 0.75}, "retrieval": {"i2t_r@1": 0.3}},
    },
    "prompt_templates": ["an aerial photo of {}.", "a satellite image of {}."],
    "limitations": ["Trained on a few thousand pairs.", "Europe only."],
}


@pytest.fixture()
def base_spec(tiny, tmp_path) -> ModelSpec:
    """Base weights on disk so that load_trained rebuilds exactly the model that was adapted."""
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    return ModelSpec(name="domainfm-tiny", pretrained=str(path))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _trained_dir(base_spec: ModelSpec, tmp_path, cfg: AdaptConfig):
    model = prepare(load_model(base_spec).model, cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif p.requires_grad:
                p.add_(0.02)  # logit_scale / projections / tower weights move off the base
    model.eval()
    out = tmp_path / "train"
    write_adapt_spec(out, base_spec, cfg)
    save_trainable(model, out / "trainable.safetensors")
    return model, out


def _stock_embeddings(folder, images):
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(folder))
    tokenizer = open_clip.get_tokenizer("local-dir:" + str(folder))
    model.eval()
    with torch.no_grad():
        return model, preprocess, model.encode_image(images), model.encode_text(tokenizer(TEXTS))


def test_lora_export_loads_in_stock_open_clip(base_spec, tiny, images, tmp_path) -> None:
    cfg = AdaptConfig(mode="lora", lora_r=4)
    adapted, trained = _trained_dir(base_spec, tmp_path, cfg)
    with torch.no_grad():
        want_img, want_txt = adapted.encode_image(images), adapted.encode_text(tiny.tokenizer(TEXTS))
        base_img = tiny.model.eval().encode_image(images)
    assert (want_img - base_img).abs().max() > 1e-2  # the adaptation is visible

    out = tmp_path / "exports" / "aerial"
    export(trained, out, CARD)

    model, preprocess, img, txt = _stock_embeddings(out, images)
    assert type(model) is open_clip.CLIP
    assert (img - want_img).abs().max() <= TOL
    assert (txt - want_txt).abs().max() <= TOL
    assert torch.equal(model.logit_scale, adapted.logit_scale.detach())
    assert tuple(model.visual.preprocess_cfg["size"]) == (64, 64)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter", "open_clip_config.json",
                                                     "open_clip_model.safetensors"]
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and (out / "adapter" / "adapter_model.safetensors").is_file()
    # in one order whatever the process's string hashing (peft writes them from a set): reruns write the same bytes
    assert len(adapter["target_modules"]) > 3 and adapter["target_modules"] == sorted(adapter["target_modules"])
    assert not list(out.parent.glob(".aerial.*"))  # no temp folders left behind


def test_full_export_has_no_adapter(base_spec, tiny, images, tmp_path) -> None:
    adapted, trained = _trained_dir(base_spec, tmp_path, AdaptConfig(mode="full", towers=["visual"]))
    out = tmp_path / "full"
    export(trained, out, {"domain": "aerial"})
    _, _, img, txt = _stock_embeddings(out, images)
    with torch.no_grad():
        assert (img - adapted.encode_image(images)).abs().max() <= TOL
        assert (txt - adapted.encode_text(tiny.tokenizer(TEXTS))).abs().max() <= TOL
    assert not (out / "adapter").exists()
    assert "_not provided_" in (out / "README.md").read_text()


def test_model_card_tables(base_spec, tmp_path) -> None:
    _, trained = _trained_dir(base_spec, tmp_path, AdaptConfig(mode="lora", lora_r=2))
    out = tmp_path / "aerial"
    export(trained, out, CARD)
    card = (out / "README.md").read_text()
    assert card.startswith("# domainfm: aerial")
    assert "| Metric | Base | Adapted | Δ |" in card
    assert "| top1 | 0.2500 | 0.5000 | +0.2500 |" in card
    assert "| i2t_r@1 | 0.1000 | 0.3000 | +0.2000 |" in card
    assert "| dropped/dedup | 30 |" in card
    for text in ("OpenAerialMap", "ODbL-1.0", "`an aerial photo of {}.`", "Europe only.", "| lr | 0.0001 |"):
        assert text in card
    assert "open_clip.create_model_and_transforms('local-dir:exports/aerial')" in card


def test_metric_only_in_one_side_has_no_delta(base_spec) -> None:
    card = render_card({"metrics": {"base": {"zero_shot": {"top1": 0.1}}, "adapted": {"zero_shot": {"top1": 0.2, "new": 0.3}}}},
                       base_spec, AdaptConfig(mode="frozen"), "x")
    assert "| new | – | 0.3000 | – |" in card
    assert "adapter/" not in card


def test_failed_export_keeps_previous_folder(base_spec, tmp_path, monkeypatch) -> None:
    _, trained = _trained_dir(base_spec, tmp_path, AdaptConfig(mode="frozen"))
    out = tmp_path / "aerial"
    export(trained, out, {"domain": "first"})
    assert "first" in (out / "README.md").read_text()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod, "render_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export(trained, out, {"domain": "second"})
    assert "first" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    monkeypatch.undo()
    export(trained, out, {"domain": "second"})  # a successful re-export replaces the folder
    assert "second" in (out / "README.md").read_text()


# ---------------------------------------------------------------------------- pretrained by path


def _perturbed(tiny) -> open_clip.CLIP:
    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_saved_dir_loads_by_local_dir_and_by_checkpoint_path(tiny, tmp_path) -> None:
    model = _perturbed(tiny)
    folder = tmp_path / "pretrained"
    save_open_clip_dir(model, model_config_of(ModelSpec(name="domainfm-tiny")), folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["embed_dim"] == 64 and cfg["preprocess_cfg"]["size"] == [64, 64]

    by_dir = load_model(ModelSpec(name=f"local-dir:{folder}")).model
    by_file = load_model(ModelSpec(name="domainfm-tiny", pretrained=str(folder / "open_clip_model.safetensors"))).model
    pt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict()}, pt)
    by_pt = load_model(ModelSpec(name="domainfm-tiny", pretrained=str(pt))).model
    want = model.state_dict()
    for loaded in (by_dir, by_file, by_pt):
        got = loaded.state_dict()
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert model_config_of(ModelSpec(name=f"local-dir:{folder}")) == cfg["model_cfg"]


_UNPICKLED = []


class _Payload:
    """Stands for an arbitrary object in a pickle; unpickling it would run code."""

    def __reduce__(self):
        return (_UNPICKLED.append, ("code ran",))


def test_pt_checkpoint_with_arbitrary_object_is_refused(tiny, tmp_path) -> None:
    pt = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny.model.state_dict(), "extra": _Payload()}, pt)
    with pytest.raises(pickle.UnpicklingError):
        load_model(ModelSpec(name="domainfm-tiny", pretrained=str(pt)))
    assert _UNPICKLED == []


def test_preprocess_config_defaults_for_bare_models(tiny) -> None:
    bare = open_clip.create_model("domainfm-tiny")
    del bare.visual.preprocess_cfg
    cfg = preprocess_config_of(bare)
    assert cfg["size"] == [64, 64]  # taken from the vision tower
    assert cfg["mean"] == list(open_clip.OPENAI_DATASET_MEAN) and cfg["interpolation"] == "bicubic"
    assert preprocess_config_of(tiny.model)["size"] == [64, 64]


def test_model_config_of_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown"):
        model_config_of(ModelSpec(name="no-such-model"))


def test_export_ships_the_hubness_bank_embedded_by_the_exported_weights(base_spec, tiny, tmp_path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from pipelines.evaluate.analyses import Bank
    from pipelines.evaluate.hubness import HubnessConfig
    from pipelines.infer.hubness import read_bank

    adapted, trained = _trained_dir(base_spec, tmp_path, AdaptConfig(mode="lora", lora_r=4))
    rng = np.random.default_rng(3)
    pngs = []
    for _ in range(3):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    out = tmp_path / "banked"
    export(trained, out, {"domain": "aerial", "hubness_bank": 3}, bank=Bank(pngs, TEXTS, 10), hubness=HubnessConfig(beta=12.0))
    bank = read_bank(out)
    model, preprocess, _, want_txt = _stock_embeddings(out, torch.zeros(1, 3, 64, 64))
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in pngs])
        want_img = model.encode_image(pixels, normalize=True)
    assert bank.beta == bank.beta_gallery == 12.0
    np.testing.assert_allclose(bank.text, torch.nn.functional.normalize(want_txt, dim=-1).numpy(), atol=TOL)
    np.testing.assert_allclose(bank.image, want_img.numpy(), atol=TOL)
    assert "--correction qb_norm" in (out / "README.md").read_text()
    export(trained, tmp_path / "plain", {"domain": "aerial"})
    assert read_bank(tmp_path / "plain") is None
