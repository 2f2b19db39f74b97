"""CT model: I3D inflation, weight loading, heads, text encoder and tokenizer, model folder round trip."""
from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from pipelines.models import volume as M
from pipelines.models.report_text import (
    TextEncoder,
    demo_bert_config,
    text_encoder_from_config,
    tokenize,
    train_wordpiece_tokenizer,
)

TINY = dict(input_size=[16, 16, 12], image_width=8, embed_dim=16, text_hidden=32, text_layers=1, text_heads=2,
            vocab_size=120, context_length=24)
CORPUS = ["There is a hypodense liver lesion.", "The liver is normal.", "There is a kidney stone.",
          "The kidneys are normal.", "No pleural effusion.", "There is a pleural effusion."] * 3


def _resnet_with_stats(seed: int = 0, arch: str = "resnet18") -> torch.nn.Module:
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None).eval()
    for m in net.modules():  # non-trivial BN statistics, so the test also covers their inflation
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_i3d_depth_constant_volume_matches_2d_resnet(arch: str):
    # the I3D ResNet is built here, not from torchvision's blocks: this holds it to torchvision's 2D network
    net2d = _resnet_with_stats(arch=arch)
    net3d = M.inflate_resnet(net2d, time_dim=3).eval()
    torch.manual_seed(1)
    slice_ = torch.rand(2, 1, 48, 40)
    volume = slice_.unsqueeze(-1).repeat(1, 1, 1, 1, 9)
    with torch.no_grad():
        f2d = torch.nn.Sequential(*list(net2d.children())[:-1])(slice_.repeat(1, 3, 1, 1)).flatten(1)
        f3d = net3d(volume)
    assert f3d.shape == (2, net2d.fc.in_features)
    assert torch.allclose(f2d, f3d, atol=1e-4, rtol=1e-4), (f2d - f3d).abs().max()
    # a volume that varies along depth is not the 2D answer: the test above is not vacuous
    with torch.no_grad():
        assert not torch.allclose(net3d(volume * torch.linspace(0.2, 1, 9)), f3d, atol=1e-3)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_folds_the_batch_norms_into_the_convolutions_with_the_same_output(arch: str, channels_last: bool):
    net = M.inflate_resnet(_resnet_with_stats(arch=arch), time_dim=3).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)  # a shift too, so a fold that drops it would show
    volume = torch.rand(2, 1, 40, 36, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = net(volume)
        ready = M.for_inference(net, channels_last)
        got = net(volume)
    assert ready is net and not any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    weight = net.stages[1][0].conv2.conv.weight  # 3x3x3 with several input channels: its layout is unambiguous
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) is channels_last
    assert (got - expected).abs().max() < 1e-5 * expected.abs().max()  # float rounding (the deep resnet50's outputs reach ~50)
    M.for_inference(net, channels_last)  # again, as a second CTModel over one net does: nothing changes
    with torch.no_grad():
        assert torch.equal(net(volume), got)
    with pytest.raises(RuntimeError, match="folded"):
        net.train()  # no BN statistics left to train
    with pytest.raises(RuntimeError, match="eval"):
        M.I3DResNet("resnet18", 8).fold_batch_norms()  # a net in training mode has batch statistics, not a fixed scale


def test_inflated_kernels_are_2d_weights_divided_by_depth():
    net2d = _resnet_with_stats()
    net3d = M.inflate_resnet(net2d, time_dim=3)
    w2d = net2d.layer1[0].conv1.weight
    w3d = net3d.stages[0][0].conv1.conv.weight
    assert w3d.shape == (*w2d.shape, 3)
    for t in range(3):
        assert torch.allclose(w3d[..., t], w2d / 3)
    # 1x1 projections stay 1x1x1; RGB stem collapses to one grey channel
    assert net3d.stages[1][0].downsample[0].conv.weight.shape[-1] == 1
    assert net3d.conv1.conv.weight.shape[1] == 1


