"""Adapt an open_clip CLIP for a domain: LoRA (via peft), full fine-tuning, or projections only.

Why attention is rewritten before LoRA: open_clip's ResidualAttentionBlock uses
nn.MultiheadAttention, whose forward reads `out_proj.weight` directly through
F.multi_head_attention_forward. peft before 0.22 wraps that case specially and applies the
out_proj update twice (output == W + 2*dW), so the trained model and its merged export
disagree (0.22 applies it once). `explicit_attention` swaps every block's attention for
`ExplicitAttention`, which holds plain q/k/v/out nn.Linear layers that peft wraps like any
other Linear: the same model, and the same parameter names, under every peft version.

The object `prepare` returns in lora mode is a `peft.PeftModel`. It behaves like the CLIP
it wraps: PeftModel/LoraModel forward missing attributes to the wrapped CLIP, whose
submodules now contain the LoRA layers, so `model.encode_image`, `model.encode_text`,
`model.logit_scale`, `model.set_grad_checkpointing` and `model(image, text)` all include
LoRA. `clip_of(model)` returns that same underlying CLIP explicitly (useful for isinstance
checks and for code that must not go through the wrapper).

Parameter names of the prepared model (what `trainable.safetensors` is keyed by) are
peft's, e.g. `base_model.model.visual.transformer.resblocks.0.attn.q_proj.lora_A.default.weight`
and `base_model.model.logit_scale`; in full/frozen mode they are plain CLIP names.
"""
from __future__ import annotations

import copy
import functools
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from safetensors.torch import load_file, save_file
from torch import nn

from pipelines.models.clip import LoadedModel, ModelSpec, load_model
from pipelines.params import build

ADAPT_SPEC_FILE = "adapt.json"
TRAINABLE_FILE = "trainable.safetensors"

AdaptMode = Literal["lora", "full", "frozen"]
Tower = Literal["visual", "text"]
LoraModule = Literal["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"]
LoraForward = Literal["peft", "merged"]



@dataclass
class AdaptConfig:
    """params.yaml `<domain>.adapt` of an image domain: what of the open_clip model trains.

    lora: LoRA on `lora_modules` of the `towers`' transformer blocks; full: every parameter of the
    `towers`; frozen: only the projections. logit_scale (and logit_bias) train when train_logit_scale.
    """

    mode: AdaptMode = "lora"
    towers: list[Tower] = field(default_factory=lambda: ["visual", "text"])
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_modules: list[LoraModule] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"])
    train_logit_scale: bool = True
    # peft: W x + s B (A x), peft's own forward, fewest FLOPs for wide layers (ViT-B and up);
    # merged: (W + s B A) x, one matmul per layer, faster where layers are narrow (the demo's 128-wide
    # model), where the rank-r matmuls cost more than they save; its backward still takes A's and B's
    # gradients through rank-r products (_MergedLoraLinearFunction). Same function, float rounding apart.
    lora_forward: LoraForward = "peft"

    def __post_init__(self) -> None:
        if self.mode != "frozen" and not self.towers:
            raise ValueError(f"mode {self.mode!r} needs at least one tower to adapt")
        if self.mode == "lora" and self.lora_forward == "merged" and self.lora_dropout > 0:
            raise ValueError("lora_forward 'merged' applies LoRA through the weights, so it cannot drop out LoRA's "
                             f"input: set lora_dropout 0 (is {self.lora_dropout}) or lora_forward 'peft'")


# --------------------------------------------------------------------------------------------
# Explicit attention


