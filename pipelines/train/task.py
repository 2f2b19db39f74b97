"""The contract between the training loop and a model family, after open_clip's TrainingTask.

A task is an `nn.Module` holding the model (`self.model`) and the loss (`self.loss`). The loop
(`pipelines.train.loop.fit`) calls `task(batch, progress)`, which runs `training_forward` and
returns named losses; the loop sums them, back-propagates and steps. Because the loss lives in the
task and DDP wraps the task, parameters the loss owns (SigLIP's scale and bias) are synchronised
across ranks like the model's.

Everything else the loop needs from a family is here too: the data (`num_samples`, `batches`),
what a checkpoint holds, and the final artefacts (`save`). The loop never looks inside a batch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
from torch import nn

MAX_LOGIT_SCALE = math.log(100)  # as open_clip (and the CLIP paper): temperature at most 100
LOSS_PREFIX = "loss."


class Progress(NamedTuple):
    """Where training stands when a step starts (a NamedTuple, so DDP passes it through)."""

    step: int  # optimizer steps already taken
    epoch: int
    steps_per_epoch: int
    total_steps: int


class TrainingTask(nn.Module):
    """One model family's objective and data. Subclasses implement the abstract methods below."""

    # DDP must look for parameters that get no gradient in a step (a frozen phase, an unused scale).
    may_leave_parameters_unused: bool = False

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: Any, progress: Progress) -> dict[str, torch.Tensor]:
        """DDP calls forward; it is the training step's forward."""
        return self.training_forward(batch, progress)

    def training_forward(self, batch: Any, progress: Progress) -> dict[str, torch.Tensor]:
        """Named scalar losses for one micro-batch (the loop back-propagates their sum)."""
        raise NotImplementedError

    def num_samples(self) -> int:
        """Training samples in one epoch (the loop derives steps from it)."""
        raise NotImplementedError

    def batches(self, *, epoch: int, skip: int, batch_size: int, multiple_of: int, seed: int, rank: int,
                world_size: int) -> Iterator[Any]:
        """This rank's micro-batches of `epoch`, from micro-batch `skip` on, already on no device."""
        raise NotImplementedError

    def save(self, out_dir: Path) -> None:
        """Write the final artefacts of a finished run into `out_dir` (rank 0 only)."""
        raise NotImplementedError

    # ---- defaults most families keep

    def trainable_named(self) -> list[tuple[str, nn.Parameter]]:
        """What the optimizer updates, by checkpoint name: the model's names, the loss's under `loss.`."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        return named + [(LOSS_PREFIX + n, p) for n, p in self.loss.named_parameters()]

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the trainable parameters by checkpoint name."""
        return {n: p.detach().cpu().contiguous() for n, p in self.trainable_named()}

    def load_checkpoint_tensors(self, saved: dict[str, torch.Tensor], source: str) -> None:
        """Copy `checkpoint_tensors()` output back in; names must match exactly."""
        targets = dict(self.trainable_named())
        missing, unexpected = sorted(set(targets) - set(saved)), sorted(set(saved) - set(targets))
        if missing or unexpected:
            raise ValueError(f"{source}: checkpoint does not match the trainable parameters "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        with torch.no_grad():
            for name, param in targets.items():
                param.copy_(saved[name].to(param.device, param.dtype))

    def after_optimizer_step(self) -> None:
        """Keep every learnable temperature in CLIP's range (log scale in [0, log 100])."""
        with torch.no_grad():
            for module in (self.model, self.loss):
                scale = getattr(module, "logit_scale", None)
                if isinstance(scale, torch.Tensor):
                    scale.clamp_(0, MAX_LOGIT_SCALE)

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        """Turn on activation checkpointing in the model; False when the model has no such switch."""
        setter = getattr(self.model, "set_grad_checkpointing", None)
        if setter is None:
            return False
        setter(enable)
        return True


def full_precision(tensor: torch.Tensor) -> torch.autocast:
    """A context that turns autocast off: losses are computed in fp32, where bf16 hurts most."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)
