"""pipelines.models.adapt: explicit attention, LoRA/full/frozen preparation, merging, save/load."""
from __future__ import annotations

import copy

import open_clip
import peft
import pytest
import torch
import torch.nn.functional as F
from packaging.version import Version
from safetensors.torch import load_file, save_file
from torch import nn

from pipelines.models.adapt import (
    AdaptConfig,
    ExplicitAttention,
    clip_of,
    explicit_attention,
    load_trained,
    merged_clip,
    prepare,
    save_trainable,
    trainable_state_dict,
    write_adapt_spec,
)
from pipelines.models.clip import ModelSpec, load_model
from pipelines.params import ParamsError, build

TOL = 1e-5


@pytest.fixture()
def base(tiny) -> open_clip.CLIP:
    return copy.deepcopy(tiny.model).eval()


@pytest.fixture(scope="module")
def batch(tiny):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 64, 64, generator=g)
    texts = tiny.tokenizer(["a satellite image of a river", "dense urban blocks", "farmland", "a forest road"])
    return images, texts


def randomise_lora(model: nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """LoRA B starts at zero (a no-op); give it, and A, random values so the update is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def embeddings(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    images, texts = batch
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(texts)


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# ---------------------------------------------------------------------------- ExplicitAttention


def _mha(batch_first: bool = True, bias: bool = True) -> nn.MultiheadAttention:
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(32, 4, bias=bias, batch_first=batch_first)
    with torch.no_grad():  # non-zero biases so a wrong split would show
        for p in mha.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return mha.eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_explicit_attention_matches_mha(batch_first: bool, bias: bool) -> None:
    mha = _mha(batch_first, bias)
    ex = ExplicitAttention.from_mha(mha).eval()
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    kv = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    bool_mask = torch.rand(5, 7) > 0.6
    bool_mask[:, 0] = False  # keep every row attendable (all-masked rows are NaN in both)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, -2:] = True
    kpm_float = torch.zeros(2, 7).masked_fill(kpm, float("-inf"))
    per_head = torch.randn(2 * 4, 5, 7)
    cases = [
        dict(args=(x, x, x)),
        dict(args=(x, x, x), attn_mask=causal),
        dict(args=(x, kv, kv), attn_mask=bool_mask),
        dict(args=(x, kv, kv), key_padding_mask=kpm),
        dict(args=(x, kv, kv), attn_mask=per_head, key_padding_mask=kpm_float),
    ]
    with torch.no_grad():
        for case in cases:
            args = case.pop("args")
            ref, ref_w = mha(*args, need_weights=True, **case)
            out, w = ex(*args, need_weights=True, **case)
            assert (out - ref).abs().max() < 1e-6
            assert (w - ref_w).abs().max() < 1e-6
            out_fast, none = ex(*args, need_weights=False, **case)  # the SDPA path open_clip uses
            assert none is None
            assert (out_fast - ref).abs().max() < 1e-6


def test_explicit_attention_round_trip_is_exact() -> None:
    mha = _mha()
    back = ExplicitAttention.from_mha(mha).to_mha()
    assert type(back) is nn.MultiheadAttention
    for (n1, p1), (n2, p2) in zip(mha.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_explicit_attention_is_a_drop_in_for_open_clip(base, batch) -> None:
    before = embeddings(base, batch)
    n_mha = sum(isinstance(m, nn.MultiheadAttention) for m in base.modules())
    explicit_attention(base)
    assert n_mha == 4  # 2 visual + 2 text blocks in domainfm-tiny
    assert not any(isinstance(m, nn.MultiheadAttention) for m in base.modules())
    assert sum(isinstance(m, ExplicitAttention) for m in base.modules()) == n_mha
    assert max_diff(before, embeddings(base, batch)) < 1e-6


# ---------------------------------------------------------------------------- LoRA correctness


def _manual_merge(prepared: nn.Module) -> nn.Module:
    """W + (alpha / r) * B @ A for every LoRA layer, computed here rather than by peft."""
    from peft.tuners.lora import LoraLayer

    clip = copy.deepcopy(clip_of(prepared))
    plain = {}
    for name, mod in clip.named_modules():
        if isinstance(mod, LoraLayer):
            base_layer = mod.get_base_layer()
            delta = (mod.lora_B["default"].weight @ mod.lora_A["default"].weight) * mod.scaling["default"]
            linear = nn.Linear(base_layer.in_features, base_layer.out_features)
            with torch.no_grad():
                linear.weight.copy_(base_layer.weight + delta)
                linear.bias.copy_(base_layer.bias)
            plain[name] = linear
    for name, linear in plain.items():
        parent, _, leaf = name.rpartition(".")
        setattr(clip.get_submodule(parent), leaf, linear)
    return clip


def test_lora_forward_equals_merged_clip(base, batch) -> None:
    reference = embeddings(base, batch)
    cfg = AdaptConfig(mode="lora", lora_r=4, lora_alpha=8.0)
    model = prepare(base, cfg)
    randomise_lora(model)
    model.eval()
    adapted = embeddings(model, batch)
    assert max_diff(adapted, reference) > 1e-2  # the LoRA update really changes the outputs

    merged = merged_clip(model, cfg).eval()
    assert type(merged) is open_clip.CLIP
    assert sum(isinstance(m, nn.MultiheadAttention) for m in merged.modules()) == 4
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert max_diff(adapted, embeddings(merged, batch)) <= TOL
    # ... and peft applies each update exactly once (W + dW), unlike on nn.MultiheadAttention.
    assert max_diff(adapted, embeddings(_manual_merge(model), batch)) <= TOL

    images, texts = batch
    with torch.no_grad():
        out, out_merged = model(images, texts), merged(images, texts)
    assert len(out) == len(out_merged) == 3
    assert max_diff(out, out_merged) <= TOL
    # merging worked on a copy: the prepared model still carries its LoRA layers
    assert any("lora_B" in n for n, _ in model.named_parameters())


def test_naive_peft_on_multihead_attention_doubles_out_proj_before_0_22(base, batch) -> None:
    """Documents the trap adapt.py avoids: peft before 0.22 on nn.MultiheadAttention applies out_proj's LoRA twice.

    peft's own merge_and_unload reproduces its (doubled) forward, so the symptom is that the
    adapted model is W + 2*dW(out_proj) rather than the W + dW that the LoRA weights describe
    (and that any other consumer of the adapter, or our explicit-attention route, computes).
    """
    from peft import LoraConfig, get_peft_model

    naive = get_peft_model(copy.deepcopy(base), LoraConfig(
        target_modules=r"visual\.transformer\.resblocks\.\d+\.attn", r=4, lora_alpha=8.0))
    randomise_lora(naive)
    naive.eval()
    images, _ = batch
    with torch.no_grad():
        got = naive.encode_image(images)

    def merged_with_out_proj_factor(k: float) -> torch.Tensor:
        clip = explicit_attention(copy.deepcopy(base))
        d = clip.visual.transformer.width
        with torch.no_grad():
            for blk, lblk in zip(clip.visual.transformer.resblocks, clip_of(naive).visual.transformer.resblocks):
                d_in = lblk.attn.get_delta_weight("default")
                d_out = lblk.attn.base_layer.out_proj.get_delta_weight("default")
                blk.attn.q_proj.weight += d_in[:d]
                blk.attn.k_proj.weight += d_in[d:2 * d]
                blk.attn.v_proj.weight += d_in[2 * d:]
                blk.attn.out_proj.weight += k * d_out
            return clip.eval().encode_image(images)

    if Version(peft.__version__) >= Version("0.22"):
        # peft 0.22 applies the update once (measured: 0.21.2 doubles it, 0.22.0 does not); the explicit route stays right
        assert (got - merged_with_out_proj_factor(1.0)).abs().max() <= TOL
        return
    assert (got - merged_with_out_proj_factor(1.0)).abs().max() > 1e-3  # the check fails naively
    assert (got - merged_with_out_proj_factor(2.0)).abs().max() <= TOL  # because out_proj counts twice


# ---------------------------------------------------------------------------- modes and towers


def _train_step(model: nn.Module, batch) -> None:
    images, texts = batch
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    img, txt, scale = model(images, texts)
    logits = scale * img @ txt.T
    labels = torch.arange(len(images))
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    opt.step()
    model.eval()


def _clip_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Stock-named parameters of the (possibly peft-wrapped) CLIP, LoRA factors excluded."""
    out = {}
    for n, p in clip_of(model).named_parameters():
        if "lora_" in n:
            continue
        out[n.replace(".base_layer", "")] = p.detach().clone()
    return out


def test_lora_visual_only_leaves_text_tower_frozen_and_unchanged(base, batch) -> None:
    cfg = AdaptConfig(mode="lora", towers=["visual"], lora_r=2)
    model = prepare(base, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("visual." in n and "lora_" in n for n in trainable if not n.endswith("logit_scale"))
    assert "base_model.model.logit_scale" in trainable
    assert not any("lora_" in n and "visual." not in n for n, _ in model.named_parameters())
    randomise_lora(model)
    before = _clip_params(model)
    text_before = embeddings(model, batch)[1]
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    _train_step(model, batch)

    after = _clip_params(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"logit_scale"}  # base weights of both towers are untouched
    assert torch.equal(text_before, embeddings(model, batch)[1])
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if n in lora_before)


def test_full_text_only_trains_text_tower(base, batch) -> None:
    model = prepare(base, AdaptConfig(mode="full", towers=["text"], train_logit_scale=False))
    assert model is base  # no wrapper in full mode
    for n, p in model.named_parameters():
        assert p.requires_grad == (not n.startswith("visual.") and n != "logit_scale"), n
    before = _clip_params(model)
    _train_step(model, batch)
    after = _clip_params(model)
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("visual.") or n == "logit_scale")
    assert not torch.equal(before["text_projection"], after["text_projection"])


