"""Zero-shot classifier weights from class names and prompt templates (CLIP_benchmark's recipe).

Each class embedding is the mean of its normalized template embeddings, normalized again, so
every class gets equal weight in the dot product whatever its number of prompt tokens.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from pipelines.infer.text import encode_texts

Template = str | Callable[[str], str]


def fill_template(template: Template, classname: str) -> str:
    """"{c}" is replaced by the class name; callables (open_clip's style) are called with it."""
    if callable(template):
        return template(classname)
    # str.replace, not str.format: a template may hold other literal braces.
    return template.replace("{c}", classname)


def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> torch.Tensor:
    """Class weights of shape [embed_dim, n_classes] on the CPU, one normalized column per class."""
    if not classnames:
        raise ValueError("zero-shot classifier needs at least one class name")
    if not templates:
        raise ValueError("zero-shot classifier needs at least one prompt template")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # All prompts in one flat list, class-major, so batches can span classes; in float32 (no autocast).
    prompts = [fill_template(t, c) for c in classnames for t in templates]
    per_prompt = encode_texts(model, tokenizer, prompts, device, batch_size, precision="fp32")  # [n_classes * n_templates, D]
    per_class = F.normalize(per_prompt.view(len(classnames), len(templates), -1).mean(dim=1), dim=-1)
    return per_class.T.contiguous()
