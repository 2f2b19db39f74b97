"""Forgetting and its remedy: the generic held-out set, the `general` scores, WiSE-FT weights and their export."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import InputError
from pipelines.evaluate import clip_benchmark as cb
from pipelines.evaluate.clip import evaluate, load_benchmark_zeroshot_set, score_zeroshot
from pipelines.export.clip import export, render_card
from pipelines.models.adapt import AdaptConfig, load_trained, merged_clip, prepare, save_trainable, write_adapt_spec
from pipelines.models.clip import ModelSpec, load_model
from pipelines.models.wise import WiseConfig, interpolate, interpolate_state, lora_wise, wise_clip
from pipelines.params import ParamsError, build
from pipelines.pretrain import synthetic_corpus as corpus
from pipelines.pretrain.general_set import GENERAL_STREAM, GeneralSetConfig, general_sample, write_general_set

TOL = 1e-5
TEXTS = ["a red circle", "two small blue squares", "a checkerboard of black and white squares"]


@pytest.fixture()
def base_spec(tiny, tmp_path) -> ModelSpec:
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    return ModelSpec(name="domainfm-tiny", pretrained=str(path))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def general_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("general") / "shapes"
    write_general_set(folder, GeneralSetConfig(per_class=3, seed=0), 64)
    return folder


def _trained(base_spec: ModelSpec, out: Path, cfg: AdaptConfig):
    """A 'trained' adaptation: LoRA matrices and other trainables moved off the base, saved like training does."""
    model = prepare(load_model(base_spec).model, cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    write_adapt_spec(out, base_spec, cfg)
    save_trainable(model, out / "trainable.safetensors")
    return model.eval(), out


def _embed(model, tokenizer, images):
    model.eval()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokenizer(TEXTS))


# ---------------------------------------------------------------- WiSE-FT weights


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_alpha_0_is_the_base_and_alpha_1_the_adapted(mode, base_spec, tiny, images, tmp_path) -> None:
    cfg = AdaptConfig(mode=mode, lora_r=4)
    adapted, _ = _trained(base_spec, tmp_path / "t", cfg)
    base = load_model(base_spec).model.eval()
    want_base, want_adapted = _embed(base, tiny.tokenizer, images), _embed(adapted, tiny.tokenizer, images)
    assert (want_base[0] - want_adapted[0]).abs().max() > 1e-2  # the adaptation is visible
    for alpha, want in ((0.0, want_base), (1.0, want_adapted)):
        got = _embed(wise_clip(adapted, cfg, base, alpha), tiny.tokenizer, images)
        assert (got[0] - want[0]).abs().max() <= TOL and (got[1] - want[1]).abs().max() <= TOL, (mode, alpha)
    at0 = wise_clip(adapted, cfg, base, 0.0)
    assert torch.equal(at0.logit_scale, base.logit_scale)  # the trained logit_scale is interpolated too
    assert not torch.equal(adapted.logit_scale, base.logit_scale)


def test_alpha_half_is_the_mean_of_the_weights(base_spec, tmp_path) -> None:
    cfg = AdaptConfig(mode="full")
    adapted, _ = _trained(base_spec, tmp_path / "t", cfg)
    base = load_model(base_spec).model
    merged = merged_clip(adapted, cfg)
    mixed = interpolate(base, merged, 0.5).state_dict()
    b, a = base.state_dict(), merged.state_dict()
    assert mixed.keys() == b.keys()
    for key in b:
        torch.testing.assert_close(mixed[key], (b[key] + a[key]) / 2, rtol=0, atol=1e-7)
    assert any(not torch.equal(b[k], a[k]) for k in b)  # not trivially equal weights
    torch.testing.assert_close(b["visual.conv1.weight"], base.state_dict()["visual.conv1.weight"])  # inputs untouched


def test_lora_scaled_merge_equals_interpolating_the_merged_weights(base_spec, tmp_path) -> None:
    cfg = AdaptConfig(mode="lora", lora_r=4)
    adapted, _ = _trained(base_spec, tmp_path / "t", cfg)
    base = load_model(base_spec).model
    merged = merged_clip(adapted, cfg)
    for alpha in (0.3, 0.75):
        scaled = lora_wise(adapted, base, alpha).state_dict()
        lerped = interpolate(base, merged, alpha).state_dict()
        assert scaled.keys() == lerped.keys()
        worst = max((scaled[k] - lerped[k]).abs().max().item() for k in scaled)
        assert worst <= 1e-6, (alpha, worst)
    # and it is not the adapted model: the LoRA update really is scaled
    half = lora_wise(adapted, base, 0.5).state_dict()
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    assert (half[key] - merged.state_dict()[key]).abs().max() > 1e-4


def test_interpolation_refuses_other_architectures_and_alphas(tiny) -> None:
    state = tiny.model.state_dict()
    other = dict(state)
    other.pop("logit_scale")
    with pytest.raises(ValueError, match="differ in keys"):
        interpolate_state(state, other, 0.5)
    bad = {**state, "logit_scale": torch.zeros(2)}
    with pytest.raises(ValueError, match="logit_scale: base shape"):
        interpolate_state(state, bad, 0.5)
    for alpha in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="alpha must be a number in"):
            interpolate_state(state, state, alpha)
    with pytest.raises(ParamsError, match=r"pairs\.evaluate\.wise: WiSE-FT alpha"):
        build(WiseConfig, {"alphas": [0.0, 2.0]}, "pairs.evaluate.wise")
    assert build(WiseConfig, {"alphas": [1, 0.5, 0, 0.5]}).alphas == [0.0, 0.5, 1.0]


def test_export_with_wise_alpha_loads_in_stock_open_clip(base_spec, tiny, images, tmp_path) -> None:
    cfg = AdaptConfig(mode="lora", lora_r=4)
    adapted, trained = _trained(base_spec, tmp_path / "t", cfg)
    base = load_model(base_spec).model.eval()
    want = _embed(wise_clip(adapted, cfg, base, 0.4), tiny.tokenizer, images)
    at_one = _embed(adapted, tiny.tokenizer, images)
    metrics = {"base": {"general": {"acc1": 0.8}}, "adapted": {"general": {"acc1": 0.5}}, "wise": {"general": {"acc1": 0.7}}}
    out = tmp_path / "exports" / "pairs"
    export(trained, out, {"domain": "pairs", "metrics": metrics}, wise_alpha=0.4)

    model, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(out))
    assert type(model) is open_clip.CLIP
    got = _embed(model, open_clip.get_tokenizer("local-dir:" + str(out)), images)
    assert (got[0] - want[0]).abs().max() <= TOL and (got[1] - want[1]).abs().max() <= TOL
    assert (got[0] - at_one[0]).abs().max() > 1e-3  # not the adapted model
    card = (out / "README.md").read_text()
    assert "WiSE-FT interpolation at alpha = 0.4" in card
    assert "| general/acc1 | 0.8000 | 0.5000 | 0.7000 |" in card


# ---------------------------------------------------------------- the generic held-out set


def test_general_set_draws_are_disjoint_from_the_pretraining_corpus() -> None:
    n_corpus = 6000  # params.yaml pretrain.n_samples
    # Each sample is drawn from its own generator: compare the first draws of every corpus and general stream.
    corpus_first = {np.random.default_rng([0, i]).integers(2**62) for i in range(n_corpus)}
    general_first = {np.random.default_rng([0, GENERAL_STREAM, i]).integers(2**62) for i in range(n_corpus)}
    assert len(corpus_first) == n_corpus and not corpus_first & general_first
    # and the images themselves: none of the general set appears in the corpus's first images
    general = {general_sample(0, i, 32)[0].tobytes() for i in range(40)}
    assert len(general) == 40
    assert not general & {corpus.make_sample(0, i, 32)[0].tobytes() for i in range(300)}


def test_general_set_is_in_clip_benchmark_layout_with_balanced_colour_classes(general_dir) -> None:
    assert (general_dir / cb.SPLIT / "nshards.txt").read_text().strip() == "1"
    found = load_benchmark_zeroshot_set(general_dir)
    assert found.classnames == list(corpus.COLOURS)
    assert np.bincount(found.labels).tolist() == [3] * len(corpus.COLOURS)
    for index in range(len(corpus.COLOURS)):  # the class is the shape's colour: its pixels are there
        image, label = general_sample(0, index, 64)
        rgb = np.array(corpus.COLOURS[found.classnames[label]])
        assert (np.abs(image.astype(int) - rgb).max(axis=2) <= 2).sum() > 20
    assert all(t.count("{c}") == 1 for t in found.templates)
    for word in corpus.FORBIDDEN_WORDS:  # as generic as the corpus: no domain word in its prompts
        assert all(word not in t.split() for t in found.templates)


def test_general_reader_refuses_a_folder_not_in_the_layout(general_dir, tmp_path) -> None:
    with pytest.raises(InputError, match="not a folder"):
        load_benchmark_zeroshot_set(tmp_path / "absent")
    ours = tmp_path / "ours"  # our own zero-shot layout, which the lenient reader accepts
    ours.mkdir()
    shutil.copy(general_dir / cb.SPLIT / "0.tar", ours / "test-000000.tar")
    shutil.copy(general_dir / "classnames.txt", ours / "classnames.txt")
    with pytest.raises(InputError, match=r"no test/nshards.txt, zeroshot_classification_templates.txt; expected CLIP_benchmark"):
        load_benchmark_zeroshot_set(ours)
    short = tmp_path / "short"
    shutil.copytree(general_dir, short)
    (short / cb.SPLIT / "nshards.txt").write_text("2\n")
    with pytest.raises(InputError, match=r"counts 2 shards but .*1\.tar is missing"):
        load_benchmark_zeroshot_set(short)
    (short / cb.SPLIT / "nshards.txt").write_text("two\n")
    with pytest.raises(InputError, match="not a shard count"):
        load_benchmark_zeroshot_set(short)
    fewer = tmp_path / "fewer"
    shutil.copytree(general_dir, fewer)
    (fewer / "classnames.txt").write_text("red\ngreen\n")  # labels reach 12
    with pytest.raises(InputError, match="outside the 2 class names"):
        load_benchmark_zeroshot_set(fewer)


def test_evaluate_scores_base_and_adapted_on_the_general_set(general_dir, tiny, tmp_path) -> None:
    base = (tiny.model.eval(), tiny.preprocess_val, tiny.tokenizer)
    moved = copy.deepcopy(tiny.model)
    with torch.no_grad():
        moved.visual.proj.add_(torch.randn(moved.visual.proj.shape, generator=torch.Generator().manual_seed(1)))
    adapted = (moved.eval(), tiny.preprocess_val, tiny.tokenizer)
    summary = evaluate({"base": base, "adapted": adapted}, None, [], None, None, tmp_path / "m", tmp_path / "p", "pairs",
                       batch_size=16, hubness=None, linear_probe=None, general_dir=general_dir)
    found = load_benchmark_zeroshot_set(general_dir)
    for role, (model, preprocess, tokenizer) in (("base", base), ("adapted", adapted)):
        want = score_zeroshot(model, preprocess, tokenizer, found, "cpu", 16)[2]
        assert summary[role]["general"] == {k: want[k] for k in ("acc1", "acc5", "mean_per_class_recall")}
    assert summary["delta"]["general"]["acc1"] == pytest.approx(
        summary["adapted"]["general"]["acc1"] - summary["base"]["general"]["acc1"])
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["delta"]["general"] == summary["delta"]["general"]
    with pytest.raises(InputError, match="general set"):
        evaluate({"base": base}, None, [], None, None, tmp_path / "m2", tmp_path / "p2", "pairs", general_dir=tmp_path)


def test_card_says_what_adaptation_cost_in_general_ability(base_spec) -> None:
    metrics = {"base": {"zeroshot": {"acc1": 0.2}, "general": {"acc1": 0.9}},
               "adapted": {"zeroshot": {"acc1": 0.7}, "general": {"acc1": 0.6}}}
    card = render_card({"metrics": metrics, "general_set": "data/general/shapes"}, base_spec, AdaptConfig(), "pairs")
    section = card.split("## What adaptation cost in general ability")[1].split("\n## ")[0]
    assert "`data/general/shapes`" in section and "| acc1 | 0.9000 | 0.6000 | -0.3000 |" in section
    assert card.count("0.9000") == 1  # not repeated in the Evaluation section
    assert "What adaptation cost" not in render_card({"metrics": {"base": {}, "adapted": {}}}, base_spec, AdaptConfig(), "x")


# ---------------------------------------------------------------- the forgetting stage


def test_forgetting_stage_puts_the_full_twin_beside_lora(general_dir, base_spec, tmp_path) -> None:
    from pipelines.forgetting.stage import forgetting_domain

    lora, lora_dir = _trained(base_spec, tmp_path / "lora", AdaptConfig(mode="lora", lora_r=4))
    full, full_dir = _trained(base_spec, tmp_path / "full", AdaptConfig(mode="full"))
    params = tmp_path / "params.yaml"
    params.write_text(f"pairs:\n  evaluate: {{general: {general_dir}, wise: {{alphas: [0.0, 1.0]}}}}\n")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    def scores(zeroshot: float, general: float) -> dict:
        return {"zeroshot": {"acc1": zeroshot, "mean_per_class_recall": zeroshot},
                "general": {"acc1": general, "mean_per_class_recall": general}}

    evaluated = {"base": scores(0.2, 0.9), "adapted": scores(0.8, 0.7)}
    (metrics / "metrics.json").write_text(json.dumps(evaluated))
    (metrics / "wise.json").write_text(json.dumps([{"alpha": 0.0, "general_acc1": 0.9}, {"alpha": 1.0, "general_acc1": 0.7}]))
    report = tmp_path / "reports" / "forgetting.md"

    text = forgetting_domain("pairs", lora_dir, full_dir, metrics, None, metrics, report, params)
    record = json.loads((metrics / "forgetting.json").read_text())
    found = load_benchmark_zeroshot_set(general_dir)
    base = load_model(base_spec)
    twin, _ = load_trained(full_dir)
    want_full = score_zeroshot(twin, base.preprocess_val, base.tokenizer, found, "cpu", 64)[2]
    want_base = score_zeroshot(base.model.eval(), base.preprocess_val, base.tokenizer, found, "cpu", 64)[2]
    assert record["full"]["general"]["acc1"] == pytest.approx(want_full["acc1"])
    assert record["lora"] == {"zeroshot": {"acc1": 0.8, "mean_per_class_recall": 0.8},
                              "general": {"acc1": 0.7, "mean_per_class_recall": 0.7}}
    assert record["delta_lora"]["general"]["acc1"] == pytest.approx(-0.2)
    assert record["delta_full"]["general"]["acc1"] == pytest.approx(want_full["acc1"] - 0.9)
    assert record["trainable_parameters"]["full"] > 10 * record["trainable_parameters"]["lora"]
    curve = json.loads((metrics / "wise_full.json").read_text())
    assert [r["alpha"] for r in curve] == [0.0, 1.0]
    assert curve[0]["general_acc1"] == pytest.approx(want_base["acc1"])  # alpha 0: the base model
    assert curve[1]["general_acc1"] == pytest.approx(want_full["acc1"])  # alpha 1: the twin
    assert report.read_text() == text and "| lora |" in text and "## WiSE-FT curve, full" in text

    with pytest.raises(InputError, match="twin must be full fine-tuning"):
        forgetting_domain("pairs", full_dir, lora_dir, metrics, None, metrics, report, params)
    with pytest.raises(InputError, match="3D|volume"):
        forgetting_domain("ct", lora_dir, full_dir, metrics, None, metrics, report, params)


def test_params_check_knows_the_forgetting_section() -> None:
    from pipelines.params import load_params
    from pipelines.schema import check

    raw = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert check(raw) == []
    assert raw["forgetting"]["domains"] and all(raw[d]["evaluate"]["general"] for d in raw["forgetting"]["domains"])
    problems = check({**raw, "forgetting": {"domains": ["ct", "nowhere"], "alphas": [0.5]}})
    assert problems == ["forgetting.alphas: unknown key; valid keys: domains"]  # the domain checks wait for a valid section
    problems = check({**raw, "forgetting": {"domains": ["ct", "nowhere"]}})
    assert any("'ct' is a volume domain" in p for p in problems)
    assert any("'nowhere' is not listed under domains" in p for p in problems)
