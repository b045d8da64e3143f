"""Cheap selection baselines that need no calibration: weight magnitude and seeded random channel ranks.

Semantic slicing has to beat these at the same per-layer budget to be worth its calibration pass.
"""

from __future__ import annotations

import torch
from torch import nn

from .observe import Layer


def magnitude_scores(model: nn.Module, layers: list[Layer]) -> dict[str, torch.Tensor]:
    """L2 norm of each output channel's weights (Conv2d: over in/kh/kw; Linear: over inputs), float64 (N,)."""
    modules = dict(model.named_modules())
    out = {}
    for la in layers:
        w = modules[la.name].weight.detach().to("cpu", torch.float64)  # (N, ...)
        out[la.name] = w.flatten(1).norm(dim=1)
    return out


def random_scores(layers: list[Layer], seed: int) -> dict[str, torch.Tensor]:
    """A seeded random rank per channel, float64 (N,); layer ``i`` draws from its own generator ``(seed, i)``.

    Each layer's ranks depend only on the seed and the layer's position, so they do not change when another
    layer's size does.
    """
    out = {}
    for i, la in enumerate(layers):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        out[la.name] = torch.rand(la.channels, generator=g, dtype=torch.float64)
    return out
