"""fp32 inference on AMD CPUs through oneDNN's matrix multiply, not MKL's.

torch's CPU matrix multiply is MKL's sgemm, and MKL runs its AVX-512 kernels on Intel CPUs only: on an
AMD EPYC with AVX-512 it takes its AVX2 path, 60-100 GFLOP/s a core against 120-210 for oneDNN's fp32
kernels (also in torch, used by its compiler) on the same shapes; ViT-B/32 embeds 1.8-2x faster in fp32
through oneDNN (benchmarks/inference_precision.py). Results are fp32 either way and agree to float
rounding (at most about 1e-7 on ViT-B/32's normalised embeddings; the summation order differs).

`OneDnnFp32` is a torch function mode: inside it, fp32 `F.linear` on the CPU with no gradient runs on
oneDNN, and so does `nn.MultiheadAttention`'s self-attention (its projections are taken out of torch's
fused kernel; the attention itself stays `F.scaled_dot_product_attention`). So does every fp32 `F.conv3d`
(the CT encoders): ATen sends a batch of one whose batch x channels x first two spatial sizes is at most
20480 to its reference kernel (unfolded columns through MKL's sgemm), and copies channels-last activations
to channels-first for it; on oneDNN's convolution an I3D ResNet-18 at the demo's 64x64x48 runs 1.7x faster, and
the demo's CT model 2.1-2.6x with its weights channels-last too (device.channels_last_volumes, which CTModel follows).
Everything else, and any call that needs a gradient, autocast, a mask other than an additive float one or
attention weights, runs as torch would run it. `inference_precision` (device.py) enters it for fp32 on an AMD CPU.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def onednn_fp32_preferred() -> bool:
    """Whether fp32 matrix multiplies should go to oneDNN here: an AMD CPU (MKL takes its AVX2 path there) with oneDNN's linear in torch."""
    linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    return linear is not None and cpu_vendor() == "AuthenticAMD"


@functools.cache
def cpu_vendor() -> str:
    """The x86 vendor string of this machine's CPU ("GenuineIntel", "AuthenticAMD"), or "" where Linux's /proc/cpuinfo does not say."""
    try:
        with _CPUINFO.open() as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _plain_fp32(*tensors: torch.Tensor | None) -> bool:
    """fp32 CPU tensors with no gradient to track, outside autocast: the calls this mode takes over."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return all(t is None or (type(t) in (torch.Tensor, torch.nn.Parameter) and t.dtype == torch.float32 and t.device.type == "cpu")
               for t in tensors)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight.contiguous(), bias, "none", [], "")


def _linear_args(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> tuple:  # noqa: A002 (F.linear's names)
    return input, weight, bias


def _conv3d_args(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,  # noqa: A002
                 padding: Any = 0, dilation: Any = 1, groups: int = 1) -> tuple:
    return input, weight, bias, stride, padding, dilation, groups


def _triple(value: int | tuple[int, ...] | list[int]) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * 3


def _conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any, dilation: Any,
            groups: int) -> torch.Tensor:
    # channels-last out when the input or the weights are: a net with channels-last weights keeps its activations so
    return torch.ops.aten.mkldnn_convolution(x, weight, bias, _triple(padding), _triple(stride), _triple(dilation), groups)


_MHA_PARAMETERS = tuple(inspect.signature(F.multi_head_attention_forward).parameters)  # its argument names, in order


def _self_attention(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, None] | None:
    """`F.multi_head_attention_forward` for self-attention without weights out, or None where it is another case.

    The query is (T, N, E), sequence first, as `nn.MultiheadAttention` hands it over; the mask, if any, an
    additive fp32 (T, T) one, as open_clip's text tower's causal mask (`_plain_fp32` turns a boolean one away).
    """
    a = dict(zip(_MHA_PARAMETERS, args), **kwargs)  # by name, as bind() would (a tenth of its cost, on every layer's call)
    query, mask = a["query"], a.get("attn_mask")
    if not (query is a["key"] is a["value"] and query.dim() == 3 and not a.get("need_weights", True)
            and a.get("key_padding_mask") is None and a["bias_k"] is None and a["bias_v"] is None and not a["add_zero_attn"]
            and (a["dropout_p"] == 0.0 or not a.get("training", True)) and not a.get("use_separate_proj_weight", False)
            and a.get("static_k") is None and a.get("static_v") is None and not a.get("is_causal", False)
            and (mask is None or mask.dim() == 2)
            and _plain_fp32(query, a["in_proj_weight"], a["in_proj_bias"], a["out_proj_weight"], a["out_proj_bias"], mask)):
        return None
    t, n, e = query.shape
    heads = a["num_heads"]
    qkv = _linear(query, a["in_proj_weight"], a["in_proj_bias"]).view(t, n, 3, heads, e // heads).permute(2, 1, 3, 0, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)  # (N, heads, T, head dim)
    return _linear(out.permute(2, 0, 1, 3).reshape(t, n, e), a["out_proj_weight"], a["out_proj_bias"]), None


class OneDnnFp32(TorchFunctionMode):
    """Inside: fp32 linear layers, self-attention projections and 3D convolutions on the CPU run on oneDNN (see the module's docstring)."""

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        """Take over `F.linear`, `F.conv3d` and `F.multi_head_attention_forward` where they are plain fp32 CPU inference."""
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight, bias = _linear_args(*args, **kwargs)
            if x.dim() >= 2 and weight.dim() == 2 and _plain_fp32(x, weight, bias):
                return _linear(x, weight, bias)
        elif func is F.conv3d:
            x, weight, bias, stride, padding, dilation, groups = _conv3d_args(*args, **kwargs)
            if x.dim() == 5 and not isinstance(padding, str) and _plain_fp32(x, weight, bias):  # "same"/"valid": torch's
                return _conv3d(x, weight, bias, stride, padding, dilation, groups)
        elif func is F.multi_head_attention_forward:
            out = _self_attention(args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)
