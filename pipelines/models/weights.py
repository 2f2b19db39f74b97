"""Building a model whose weights a checkpoint then replaces, without drawing random ones first."""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Iterator

import torch

# The modules whose layers call torch.nn.init's functions; some import them by name (MultiheadAttention's xavier_uniform_).
_INIT_CALLERS = ("torch.nn.init", "torch.nn.modules.activation", "torch.nn.modules.batchnorm", "torch.nn.modules.conv",
                 "torch.nn.modules.linear", "torch.nn.modules.normalization", "torch.nn.modules.sparse", "torch.nn.modules.transformer")


@contextlib.contextmanager
def weights_not_drawn() -> Iterator[None]:
    """Inside, torch.nn.init's functions leave tensors as they are: for building a model whose weights a strict load replaces.

    Drawing random weights that a checkpoint then overwrites is most of building a model: 0.6 s of
    open_clip ViT-B/32's 0.8 s, 0.55 s of the I3D ResNet-50 volume model's 0.76 s. Only for a load that
    sets every parameter and persistent buffer (a strict one: open_clip loads a full checkpoint so, and
    `volume.load_model_dir` too); buffers outside the state dict must not come from torch.nn.init
    (open_clip's causal mask is computed). The global RNG is not advanced, so what is drawn after the
    load differs from a build that drew. transformers' `no_init_weights` does the same, but importing
    it costs more than it saves (0.75 s). Not thread-safe: it swaps module attributes while it runs.
    """
    swapped = []
    try:
        for name in _INIT_CALLERS:
            module = importlib.import_module(name)
            for function in dir(torch.nn.init):
                if function.endswith("_") and not function.startswith("_") and hasattr(module, function):
                    swapped.append((module, function, getattr(module, function)))
                    setattr(module, function, _leave_as_is)
        yield
    finally:
        for module, function, original in swapped:
            setattr(module, function, original)


def _leave_as_is(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor
