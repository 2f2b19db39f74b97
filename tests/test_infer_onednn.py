"""fp32 inference through oneDNN on AMD CPUs (pipelines/infer/onednn.py): which calls it takes over, that their results
equal torch's own to float rounding, that every other call runs as torch runs it, and that only an AMD CPU gets it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

import pipelines.infer.onednn as onednn
from pipelines.infer.device import inference_precision
from pipelines.infer.onednn import OneDnnFp32

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.mkldnn, "_linear_pointwise"), reason="torch without oneDNN's linear")


@pytest.fixture
def onednn_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The input shapes of the linear layers the mode ran on oneDNN."""
    calls: list[tuple[int, ...]] = []
    real = onednn._linear

    def counted(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(onednn, "_linear", counted)
    return calls


def test_linear_layers_run_on_onednn_and_equal_torchs(onednn_calls: list) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 40)
    no_bias = torch.nn.Linear(96, 40, bias=False)
    inputs = [torch.randn(7, 96), torch.randn(3, 5, 96), torch.randn(5, 3, 96).transpose(0, 1)]  # the last not contiguous
    with torch.no_grad():
        expected = [m(x) for x in inputs for m in (layer, no_bias)]
        with OneDnnFp32():
            got = [m(x) for x in inputs for m in (layer, no_bias)]
    assert len(onednn_calls) == 6
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def _attention(batch_first: bool = True) -> torch.nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(64, 4, batch_first=batch_first).eval()
    torch.nn.init.normal_(mha.in_proj_bias)  # non-zero biases, so dropping one would show
    torch.nn.init.normal_(mha.out_proj.bias)
    return mha


@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_self_attention_runs_on_onednn_and_equals_torchs(onednn_calls: list, mask: str | None) -> None:
    mha, x = _attention(), torch.randn(3, 9, 64)
    causal = mask is not None
    if mask == "float":  # open_clip's text tower's causal mask
        mask = torch.full((9, 9), float("-inf")).triu_(1)
    elif mask == "bool":  # True: not attended; nn.MultiheadAttention makes it a float mask before the functional
        mask = torch.ones(9, 9, dtype=torch.bool).triu_(1)
    with torch.no_grad():
        expected, _ = mha(x, x, x, need_weights=False, attn_mask=mask)
        with OneDnnFp32():
            got, weights = mha(x, x, x, need_weights=False, attn_mask=mask)
    assert weights is None and onednn_calls == [(9, 3, 64), (9, 3, 64)]  # the in and out projections
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if causal:  # the mask was applied: the first position sees only itself
        with torch.no_grad(), OneDnnFp32():
            first, _ = mha(x[:, :1], x[:, :1], x[:, :1], need_weights=False)
        torch.testing.assert_close(got[:, :1], first, rtol=1e-5, atol=1e-5)


def test_other_calls_run_as_torch_runs_them(onednn_calls: list) -> None:
    mha, x, y = _attention(), torch.randn(2, 6, 64), torch.randn(2, 4, 64)
    sequence_first = x.transpose(0, 1)  # how nn.MultiheadAttention hands a batch to the functional
    double = torch.nn.Linear(64, 8).double()
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, -2:] = True
    cases = {
        "attention weights asked for": lambda: mha(x, x, x)[1],
        "cross-attention": lambda: mha(x, y, y, need_weights=False)[0],
        "a padding mask": lambda: mha(x, x, x, key_padding_mask=padding, need_weights=False)[0],
        "a boolean mask to the functional": lambda: F.multi_head_attention_forward(
            sequence_first, sequence_first, sequence_first, 64, 4, mha.in_proj_weight, mha.in_proj_bias, None, None, False,
            0.0, mha.out_proj.weight, mha.out_proj.bias, training=False, need_weights=False, attn_mask=torch.ones(6, 6).bool().triu_(1))[0],
        "a float64 input": lambda: double(x.double()),
    }
    _run_as_torch_runs_them(cases, torch.nn.Linear(64, 8), x)
    assert onednn_calls == []


def _run_as_torch_runs_them(cases: dict[str, Callable[[], torch.Tensor]], module: torch.nn.Module, x: torch.Tensor) -> None:
    """Each case gives inside the mode what it gives outside; inside it, `module` still gets gradients and autocast's dtype."""
    for name, call in cases.items():
        with torch.no_grad():
            expected = call()
            with OneDnnFp32():
                got = call()
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=name)
    with OneDnnFp32():
        module(x).sum().backward()  # weights that need a gradient: torch's op, which has one
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            assert module(x).dtype == torch.bfloat16  # autocast still decides
    assert module.weight.grad is not None


def test_open_clip_towers_embed_as_in_torchs_fp32(tiny, onednn_calls: list) -> None:  # conftest's tiny open_clip model
    model = tiny.model.eval()
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = tiny.tokenizer(["a lake", "a forest with a river", "farmland"])
    with torch.no_grad():
        expected = model.encode_image(pixels), model.encode_text(tokens)
        with OneDnnFp32():
            got = model.encode_image(pixels), model.encode_text(tokens)
    assert len(onednn_calls) > 8  # both towers' projections and MLPs
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.fixture
def cpu_made_by(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[[str | None], None]]:
    """Set the vendor /proc/cpuinfo names (None: no such file) for the vendor checks; their caches cleared before and after."""
    def made_by(vendor: str | None) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        if vendor:
            cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 26\n")
        monkeypatch.setattr(onednn, "_CPUINFO", cpuinfo)
        onednn.cpu_vendor.cache_clear()
        onednn.onednn_fp32_preferred.cache_clear()

    yield made_by
    onednn.cpu_vendor.cache_clear()
    onednn.onednn_fp32_preferred.cache_clear()


