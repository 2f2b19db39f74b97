"""Run open_clip's text tower only up to the batch's last EOT token (training and inference speed, same function).

open_clip's CLIP text tower is causal (each position attends to itself and earlier ones) and, with
`text_pool_type` 'argmax', pools the output at each text's EOT token (the highest token id). So no
token after the batch's last EOT reaches a pooled feature, nor does it receive a gradient: the
pooled features and every gradient equal those of the full `context_length` run, float rounding
apart, while the tower runs on max(EOT) + 1 positions instead of `context_length` (the demo's
captions fill a few of its 32).

`trimmed_text(model)` is a context under which the CLIP's `encode_text` (and so its forward, also
inside a peft wrapper or DDP) does this, for training; `trimmed_encode_text` is what it runs, which
`pipelines.infer.text.encode_texts` calls for evaluation, inference and the quality scorer. Both keep
the model's own `encode_text`, at the full length, for any other text tower (non-causal, other
pooling, or a class with its own `encode_text`).

open_clip is imported where it is used: evaluation's modules import this one (through
`pipelines.infer.text`), and import open_clip only when they run a model.
"""
from __future__ import annotations

import contextlib
import types
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from open_clip.model import CLIP


def mask_is_causal(mask: torch.Tensor | None) -> bool:
    """Whether an attention mask (additive float, or bool with True = masked) hides every later position."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    later = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    hidden = mask[later] if mask.dtype == torch.bool else torch.isneginf(mask[later])
    return bool(hidden.all())


def can_trim_text(clip: nn.Module) -> bool:
    """Whether `clip` is an open_clip CLIP whose text tower is causal and pools at the argmax (EOT) token.

    Not where `encode_text` is overridden, by a subclass or on the instance (a caller's wrapper, or `trimmed_text`'s own).
    """
    from open_clip.model import CLIP

    return (isinstance(clip, CLIP) and type(clip).encode_text is CLIP.encode_text and "encode_text" not in vars(clip)
            and getattr(clip, "text_pool_type", None) == "argmax" and mask_is_causal(getattr(clip, "attn_mask", None))
            and clip.positional_embedding.shape[0] == clip.attn_mask.shape[0])


def trimmed_encode_text(self: CLIP, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """open_clip CLIP.encode_text on text[:, :max EOT + 1], with the positional embedding and mask cut alike."""
    from open_clip.transformer import text_global_pool

    length = int(text.argmax(dim=-1).max()) + 1
    text = text[:, :length]
    cast_dtype = self.transformer.get_cast_dtype()
    x = self.token_embedding(text).to(cast_dtype)
    x = x + self.positional_embedding[:length].to(cast_dtype)
    x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
    x = self.ln_final(x)
    x = text_global_pool(x, text, self.text_pool_type, eos_token_id=getattr(self, "text_eos_id", None))
    if self.text_projection is not None:
        x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
    return F.normalize(x, dim=-1) if normalize else x


@contextlib.contextmanager
def trimmed_text(clip: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the context, `clip.encode_text` runs up to the last EOT (see the module docstring).

    `clip` is the CLIP itself (`pipelines.models.adapt.clip_of` of a peft model); the caller checks
    `can_trim_text(clip)` once and passes it as `enabled`. The override is an instance attribute,
    removed on exit, so the model's class, state and any copy of it stay stock open_clip.
    """
    if not enabled:
        yield
        return
    clip.encode_text = types.MethodType(trimmed_encode_text, clip)
    try:
        yield
    finally:
        del clip.encode_text