class ExplicitAttention(nn.Module):
    """nn.MultiheadAttention with separate q/k/v/out nn.Linear layers.

    Same call signature and return value `(out, weights_or_None)` as nn.MultiheadAttention
    (self- and cross-attention with equal embedding dims, no bias_k/bias_v/add_zero_attn, which
    open_clip never uses). Masks follow nn.MultiheadAttention: float masks are added to the
    scores, bool masks mark positions that may NOT be attended (True = masked).
    """

    def __init__(
            self,
            embed_dim: int,
            num_heads: int,
            dropout: float = 0.0,
            bias: bool = True,
            batch_first: bool = True,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "ExplicitAttention":
        """An equivalent ExplicitAttention: same weights, device, dtype, train mode and requires_grad flags."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise NotImplementedError("only nn.MultiheadAttention with kdim == vdim == embed_dim, "
                                      "no bias_k/bias_v and no add_zero_attn is supported")
        bias = mha.in_proj_bias is not None
        w = mha.in_proj_weight
        attn = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=bias, batch_first=mha.batch_first)
        attn.to(device=w.device, dtype=w.dtype)
        d = mha.embed_dim
        with torch.no_grad():
            for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
                proj.weight.copy_(w[i * d:(i + 1) * d])
                if bias:
                    proj.bias.copy_(mha.in_proj_bias[i * d:(i + 1) * d])
            attn.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                attn.out_proj.bias.copy_(mha.out_proj.bias)
        attn.train(mha.training)
        for p_new, p_old in zip(attn.parameters(), _mha_params_in_explicit_order(mha)):
            p_new.requires_grad_(p_old.requires_grad)
        return attn

    def to_mha(self) -> nn.MultiheadAttention:
        """Back to a stock nn.MultiheadAttention (in_proj_weight = cat(q, k, v))."""
        bias = self.q_proj.bias is not None
        w = self.q_proj.weight
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout, bias=bias,
                                    batch_first=self.batch_first, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            mha.out_proj.weight.copy_(self.out_proj.weight)
            if bias:
                mha.in_proj_bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
                mha.out_proj.bias.copy_(self.out_proj.bias)
        mha.train(self.training)
        return mha

    def _merge_masks(
            self,
            attn_mask: torch.Tensor | None,
            key_padding_mask: torch.Tensor | None,
            batch: int,
            tgt_len: int,
            src_len: int,
            dtype: torch.dtype,
    ) -> torch.Tensor | None:
        """Combine both masks into one additive float mask broadcastable to (N, H, L, S)."""
        def as_float(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
            return mask.to(dtype)

        merged = None
        if attn_mask is not None:
            merged = as_float(attn_mask)
            if merged.dim() == 3:  # (N * H, L, S) as in nn.MultiheadAttention
                merged = merged.view(batch, self.num_heads, tgt_len, src_len)
            elif merged.dim() != 2:
                raise ValueError(f"attn_mask must be 2-D or 3-D, got shape {tuple(attn_mask.shape)}")
        if key_padding_mask is not None:
            kpm = as_float(key_padding_mask).view(batch, 1, 1, src_len)
            merged = kpm if merged is None else merged + kpm
        return merged

    def forward(
            self,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            key_padding_mask: torch.Tensor | None = None,
            need_weights: bool = True,
            attn_mask: torch.Tensor | None = None,
            average_attn_weights: bool = True,
            is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend as nn.MultiheadAttention.forward does: `(out, weights)`, weights None unless `need_weights`."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)

        n, tgt_len, _ = query.shape
        src_len = key.shape[1]

        def heads(x: torch.Tensor, length: int) -> torch.Tensor:  # (N, L, D) -> (N, H, L, Dh)
            return x.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(query), tgt_len)
        k = heads(self.k_proj(key), src_len)
        v = heads(self.v_proj(value), src_len)
        mask = self._merge_masks(attn_mask, key_padding_mask, n, tgt_len, src_len, q.dtype)
        # nn.MultiheadAttention treats is_causal only as a hint when a mask is given.
        causal = is_causal and mask is None
        dropout_p = self.dropout if self.training else 0.0

        weights = None
        if need_weights:
            # SDPA does not return the weights, so compute them explicitly in this (rare) case.
            scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            if causal:
                mask = torch.full((tgt_len, src_len), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
            if mask is not None:
                scores = scores + mask
            probs = scores.softmax(dim=-1)
            weights = probs.mean(dim=1) if average_attn_weights else probs
            out = F.dropout(probs, p=dropout_p) @ v
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)

        out = self.out_proj(out.transpose(1, 2).reshape(n, tgt_len, self.embed_dim))
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _mha_params_in_explicit_order(mha: nn.MultiheadAttention) -> list[nn.Parameter]:
    """The MHA parameter feeding each ExplicitAttention parameter, in its parameters() order."""
    bias = mha.in_proj_bias is not None
    per_linear = []
    for w, b in [(mha.in_proj_weight, mha.in_proj_bias)] * 3 + [(mha.out_proj.weight, mha.out_proj.bias)]:
        per_linear += [w, b] if bias else [w]
    return per_linear


def explicit_attention(model: nn.Module) -> nn.Module:
    """Replace nn.MultiheadAttention in every open_clip ResidualAttentionBlock with ExplicitAttention, in place."""
    for block in model.modules():
        if isinstance(block, ResidualAttentionBlock) and isinstance(block.attn, nn.MultiheadAttention):
            block.attn = ExplicitAttention.from_mha(block.attn)
    return model


def restore_attention(model: nn.Module) -> nn.Module:
    """Inverse of explicit_attention: ExplicitAttention -> nn.MultiheadAttention, in place."""
    for block in model.modules():
        if isinstance(block, ResidualAttentionBlock) and isinstance(block.attn, ExplicitAttention):
            block.attn = block.attn.to_mha()
    return model


# --------------------------------------------------------------------------------------------
# Preparing a model for training


def _tower_of(param_name: str) -> str | None:
    """'visual', 'text', or None for the shared logit_scale / logit_bias (CLIP naming)."""
    if param_name in ("logit_scale", "logit_bias"):
        return None
    return "visual" if param_name.startswith("visual.") else "text"


# Where each tower family keeps the linear layers LoRA adapts, by the open_clip role names of
# `lora_modules`: (regex on the module name, roles). timm's ViT fuses q, k and v into one `qkv`.
_LORA_LAYERS: tuple[tuple[re.Pattern, tuple[str, ...]], ...] = tuple(
    (re.compile(pattern), roles) for pattern, roles in (
        # open_clip's own transformers (attention made explicit first, see module docstring)
        (r"\.resblocks\.\d+\.attn\.(q|k|v|out)_proj$", ()),
        (r"\.resblocks\.\d+\.mlp\.c_fc$", ("c_fc",)),
        (r"\.resblocks\.\d+\.mlp\.c_proj$", ("c_proj",)),
        # timm ViT blocks (SigLIP, EVA-style towers) and ConvNeXt blocks
        (r"\.blocks\.\d+\.attn\.qkv$", ("q_proj", "k_proj", "v_proj")),
        (r"\.blocks\.\d+\.attn\.proj$", ("out_proj",)),
        (r"\.blocks\.\d+\.mlp\.fc1$", ("c_fc",)),
        (r"\.blocks\.\d+\.mlp\.fc2$", ("c_proj",)),
        # Hugging Face BERT-style encoders (BERT, RoBERTa, XLM-R) behind open_clip's HFTextEncoder
        (r"\.layer\.\d+\.attention\.self\.query$", ("q_proj",)),
        (r"\.layer\.\d+\.attention\.self\.key$", ("k_proj",)),
        (r"\.layer\.\d+\.attention\.self\.value$", ("v_proj",)),
        (r"\.layer\.\d+\.attention\.output\.dense$", ("out_proj",)),
        (r"\.layer\.\d+\.intermediate\.dense$", ("c_fc",)),
        (r"\.layer\.\d+\.output\.dense$", ("c_proj",)),
    )
)


def _layer_roles(name: str) -> tuple[str, ...]:
    """The lora_modules roles a linear layer plays (empty when LoRA does not know it)."""
    for pattern, roles in _LORA_LAYERS:
        match = pattern.search(name)
        if match:
            return roles or (f"{match.group(1)}_proj",)
    return ()


def lora_targets(model: nn.Module, cfg: AdaptConfig) -> list[str]:
    """Names of the linear layers LoRA adapts: the chosen towers' block layers in the chosen roles.

    Raises ValueError naming the tower when a chosen tower has none (a convolutional ResNet, or an
    encoder family not listed in _LORA_LAYERS), rather than training nothing.
    """
    wanted = set(cfg.lora_modules)
    targets: dict[str, list[str]] = {tower: [] for tower in cfg.towers}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        tower = _tower_of(name)
        if tower in targets and wanted & set(_layer_roles(name)):
            targets[tower].append(name)
    for tower, names in targets.items():
        if not names:
            kind = type(getattr(model, "visual", None) if tower == "visual" else getattr(model, "text", model)).__name__
            raise ValueError(
                f"LoRA found no {'/'.join(sorted(wanted))} layers in the {tower} tower ({kind}); it knows open_clip "
                f"transformers, timm ViT and ConvNeXt blocks and Hugging Face BERT-style encoders. Use adapt.mode "
                f"'full' or 'frozen', other lora_modules, or leave {tower!r} out of adapt.towers."
            )
    return [n for names in targets.values() for n in names]


def projection_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters that project each tower's features into the shared embedding space.

    open_clip's own towers: visual.proj, text_projection; timm towers: the head open_clip adds
    (visual.head), else timm's classifier used as the projection (visual.trunk.head), else, when the
    trunk's pooled output is the embedding (SigLIP's MAP pooling), that attention-pooling head;
    ResNets: the attention pool's output projection; Hugging Face text towers: text.proj.
    """
    names = [n for n, _ in model.named_parameters()]

    def under(*prefixes: str) -> list[str]:
        return [n for n in names if n in prefixes or n.startswith(tuple(f"{p}." for p in prefixes))]

    visual = (under("visual.proj") or under("visual.head") or under("visual.trunk.head")
              or under("visual.trunk.attn_pool") or under("visual.attnpool.c_proj"))
    text = under("text_projection") or under("text.text_projection") or under("text.proj")
    if not visual or not text:
        missing = " and ".join(t for t, found in (("visual", visual), ("text", text)) if not found)
        raise ValueError(f"adapt.mode 'frozen' found no projection in the {missing} tower of this model; use 'lora' or 'full'")
    return visual + text


class _MergedLoraLinearFunction(torch.autograd.Function):
    """y = x (W + s B A)^T + b in one matmul; the backward reaches A and B through the rank-r path only.

    Autograd through the merged weight would form dL/d(W + s B A) = g^T x, an out x in matrix per
    layer (as costly as full fine-tuning); the chain rule through W x + s B (A x) needs only rank-r
    products: dL/dB = s g^T (x A^T), dL/dA = s (g B)^T x. W is frozen (no gradient); b gets one if it trains.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
        """The layer's output through the merged weight; saves what the backward needs."""
        merged = weight + (lora_b @ lora_a).to(weight.dtype) * scaling
        ctx.save_for_backward(x, merged, lora_a, lora_b)
        ctx.scaling = scaling
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Gradients of x (through the merged weight), of A and B (rank-r products) and of b."""
        x, merged, lora_a, lora_b = ctx.saved_tensors
        need_x, _, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        dtype = grad_out.dtype  # the forward's compute dtype (bf16 under autocast)
        grad_x = grad_a = grad_b = grad_bias = None
        if need_x:
            grad_x = (grad_out @ merged.to(dtype)).to(x.dtype)
        g = grad_out.reshape(-1, grad_out.shape[-1])
        if need_a or need_b:
            # operand orders chosen for CPU GEMMs with one side of width r: each is a rank-r product
            # with a short leading dimension (r x N @ N x d), 2-3x faster than (N x d)-first orders here
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            a, b = lora_a.to(dtype), lora_b.to(dtype)
            if need_a:
                grad_a = ((b.t() @ g.t()) @ x2 * ctx.scaling).to(lora_a.dtype)
            if need_b:
                grad_b = ((x2 @ a.t()).t() @ g * ctx.scaling).t().contiguous().to(lora_b.dtype)
        if need_bias:
            grad_bias = g.sum(0).to(merged.dtype)
        return grad_x, None, grad_bias, grad_a, grad_b, None


@functools.cache
def _merged_lora_linear_type() -> type:
    """The LoRA Linear of peft with a forward through the merged weight W + s B A (see AdaptConfig.lora_forward)."""
    from peft.tuners.lora.layer import Linear  # peft is imported on first use, as elsewhere in this module

    class MergedLoraLinear(Linear):
        """A LoRA Linear computing x (W + s B A)^T + b in one matmul (see _MergedLoraLinearFunction)."""

        def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
            """The forward of peft, except the plain case (one active adapter, not merged or disabled) in one matmul."""
            active = [a for a in self.active_adapters if a in self.lora_A]
            base = self.get_base_layer()
            if (self.disable_adapters or self.merged or args or kwargs or len(active) != 1 or active[0] in self.lora_variant
                    or self.fan_in_fan_out or base.weight.requires_grad):
                return super().forward(x, *args, **kwargs)
            name = active[0]
            return _MergedLoraLinearFunction.apply(x, base.weight, base.bias, self.lora_A[name].weight,
                                                   self.lora_B[name].weight, self.scaling[name])

    return MergedLoraLinear


def prepare(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    """Return `model` ready to train with requires_grad set per cfg.mode / cfg.towers.

    lora:   LoRA on the chosen towers' block linears (everything else frozen) -> peft.PeftModel.
            Works on open_clip's own, timm (ViT, ConvNeXt) and Hugging Face BERT-style towers.
            With lora_forward 'merged' each LoRA Linear computes through W + s B A.
    full:   every parameter of the chosen towers trains -> the CLIP itself.
    frozen: only the towers' projections train (see projection_parameters) -> the CLIP itself.
    logit_scale (and logit_bias, if any) train in every mode when cfg.train_logit_scale.
    The model is modified in place; pass a copy to keep the original.
    """
    if isinstance(model, _peft_model_type()):
        raise TypeError("model is already prepared (a PeftModel); pass the base CLIP")
    if cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        explicit_attention(model)
        lora_cfg = LoraConfig(
            target_modules=lora_targets(model, cfg),
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            bias="none",
        )
        # get_peft_model freezes every non-LoRA parameter.
        prepared = get_peft_model(model, lora_cfg)
        if cfg.lora_forward == "merged":
            from peft.tuners.lora.layer import Linear

            merged_type = _merged_lora_linear_type()
            for module in prepared.modules():
                if type(module) is Linear:
                    module.__class__ = merged_type  # same state, a forward through the merged weight
    else:
        projections = set(projection_parameters(model)) if cfg.mode == "frozen" else set()
        for name, p in model.named_parameters():
            p.requires_grad_(_tower_of(name) in cfg.towers if cfg.mode == "full" else name in projections)
        prepared = model
    clip = clip_of(prepared)
    for name in ("logit_scale", "logit_bias"):
        p = getattr(clip, name, None)
        if isinstance(p, nn.Parameter):
            p.requires_grad_(cfg.train_logit_scale)
    return prepared


def _peft_model_type() -> type:
    from peft import PeftModel
    return PeftModel


def clip_of(model: nn.Module) -> nn.Module:
    """The open_clip model inside a prepared model (the PeftModel's base CLIP, LoRA layers included)."""
    if isinstance(model, _peft_model_type()):
        return model.get_base_model()
    return model


def merged_clip(model: nn.Module, cfg: AdaptConfig) -> nn.Module:
    """A NEW stock-structured CLIP (nn.MultiheadAttention restored) with any LoRA folded in.

    The prepared model is left untouched (merging happens on a deep copy).
    """
    if cfg.mode == "lora" and isinstance(model, _peft_model_type()):
        merged = copy.deepcopy(model).merge_and_unload()
    else:
        merged = copy.deepcopy(clip_of(model))
    restore_attention(merged)
    for p in merged.parameters():
        p.requires_grad_(True)  # stock defaults: a fresh, fully trainable model
    return merged


# --------------------------------------------------------------------------------------------
# Saving / loading trained adaptations


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, keyed by the prepared model's parameter names."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: str | Path) -> None:
    """Write the model's trainable parameters (see trainable_state_dict) to a safetensors file."""
    save_file(trainable_state_dict(model), str(path))


def load_trainable(model: nn.Module, path: str | Path) -> None:
    """Copy the tensors of `path` into the prepared model's trainable parameters (strict)."""
    state = load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(
            f"{path} does not match the prepared model's trainable parameters: "
            f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)}). "
            "Was it trained with a different adapt.json or base model?"
        )
    with torch.no_grad():
        for name, p in params.items():
            if state[name].shape != p.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(state[name].shape)}, expected {tuple(p.shape)}")
            p.copy_(state[name])


