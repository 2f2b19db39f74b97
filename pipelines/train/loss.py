"""Contrastive losses for image-text training, built on open_clip's loss classes.

Every loss here is called as `loss(image_features, text_features, logit_scale, logit_bias=None)`
with the *local* (this rank's) features and returns this rank's scalar loss; with world_size > 1
it gathers features from the other ranks itself.

- "clip": open_clip's ClipLoss with local_loss=True and gather_with_grad=True. Each rank scores
  its own B rows against all W*B gathered columns; the all_gather passes gradients back to the
  rank that produced each feature, so DDP's gradient averaging over ranks yields exactly the
  gradient of the InfoNCE loss on the global batch of W*B pairs.
- "siglip": open_clip's SigLipLoss (the "gather" exchange, which works with gloo and nccl alike).
  Pairwise sigmoid loss needs a bias; if the model has none (a CLIP), this module owns a
  trainable `logit_scale` (init log 10) and `logit_bias` (init -10), as in the SigLIP paper, and
  uses them instead of the model's. The trainer then optimises and checkpoints them as `loss.*`.
"""
from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

LOSSES = ("clip", "siglip")
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0


class ClipContrastiveLoss(nn.Module):
    """Symmetric InfoNCE, features gathered across ranks with gradient (open_clip's local_loss)."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.inner = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """This rank's InfoNCE loss; `logit_scale` is the exponentiated scale, `logit_bias` is ignored."""
        # A bias shifts every logit of a softmax row equally, so it cannot change InfoNCE: drop it.
        return self.inner(image_features, text_features, logit_scale)


class SigmoidContrastiveLoss(nn.Module):
    """SigLIP pairwise sigmoid loss; owns scale and bias when the model has no logit_bias."""

    def __init__(self, rank: int = 0, world_size: int = 1, own_params: bool = True) -> None:
        super().__init__()
        self.inner = SigLipLoss(rank=rank, world_size=world_size, dist_impl="gather")
        self.owns_params = own_params
        if own_params:
            self.logit_scale = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_SCALE))  # log of the temperature
            self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS))

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """This rank's sigmoid loss, using the module's own scale and bias when it owns them."""
        if self.owns_params:
            logit_scale, logit_bias = self.logit_scale.exp(), self.logit_bias
        elif logit_bias is None:
            raise ValueError("siglip loss built for a model with logit_bias, but the model returned none")
        return self.inner(image_features, text_features, logit_scale, logit_bias)


def make_loss(name: str, rank: int = 0, world_size: int = 1, *, model_has_logit_bias: bool = False) -> nn.Module:
    """Build loss `name` ("clip" | "siglip") for this rank of `world_size`.

    `model_has_logit_bias`: for "siglip", whether the model's forward returns its own logit_bias
    (a SigLIP model); if not, the loss module carries trainable scale/bias parameters.
    """
    if name == "clip":
        return ClipContrastiveLoss(rank, world_size)
    if name == "siglip":
        return SigmoidContrastiveLoss(rank, world_size, own_params=not model_has_logit_bias)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")