def test_frozen_mode_trains_only_projections_and_logit_scale(base) -> None:
    model = prepare(base, AdaptConfig(mode="frozen"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"visual.proj", "text_projection", "logit_scale"}


def test_lora_parameter_count_and_targets(base) -> None:
    model = prepare(base, AdaptConfig())  # defaults: both towers, r=8, six linears per block
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # per block: 4 * r * (128 + 128) attention + 2 * r * (128 + 512) MLP; 4 blocks; + logit_scale
    assert n_trainable == 4 * (4 * 8 * 256 + 2 * 8 * 640) + 1 == 73729


def test_bad_configs_are_rejected_with_their_key_path() -> None:
    with pytest.raises(ParamsError, match=r"adapt\.mode: 'qlora' is not one of 'lora', 'full', 'frozen'"):
        build(AdaptConfig, {"mode": "qlora"}, "adapt")
    with pytest.raises(ParamsError, match=r"adapt\.towers\[0\]: 'audio' is not one of"):
        build(AdaptConfig, {"towers": ["audio"]}, "adapt")
    with pytest.raises(ParamsError, match=r"adapt\.lora_modules\[0\]: 'qkv' is not one of"):
        build(AdaptConfig, {"lora_modules": ["qkv"]}, "adapt")
    with pytest.raises(ParamsError, match="needs at least one tower"):
        build(AdaptConfig, {"mode": "full", "towers": []}, "adapt")


# ---------------------------------------------------------------------------- wrapper behaviour


def test_peft_wrapper_behaves_like_clip(base, batch) -> None:
    model = prepare(base, AdaptConfig(lora_r=2))
    randomise_lora(model)
    model.eval()
    clip = clip_of(model)
    assert isinstance(clip, open_clip.CLIP)
    images, texts = batch
    with torch.no_grad():
        assert torch.equal(model.encode_image(images, normalize=True), clip.encode_image(images, normalize=True))
        assert torch.allclose(model.encode_text(texts, normalize=True).norm(dim=-1), torch.ones(len(texts)))
    assert model.logit_scale is clip.logit_scale

    # gradient checkpointing reaches open_clip's transformers and gives the same gradients
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        model.train()
        img, txt, scale = model(images, texts)
        (scale * img @ txt.T).logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads(False)
    ckpt = grads(True)
    assert clip.transformer.grad_checkpointing and clip.visual.transformer.grad_checkpointing
    assert all(torch.allclose(plain[n], ckpt[n], atol=1e-6) for n in plain)
    assert any(g.abs().sum() > 0 for n, g in plain.items() if "lora_A" in n)


# ---------------------------------------------------------------------------- save / load


@pytest.fixture()
def base_checkpoint(tiny, tmp_path):
    """Fixed base weights on disk, so reloading the base gives the same model."""
    path = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    return ModelSpec(name="domainfm-tiny", pretrained=str(path))


@pytest.mark.parametrize("mode", ["lora", "full", "frozen"])
def test_save_and_load_trained_round_trip(base_checkpoint, batch, tmp_path, mode) -> None:
    cfg = AdaptConfig(mode=mode, towers=["visual", "text"], lora_r=2)
    model = prepare(load_model(base_checkpoint).model, cfg)
    randomise_lora(model)
    with torch.no_grad():  # trainables that differ from the base checkpoint
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_" not in n:
                p.add_(0.01)
    model.eval()
    out = tmp_path / "trained"
    write_adapt_spec(out, base_checkpoint, cfg)
    save_trainable(model, out / "trainable.safetensors")
    assert set(load_file(str(out / "trainable.safetensors"))) == set(trainable_state_dict(model))

    reloaded, loaded = load_trained(out)
    assert not reloaded.training
    assert max_diff(embeddings(model, batch), embeddings(reloaded, batch)) == 0.0
    assert loaded.spec == base_checkpoint


def test_load_trained_rejects_mismatched_keys(base_checkpoint, tmp_path) -> None:
    cfg = AdaptConfig(mode="lora", lora_r=2)
    model = prepare(load_model(base_checkpoint).model, cfg)
    out = tmp_path / "trained"
    write_adapt_spec(out, base_checkpoint, cfg)
    state = trainable_state_dict(model)

    missing = dict(state)
    missing.pop("base_model.model.logit_scale")
    save_file(missing, str(out / "trainable.safetensors"))
    with pytest.raises(KeyError, match=r"missing \['base_model.model.logit_scale'\]"):
        load_trained(out)

    save_file({**state, "base_model.model.visual.proj": torch.zeros(128, 64)}, str(out / "trainable.safetensors"))
    with pytest.raises(KeyError, match="unexpected"):
        load_trained(out)


def test_adapt_spec_without_base_weights_warns(tmp_path) -> None:
    with pytest.warns(UserWarning, match="random"):
        write_adapt_spec(tmp_path, ModelSpec(name="domainfm-tiny"), AdaptConfig())


# ---------------------------------------------------------------------------- lora_forward: merged


def test_merged_lora_forward_matches_peft_in_outputs_gradients_and_export(tiny, batch) -> None:
    images, texts = batch
    models, grads = {}, {}
    for how in ("peft", "merged"):
        torch.manual_seed(0)
        cfg = AdaptConfig(mode="lora", lora_r=4, lora_alpha=8.0, lora_forward=how)
        model = prepare(copy.deepcopy(tiny.model), cfg)
        randomise_lora(model)
        model.train()
        image_f, text_f, scale = model(images, texts)[:3]
        (image_f @ text_f.T * scale).logsumexp(dim=1).mean().backward()
        models[how] = (model, cfg)
        grads[how] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    kinds = {how: {type(m).__name__ for m in model.modules()} for how, (model, _) in models.items()}
    assert "MergedLoraLinear" in kinds["merged"] and "MergedLoraLinear" not in kinds["peft"]
    out = {how: embeddings(model.eval(), batch) for how, (model, _) in models.items()}
    assert max_diff(out["merged"], out["peft"]) <= TOL
    assert grads["merged"].keys() == grads["peft"].keys() and any("lora_A" in n for n in grads["merged"])
    for name, g in grads["peft"].items():  # A and B receive the same gradients through W + s B A
        torch.testing.assert_close(grads["merged"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    # the export folds in the same update whichever forward trained it
    merged_export = merged_clip(*models["merged"]).eval()
    assert type(merged_export) is open_clip.CLIP and max_diff(embeddings(merged_export, batch), out["peft"]) <= TOL
    # a disabled adapter falls back to peft's path: the base model's outputs
    peft_model = models["merged"][0]
    with peft_model.disable_adapter():
        assert max_diff(embeddings(peft_model, batch), embeddings(tiny.model.eval(), batch)) <= TOL


def test_merged_lora_forward_refuses_dropout() -> None:
    with pytest.raises(ParamsError, match="lora_dropout"):
        build(AdaptConfig, {"mode": "lora", "lora_dropout": 0.1, "lora_forward": "merged"}, "adapt")
    with pytest.raises(ParamsError, match=r"adapt\.lora_forward: 'fast' is not one of 'peft', 'merged'"):
        build(AdaptConfig, {"lora_forward": "fast"}, "adapt")


def _lora_linear_pair(bias_trains: bool) -> tuple[nn.Module, nn.Module]:
    """The same LoRA Linear (random W, b, A, B) with peft's forward and with the merged forward."""
    layers = []
    for how in ("peft", "merged"):
        torch.manual_seed(5)
        net = nn.Sequential(nn.Linear(24, 40))
        model = prepare_linear(net, how)
        randomise_lora(model)
        layer = model.get_base_model()[0]
        layer.get_base_layer().bias.requires_grad_(bias_trains)
        layers.append(layer)
    return layers[0], layers[1]


def prepare_linear(net: nn.Module, how: str) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    from pipelines.models.adapt import _merged_lora_linear_type
    model = get_peft_model(net, LoraConfig(target_modules=["0"], r=4, lora_alpha=8.0, bias="none"))
    if how == "merged":
        model.get_base_model()[0].__class__ = _merged_lora_linear_type()
    return model


@pytest.mark.parametrize("bias_trains", [False, True])
def test_merged_lora_linear_backward_equals_peft_through_the_low_rank_path(bias_trains) -> None:
    peft_layer, merged_layer = _lora_linear_pair(bias_trains)
    assert type(merged_layer).__name__ == "MergedLoraLinear"
    x = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(2))
    grad_out = torch.randn(3, 7, 40, generator=torch.Generator().manual_seed(3))
    results = {}
    for how, layer in (("peft", peft_layer), ("merged", merged_layer)):
        xi = x.clone().requires_grad_(True)
        for _ in range(2):  # gradients accumulate, as with grad_accum
            y = layer(xi)
            y.backward(grad_out)
        params = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
        results[how] = (y.detach(), xi.grad, params, y.grad_fn)
    (y_p, gx_p, params_p, _), (y_m, gx_m, params_m, fn_m) = results["peft"], results["merged"]
    # the gradient leaves the merged weight's autograd: no out x in gradient of W + s B A is formed
    assert type(fn_m).__name__ == "_MergedLoraLinearFunctionBackward"
    torch.testing.assert_close(y_m, y_p, atol=1e-5, rtol=0)
    torch.testing.assert_close(gx_m, gx_p, atol=1e-5, rtol=0)
    assert params_m.keys() == params_p.keys()
    assert any("lora_A" in n for n in params_m) and any("lora_B" in n for n in params_m)
    assert any(n.endswith("base_layer.bias") for n in params_m) == bias_trains
    for name, g in params_p.items():
        assert params_m[name].abs().max() > 0, name
        torch.testing.assert_close(params_m[name], g, atol=1e-5, rtol=0, msg=name)


def test_merged_lora_linear_under_bf16_autocast_keeps_fp32_gradients() -> None:
    peft_layer, merged_layer = _lora_linear_pair(False)
    x = torch.randn(5, 24, generator=torch.Generator().manual_seed(2))
    grads = {}
    for how, layer in (("peft", peft_layer), ("merged", merged_layer)):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xi)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        grads[how] = {"x": xi.grad, **{n: p.grad for n, p in layer.named_parameters() if p.requires_grad}}
    for name, g in grads["peft"].items():
        assert grads["merged"][name].dtype == torch.float32, name
        torch.testing.assert_close(grads["merged"][name], g, atol=0.05, rtol=0.05, msg=name)