def test_build_image_encoder_loads_2d_weights(tmp_path):
    net2d = _resnet_with_stats(3)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in net2d.state_dict().items()}, str(path))
    enc = M.build_image_encoder(M.VolumeModelConfig(image_weights=str(path)))
    ref = M.inflate_resnet(net2d)
    assert torch.equal(enc.stages[3][1].conv2.conv.weight, ref.stages[3][1].conv2.conv.weight)
    torch.save(net2d.state_dict(), tmp_path / "r18.pt")
    enc_pt = M.build_image_encoder(M.VolumeModelConfig(image_weights=str(tmp_path / "r18.pt")))
    assert torch.equal(enc_pt.bn1.running_var, ref.bn1.running_var)
    save_file({"bogus": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="matching ResNet"):
        M.build_image_encoder(M.VolumeModelConfig(image_weights=str(tmp_path / "bad.safetensors")))


@pytest.mark.parametrize("arch,width", [("resnet18", 64), ("resnet34", 16), ("resnet50", 8)])
def test_a_load_builds_the_architecture_training_inflates(arch: str, width: int):
    """A load builds the I3D ResNet without torchvision's 2D network: it must take the inflated network's weights name for
    name, and with them compute what it computes."""
    cfg = M.VolumeModelConfig(image_encoder=f"i3d_{arch}", image_width=width)
    torch.manual_seed(0)
    inflated = M.build_image_encoder(cfg).eval()
    bare = M.build_image_encoder(cfg, init_from_2d=False).eval()
    assert {k: v.shape for k, v in bare.state_dict().items()} == {k: v.shape for k, v in inflated.state_dict().items()}
    bare.load_state_dict(inflated.state_dict(), strict=True)
    volumes = torch.rand(2, 1, 40, 36, 20)
    with torch.no_grad():
        assert torch.equal(bare(volumes), inflated(volumes))
    assert bare.out_dim == inflated.out_dim == width * 8 * (4 if arch == "resnet50" else 1)


def test_inflating_a_resnet_it_does_not_build_is_refused():
    with pytest.raises(ValueError, match="not a ResNet"):
        M.inflate_resnet(torchvision.models.resnet101(weights=None))


def _tiny_model(phenotypes=("a", "b", "c")):
    tok = train_wordpiece_tokenizer(CORPUS, TINY["vocab_size"], TINY["context_length"])
    torch.manual_seed(0)
    return M.build_model(M.VolumeModelConfig(**TINY), list(phenotypes), tok), tok


def test_forward_shapes_heads_and_normalisation():
    model, tok = _tiny_model()
    vols = torch.rand(3, 1, 16, 16, 12)
    tokens = tokenize(tok, CORPUS[:3], TINY["context_length"])
    out = model(vols, **tokens)
    assert out["phenotype_logits"].shape == (3, 3)
    assert out["image_features"].shape == out["text_features"].shape == (3, 16)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out["text_features"].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert "text_features" not in model(vols)  # image-only pass (staged phase 1)
    # the phenotype head is trainable by BCE: one SGD step lowers the loss on a fixed batch
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0]])
    opt = torch.optim.SGD(model.phenotype_head.parameters(), lr=1.0)
    model.eval()
    losses = []
    for _ in range(2):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.phenotype_logits(vols), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0]


def test_grad_checkpointing_gives_the_same_gradients():
    model, tok = _tiny_model()
    vols = torch.rand(2, 1, 16, 16, 12)
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.train()
        model.visual.set_grad_checkpointing(ckpt)
        torch.manual_seed(0)
        model.phenotype_logits(vols).sum().backward()
        grads.append(model.visual.stages[0][0].conv1.conv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_tokenizer_training_and_text_encoder(tmp_path):
    tok = train_wordpiece_tokenizer(CORPUS, 120, 24)
    assert "liver" in tok.get_vocab() and "[PAD]" in tok.get_vocab()
    ids = tok("The liver is normal.")["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[0] == "[CLS]" and tok.convert_ids_to_tokens(ids)[-1] == "[SEP]"
    assert "[UNK]" not in tok.convert_ids_to_tokens(ids)
    # same corpus, same ids (a rerun or resume must not renumber the embedding rows)
    assert train_wordpiece_tokenizer(CORPUS, 120, 24).get_vocab() == tok.get_vocab()
    # an unseen word splits into known pieces instead of [UNK]
    assert tok.convert_ids_to_tokens(tok("lesions")["input_ids"]) == ["[CLS]", "lesion", "##s", "[SEP]"]
    tok.save_pretrained(str(tmp_path / "tok"))
    from pipelines.models.report_text import load_tokenizer

    assert load_tokenizer(tmp_path / "tok")("The liver is normal.")["input_ids"] == ids
    enc = text_encoder_from_config(demo_bert_config(len(tok), 32, 2, 2, 24))
    assert isinstance(enc, TextEncoder)
    batch = tokenize(tok, ["no pleural effusion", "there is a kidney stone"], 24)
    assert batch["input_ids"].shape == (2, 24)
    assert enc(**batch).shape == (2, 32)


def test_model_folder_round_trip_includes_batchnorm_buffers(tmp_path):
    model, tok = _tiny_model()
    model.train()
    with torch.no_grad():
        model.phenotype_logits(torch.rand(4, 1, 16, 16, 12) * 3)  # moves BN running stats off their init
    model.eval()
    M.save_model_dir(model, ["a", "b", "c"], tok, tmp_path)
    loaded, tok2, phenos = M.load_model_dir(tmp_path)
    saved = dict(model.named_parameters()) | dict(model.named_buffers())
    found = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert found.keys() == saved.keys()
    for name, tensor in found.items():  # built without drawing weights: every one of them must come from the folder
        assert torch.equal(tensor, saved[name]), name
    vols = torch.rand(2, 1, 16, 16, 12)
    with torch.no_grad():
        assert torch.allclose(model.phenotype_logits(vols), loaded.phenotype_logits(vols), atol=1e-6)
        t = tokenize(tok2, ["the liver is normal"], 24)
        assert torch.allclose(model.encode_text(**t), loaded.encode_text(**t), atol=1e-6)
    assert phenos == ["a", "b", "c"]


def test_monai_encoder_by_name():
    cfg = M.VolumeModelConfig(image_encoder="monai:DenseNet121", embed_dim=16)
    enc = M.build_image_encoder(cfg)
    with torch.no_grad():
        assert enc.eval()(torch.rand(1, 1, 32, 32, 32)).shape == (1, 16)
    with pytest.raises(ValueError):
        M.build_image_encoder(M.VolumeModelConfig(image_encoder="monai:NoSuchNet"))


def test_activation_estimate_checkpointing_keeps_less():
    enc = M.inflate_resnet(torchvision.models.resnet18(weights=None))
    est = M.activation_bytes(enc, (1, 1, 32, 32, 24))
    assert 0 < est["stage_inputs"] < est["all"]
    assert 0 < est["max_stage"] < est["all"]
