"""LoRA and frozen modes on every tower family open_clip builds, with random weights.

open_clip's own ViT and text transformer, timm ViT (as SigLIP uses, with MAP pooling) and ConvNeXt
image towers, a Hugging Face BERT text tower, and a ResNet (where LoRA has nothing to adapt and
must say so). For each: the adapted layers are the ones expected, a training step moves them, and
the merged export computes what the adapted model computes.
"""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from pipelines.models.adapt import AdaptConfig, explicit_attention, lora_targets, merged_clip, prepare, projection_parameters

TEXT = {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}
OPEN_CLIP_VIT = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}
TINY_TIMM_VIT = {"timm_model_name": "test_vit", "timm_model_pretrained": False, "image_size": 160}  # timm's own test model
FAMILIES = {
    "open_clip-vit": {"embed_dim": 16, "vision_cfg": OPEN_CLIP_VIT, "text_cfg": TEXT},
    "timm-vit": {"embed_dim": 16, "vision_cfg": {**TINY_TIMM_VIT, "timm_pool": "", "timm_proj": "linear"}, "text_cfg": TEXT},
    # as SigLIP: the MAP-pooled trunk output is the embedding (no projection), so embed_dim is the trunk's width
    "timm-vit-siglip": {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
                        "vision_cfg": {**TINY_TIMM_VIT, "timm_pool": "map", "timm_proj": "none"},
                        "text_cfg": {**TEXT, "no_causal_mask": True, "pool_type": "last"}},
    "timm-convnext": {"embed_dim": 16, "vision_cfg": {"timm_model_name": "test_convnext", "timm_model_pretrained": False,
                                                      "timm_pool": "", "timm_proj": "linear", "image_size": 32}, "text_cfg": TEXT},
    "hf-bert-text": {"embed_dim": 16, "vision_cfg": OPEN_CLIP_VIT,
                     "text_cfg": {"hf_model_name": "HF_DIR", "hf_model_pretrained": False, "hf_pooler_type": "cls_pooler",
                                  "hf_proj_type": "linear", "context_length": 16}},
    "resnet": {"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8}, "text_cfg": TEXT},
}
# which roles each family's LoRA layers play in its image tower, per block (the text tower is open_clip's unless named)
EXPECTED_VISUAL = {
    "open_clip-vit": "visual.transformer.resblocks.0.attn.q_proj",
    "timm-vit": "visual.trunk.blocks.0.attn.qkv",
    "timm-vit-siglip": "visual.trunk.blocks.5.mlp.fc2",
    "timm-convnext": "visual.trunk.stages.0.blocks.0.mlp.fc1",
    "hf-bert-text": "visual.transformer.resblocks.0.mlp.c_fc",
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("tiny_bert")
    BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=32).save_pretrained(folder)
    return folder


def build(family: str, hf_dir: Path, tmp_path: Path) -> torch.nn.Module:
    config = json.loads(json.dumps(FAMILIES[family]).replace("HF_DIR", str(hf_dir)))
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / f"tiny-{family}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(0)
    return open_clip.create_model(f"tiny-{family}", pretrained_hf=False)


def batch(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.visual.image_size if hasattr(model.visual, "image_size") else 32
    size = size[0] if isinstance(size, (tuple, list)) else size
    torch.manual_seed(1)
    return torch.randn(4, 3, size, size), torch.randint(1, 60, (4, 16))


def one_step(model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(images, texts)
    image_f, text_f = (out["image_features"], out["text_features"]) if isinstance(out, dict) else out[:2]
    loss = -(image_f * text_f.roll(1, 0)).sum() + (image_f * text_f).sum() * 0.5
    loss.backward()
    optimizer.step()
    return {n: (p.detach() - before[n]).abs().max() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "resnet"])
def test_lora_adapts_each_tower_family_and_merges_exactly(family: str, hf_dir: Path, tmp_path: Path) -> None:
    model = build(family, hf_dir, tmp_path)
    cfg = AdaptConfig(mode="lora", lora_r=4, lora_alpha=8)
    targets = lora_targets(explicit_attention(model), cfg)  # as prepare() sees open_clip's attention
    assert EXPECTED_VISUAL[family] in targets
    assert any(t.startswith(("text.", "transformer.")) for t in targets)  # the text tower too
    if family == "hf-bert-text":
        assert "text.transformer.encoder.layer.1.attention.self.query" in targets
        assert "text.transformer.encoder.layer.1.output.dense" in targets
    prepared = prepare(model, cfg)
    lora = [n for n, p in prepared.named_parameters() if p.requires_grad and "lora_" in n]
    assert len(lora) == 2 * len(targets)  # an A and a B matrix per adapted layer
    images, texts = batch(prepared)
    moved = one_step(prepared.train(), images, texts)
    assert max(v for n, v in moved.items() if "lora_B" in n) > 0  # the step reached the adapters
    prepared.eval()
    merged = merged_clip(prepared, cfg).eval()
    with torch.no_grad():
        a = prepared.encode_image(images, normalize=True), prepared.encode_text(texts, normalize=True)
        b = merged.encode_image(images, normalize=True), merged.encode_text(texts, normalize=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_lora_refuses_a_convolutional_resnet_tower_by_name(hf_dir: Path, tmp_path: Path) -> None:
    model = build("resnet", hf_dir, tmp_path)
    with pytest.raises(ValueError, match=r"no .* layers in the visual tower \(ModifiedResNet\).*'full' or 'frozen'"):
        prepare(model, AdaptConfig(mode="lora"))
    prepare(model, AdaptConfig(mode="lora", towers=["text"]))  # the text tower alone is fine


def test_lora_modules_a_tower_does_not_have_are_refused(hf_dir: Path, tmp_path: Path) -> None:
    model = build("timm-convnext", hf_dir, tmp_path)  # ConvNeXt blocks have no attention
    with pytest.raises(ValueError, match=r"visual tower \(TimmModel\)"):
        prepare(model, AdaptConfig(mode="lora", lora_modules=["q_proj", "v_proj"]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_frozen_trains_each_towers_projection(family: str, hf_dir: Path, tmp_path: Path) -> None:
    model = build(family, hf_dir, tmp_path)
    prepared = prepare(model, AdaptConfig(mode="frozen"))
    trainable = {n for n, p in prepared.named_parameters() if p.requires_grad}
    projections = set(projection_parameters(model))
    scales = {n for n in ("logit_scale", "logit_bias") if isinstance(getattr(model, n, None), torch.nn.Parameter)}
    assert trainable == projections | scales
    assert any(n.startswith("visual.") for n in projections) and any(not n.startswith("visual.") for n in projections)
    images, texts = batch(prepared)
    moved = one_step(prepared.train(), images, texts)
    assert all(moved[n] > 0 for n in projections if n.endswith("weight") or "." not in n)
