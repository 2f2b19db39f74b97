"""The open_clip family's task: CLIP (InfoNCE) or SigLIP on curated image-text shards.

`ClipTask` trains whatever parameters of an open_clip model have requires_grad (see
pipelines/models/adapt.py: LoRA, full or frozen towers); the model must have CLIP's forward,
`(image, text) -> (image_features, text_features, logit_scale[, logit_bias])` or the equivalent dict.
Its checkpoints and final `trainable.safetensors` hold the trainable parameters by their
`named_parameters()` names, plus `loss.*` for parameters the loss owns.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from pipelines.io.shards import count_samples
from pipelines.models.adapt import clip_of
from pipelines.models.clip import preprocess_config_of
from pipelines.models.text_trim import can_trim_text, trimmed_text
from pipelines.train.checkpoint import write_safetensors_atomic
from pipelines.train.clip_data import images_smaller_than, make_train_loader
from pipelines.train.distributed import DistInfo
from pipelines.train.loop import TrainConfig
from pipelines.train.loss import make_loss
from pipelines.train.task import Progress, TrainingTask, full_precision

TRAINABLE_FILE = "trainable.safetensors"
log = logging.getLogger(__name__)


@dataclass
class ClipTrainConfig(TrainConfig):
    """params.yaml `<domain>.train` of an open_clip domain: the loop's settings plus the objective's."""

    loss: Literal["clip", "siglip"] = "clip"
    caption_variants: bool = False  # draw each sample's text from txt + json caption_variants per epoch
    workers: int = 0                # DataLoader workers

    def validate(self) -> None:
        """The loop's checks plus the worker count."""
        super().validate()
        if self.workers < 0:
            raise ValueError("workers must be >= 0")


def unpack_outputs(out: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """CLIP's forward output (tuple or dict) -> (image_features, text_features, logit_scale, logit_bias)."""
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")
    if isinstance(out, (tuple, list)) and len(out) in (3, 4):
        return out[0], out[1], out[2], (out[3] if len(out) == 4 else None)
    raise TypeError(f"unexpected model output {type(out).__name__}; expected CLIP's (image, text, scale[, bias]) or dict")


class ClipTask(TrainingTask):
    """Contrastive image-text training of an open_clip model on WebDataset shards."""

    def __init__(self, model: nn.Module, preprocess_train: Callable, tokenizer: Callable, shards: list[str],
                 cfg: ClipTrainConfig, info: DistInfo) -> None:
        if not shards:
            raise ValueError("no training shards given")
        loss = make_loss(cfg.loss, info.rank, info.world_size, model_has_logit_bias=getattr(model, "logit_bias", None) is not None)
        super().__init__(model, loss)
        self.preprocess_train, self.tokenizer = preprocess_train, tokenizer
        self.shards, self.cfg = list(shards), cfg
        self.counts = count_samples(self.shards)
        # a siglip loss that owns its scale leaves the model's logit_scale without a gradient
        self.may_leave_parameters_unused = bool(getattr(loss, "owns_params", False))
        # a causal, EOT-pooled text tower runs only up to the batch's last EOT (same features and gradients)
        self.trim_text = can_trim_text(clip_of(model))
        if info.rank == 0:
            input_size = preprocess_config_of(clip_of(model))["size"]  # what the train transform resizes to: an int or [height, width]
            small = images_smaller_than(self.shards, min(input_size) if isinstance(input_size, (tuple, list)) else int(input_size))
            if small:
                log.warning(small)

    def num_samples(self) -> int:
        """Image-text samples in the shards."""
        return sum(self.counts)

    def batches(self, *, epoch: int, skip: int, batch_size: int, multiple_of: int, seed: int, rank: int,
                world_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, tokens) micro-batches of this rank (see pipelines/train/clip_data.py)."""
        loader, _ = make_train_loader(
            self.shards, self.preprocess_train, self.tokenizer, batch_size, seed, epoch, self.cfg.workers, rank,
            world_size, counts=self.counts, skip_batches=skip, batches_multiple_of=multiple_of,
            caption_variants=self.cfg.caption_variants,
        )
        return iter(loader)

    def training_forward(self, batch: tuple[torch.Tensor, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        """The contrastive loss of one batch."""
        images, texts = batch
        with trimmed_text(clip_of(self.model), self.trim_text):
            image_f, text_f, scale, bias = unpack_outputs(self.model(images, texts))
        with full_precision(image_f):
            loss = self.loss(image_f.float(), text_f.float(), scale.float(), None if bias is None else bias.float())
        return {"contrastive": loss}

    def save(self, out_dir: Path) -> None:
        """OUT/trainable.safetensors: the trained parameters, as in a checkpoint."""
        write_safetensors_atomic(self.checkpoint_tensors(), Path(out_dir) / TRAINABLE_FILE)