def _warn_if_unreproducible(base: ModelSpec) -> None:
    # A named config without weights is a fresh random init on every load, so the trained
    # parameters would be re-applied to a different base than the one they were trained on.
    if not base.pretrained and not base.name.startswith("local-dir:"):
        warnings.warn(f"base model {base.name!r} has no pretrained weights: reloading it gives a new random "
                      "init, so the saved adaptation will not reproduce the trained model", stacklevel=3)


def write_adapt_spec(out_dir: str | Path, base: ModelSpec, cfg: AdaptConfig) -> Path:
    """Record the base model and adaptation in OUT_DIR/adapt.json; returns its path."""
    _warn_if_unreproducible(base)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ADAPT_SPEC_FILE
    path.write_text(json.dumps({"base": asdict(base), "adapt": asdict(cfg)}, indent=2) + "\n")
    return path


def read_adapt_spec(out_dir: str | Path) -> tuple[ModelSpec, AdaptConfig]:
    """The (base model, adaptation) that write_adapt_spec recorded in OUT_DIR/adapt.json."""
    path = Path(out_dir) / ADAPT_SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPT_SPEC_FILE} in {out_dir}; is it a training output folder?")
    spec = json.loads(path.read_text())
    return build(ModelSpec, spec["base"], f"{path}: base"), build(AdaptConfig, spec["adapt"], f"{path}: adapt")


def load_trained(out_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, LoadedModel]:
    """Rebuild a trained model: base from adapt.json, prepare(), then trainable.safetensors.

    Returns (prepared model in eval mode, the LoadedModel of the base, for its transforms and tokenizer).
    """
    out_dir = Path(out_dir)
    base, cfg = read_adapt_spec(out_dir)
    _warn_if_unreproducible(base)
    loaded = load_model(base, device="cpu")
    model = prepare(loaded.model, cfg)
    weights = out_dir / TRAINABLE_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {TRAINABLE_FILE} in {out_dir}")
    load_trainable(model, weights)
    model.to(device).eval()
    return model, loaded