@pytest.mark.parametrize(("vendor", "preferred"), [("AuthenticAMD", True), ("GenuineIntel", False), (None, False)])
def test_only_an_amd_cpu_gets_onednn(cpu_made_by: Callable[[str | None], None], vendor: str | None, preferred: bool) -> None:
    cpu_made_by(vendor)
    assert onednn.onednn_fp32_preferred() is preferred
    cpu = torch.device("cpu")
    assert isinstance(inference_precision(cpu, "fp32"), OneDnnFp32) is preferred
    assert isinstance(inference_precision(cpu), OneDnnFp32) is preferred  # the pipeline stages' rule: fp32 on a CPU
    assert isinstance(inference_precision(cpu, "bf16"), torch.autocast)


def test_fp32_embeddings_of_the_encoder_are_the_models_under_inference_precision(tiny) -> None:
    from pipelines.infer.clip import embed_image_batch

    pixels = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    with torch.no_grad():
        stock = F.normalize(tiny.model.encode_image(pixels), dim=-1).numpy()
        with inference_precision(cpu, "fp32"):
            expected = F.normalize(tiny.model.encode_image(pixels), dim=-1).numpy()
    got = embed_image_batch(tiny.model, pixels, cpu, "fp32")
    assert (got == expected).all()
    assert abs(got - stock).max() < 1e-5


@pytest.fixture
def conv_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The input shapes of the 3D convolutions the mode ran on oneDNN."""
    calls: list[tuple[int, ...]] = []
    real = onednn._conv3d

    def counted(x: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(onednn, "_conv3d", counted)
    return calls


def _convolutions() -> list[torch.nn.Conv3d]:
    torch.manual_seed(0)
    convs = [torch.nn.Conv3d(8, 16, (3, 3, 3), stride=(2, 2, 1), padding=(1, 1, 0)),  # the CT encoders' kind
             torch.nn.Conv3d(8, 16, 3, padding=2, dilation=2, groups=2, bias=False),
             torch.nn.Conv3d(8, 4, 1)]
    for conv in convs:
        if conv.bias is not None:
            torch.nn.init.normal_(conv.bias)  # non-zero, so a dropped bias would show
    return convs


@pytest.mark.parametrize("channels_last", [False, True])
def test_3d_convolutions_run_on_onednn_and_equal_torchs(conv_calls: list, channels_last: bool) -> None:
    # batch 1 and few channels: ATen's own choice would be its reference kernel (slow_conv3d)
    x = torch.randn(1, 8, 9, 10, 7, generator=torch.Generator().manual_seed(1))
    convs = _convolutions()
    with torch.no_grad():
        expected = [conv(x) for conv in convs]
        if channels_last:
            for conv in convs:
                conv.to(memory_format=torch.channels_last_3d)
        with OneDnnFp32():
            got = [conv(x) for conv in convs]
    assert conv_calls == [tuple(x.shape)] * 3
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == torch.float32
        assert g.is_contiguous(memory_format=torch.channels_last_3d) is channels_last  # the activations keep the weights' order
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_3d_convolutions_that_are_not_plain_fp32_inference_run_as_torch_runs_them(conv_calls: list) -> None:
    conv = _convolutions()[0]
    x = torch.randn(2, 8, 9, 10, 7, generator=torch.Generator().manual_seed(1))
    cases = {
        "a float64 input": lambda: conv.double()(x.double()),
        "an unbatched input": lambda: conv.float()(x[0]),
        "padding given as a word": lambda: F.conv3d(x, conv.weight, conv.bias, padding="same"),
    }
    _run_as_torch_runs_them(cases, conv, x)
    assert conv_calls == []


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_volumes_are_channels_last_where_every_3d_convolution_runs_on_onednn(cpu_made_by: Callable[[str | None], None],
                                                                          vendor: str) -> None:
    from pipelines.infer.device import channels_last_volumes

    cpu_made_by(vendor)
    cpu = torch.device("cpu")
    assert channels_last_volumes(cpu, "fp32") is (vendor == "AuthenticAMD")  # fp32 convolutions on oneDNN: the mode's
    assert channels_last_volumes(cpu, "bf16")  # bf16 autocast's are oneDNN's on any CPU
    assert not channels_last_volumes(torch.device("cuda"), "bf16") and not channels_last_volumes(torch.device("cuda"), "fp32")


def test_a_ct_encoder_channels_last_in_the_mode_embeds_as_built(conv_calls: list) -> None:
    from pipelines.models import volume as M

    torch.manual_seed(0)
    built = M.build_image_encoder(M.VolumeModelConfig(input_size=[32, 32, 24], image_encoder="i3d_resnet18", image_width=16)).eval()
    x = torch.randn(1, 1, 32, 32, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = built(x)
        built.to(memory_format=torch.channels_last_3d)
        with OneDnnFp32():
            got = built(x)
    assert len(conv_calls) == 20  # the stem, 16 in the blocks, 3 projections of the shortcuts
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
