"""Building a model whose weights a checkpoint then replaces, without drawing random ones first."""
from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# What fills a model's tensors: torch.nn.init's functions (some reach a mode as themselves, e.g. normal_), and the
# in-place random fills they and the initialisers of torchvision, MONAI and transformers draw through.
_FILLS = frozenset({getattr(torch.nn.init, name) for name in dir(torch.nn.init) if name.endswith("_") and not name.startswith("_")}
                   | {torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.random_, torch.Tensor.bernoulli_,
                      torch.Tensor.exponential_, torch.Tensor.geometric_, torch.Tensor.log_normal_, torch.Tensor.cauchy_})


class weights_not_drawn(TorchFunctionMode):  # noqa: N801  (used as a context manager: `with weights_not_drawn():`)
    """Inside, tensors are not filled with random numbers: for building a model whose weights a strict load replaces.

    Drawing random weights that a checkpoint then overwrites is most of building a model: about 0.6 s
    of open_clip ViT-B/32's 0.8 s and of the I3D ResNet-50 volume model's 0.8 s. Only for a load that sets
    every parameter and persistent buffer (a strict one: open_clip loads a full checkpoint so, and
    `volume.load_model_dir` too); buffers outside the state dict must not be drawn (open_clip's causal
    mask is computed). The global RNG is not advanced, so what is drawn after the load differs from a
    build that drew.

    A torch function mode skips the fills themselves (torch.nn.init's functions, `Tensor.uniform_`,
    `normal_`, ...), in this thread only, and swaps nothing. transformers' `no_init_weights` instead
    replaces torch.nn.init's functions while it runs, so a module first imported inside (transformers'
    own initialisers) keeps the replacements for good and every later build in the process is left
    undrawn; importing it also costs more than it saves (0.75 s).
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in _FILLS:  # left as it is: torch.nn.init's functions take it as `tensor`, the methods as `self`
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))
