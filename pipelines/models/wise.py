"""WiSE-FT (Wortsman et al., 2022): interpolate base and adapted weights, theta = (1 - a) * base + a * adapted.

a = 0 is the base model, a = 1 the adapted one; in between, the paper finds models that keep most of
the in-domain gain while losing less general ability. `interpolate` works on any two stock-structured
open_clip models with the same architecture (full fine-tuning, frozen towers, or a merged LoRA).

For LoRA, `lora_wise` merges the LoRA deltas scaled by a instead: the adapted weight of a LoRA layer is
W + s * B @ A (s = lora_alpha / r), so (1 - a) * W + a * (W + s * B @ A) = W + (a * s) * B @ A. Every
other weight is frozen in LoRA mode, equal in base and adapted, and (1 - a) * W + a * W = W; only the
non-LoRA trainables (logit_scale, logit_bias) are interpolated as such. The two routes give the same
weights up to float rounding (tests/test_wise.py), and the LoRA route needs no second full model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional

import torch
from torch import nn

if TYPE_CHECKING:  # adapt (open_clip, peft: ~2 s) is imported where a model is built: WiseConfig alone is read by every
    from pipelines.models.adapt import AdaptConfig  # evaluation's settings, the CT one's too, which runs no open_clip model


def check_alpha(alpha: float) -> float:
    """`alpha` as a float, refused outside [0, 1] (0 = base, 1 = adapted; beyond is extrapolation, not WiSE-FT)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"WiSE-FT alpha must be a number in [0, 1] (0 = base, 1 = adapted), got {alpha!r}")
    return float(alpha)


@dataclass
class WiseConfig:
    """params.yaml `<domain>.evaluate.wise`: the alphas evaluate scores (wise.json) and the one export writes."""

    alphas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # [] = no sweep
    # Exported instead of the adapted model (null: the adapted model); evaluate also scores it, as `wise`,
    # so the model card reports the weights it ships.
    export_alpha: Optional[float] = None

    def __post_init__(self) -> None:
        self.alphas = sorted({check_alpha(a) for a in self.alphas})
        if self.export_alpha is not None:
            self.export_alpha = check_alpha(self.export_alpha)


def interpolate_state(base: Mapping[str, torch.Tensor], adapted: Mapping[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * base + alpha * adapted, tensor by tensor (torch.lerp: exact at 0 and 1).

    Both state dicts must hold the same keys and shapes; non-float tensors (integer buffers) must be
    equal and are copied. Raises ValueError naming the first key that differs.
    """
    alpha = check_alpha(alpha)
    if base.keys() != adapted.keys():
        only_base, only_adapted = sorted(set(base) - set(adapted)), sorted(set(adapted) - set(base))
        raise ValueError(f"base and adapted weights differ in keys: only in base {only_base[:5]}, "
                         f"only in adapted {only_adapted[:5]}; WiSE-FT needs the same architecture")
    out: dict[str, torch.Tensor] = {}
    for key, b in base.items():
        a = adapted[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: base shape {tuple(b.shape)} but adapted {tuple(a.shape)}")
        if not a.is_floating_point():
            if not torch.equal(a, b):
                raise ValueError(f"{key}: a non-float tensor differs between base and adapted, so it cannot be interpolated")
            out[key] = a.clone()
            continue
        out[key] = torch.lerp(b.to(a.dtype), a, alpha)
    return out


def interpolate(base: nn.Module, adapted: nn.Module, alpha: float) -> nn.Module:
    """A new model: a copy of `adapted` holding (1 - alpha) * base + alpha * adapted (both left untouched)."""
    mixed = copy.deepcopy(adapted)
    with torch.no_grad():
        mixed.load_state_dict(interpolate_state(base.state_dict(), adapted.state_dict(), alpha))
    return mixed


def lora_wise(prepared: nn.Module, base: nn.Module, alpha: float) -> nn.Module:
    """A new stock-structured CLIP: the LoRA deltas of `prepared` (a peft model) merged scaled by alpha.

    The non-LoRA trainables (logit_scale, logit_bias) are interpolated between `base` and `prepared`;
    see the module docstring for why this equals interpolating the merged weights.
    """
    from peft.tuners.lora import LoraLayer

    from pipelines.models.adapt import clip_of, restore_attention

    alpha = check_alpha(alpha)
    scaled = copy.deepcopy(prepared)
    for module in scaled.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(alpha)  # scaling[adapter] *= alpha, which merge_and_unload folds in
    merged = restore_attention(scaled.merge_and_unload())
    others = [n for n, p in clip_of(prepared).named_parameters() if p.requires_grad and "lora_" not in n]
    base_state, state = base.state_dict(), merged.state_dict()
    with torch.no_grad():
        for name in others:
            if name not in base_state:
                raise ValueError(f"{name}: trained beside LoRA but absent from the base model, so it cannot be interpolated")
            state[name].copy_(torch.lerp(base_state[name].to(state[name].dtype), state[name], alpha))
    for p in merged.parameters():
        p.requires_grad_(True)  # stock defaults, as merged_clip leaves them
    return merged


def wise_clip(prepared: nn.Module, cfg: AdaptConfig, base: nn.Module, alpha: float) -> nn.Module:
    """The WiSE-FT model at `alpha` of a trained adaptation (as load_trained returns it) and its base CLIP.

    LoRA: `lora_wise`; full and frozen: `interpolate` of the base and the adapted CLIP.
    """
    from pipelines.models.adapt import clip_of, merged_clip

    if cfg.mode == "lora" and clip_of(prepared) is not prepared:
        return lora_wise(prepared, base, alpha)
    return interpolate(base, merged_clip(prepared, cfg), alpha)
