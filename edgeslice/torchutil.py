"""Small torch utilities every layer uses: a model's classifier, eval mode for a while, the per-channel pool.

The floor of the package (see docs/architecture.md): imports torch only, nothing of edgeslice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def classifier_names(model: nn.Module) -> set[str]:
    """Module names of the classifier (never sliced, never pruned)."""
    get = getattr(model, "get_classifier", None)
    heads = get() if callable(get) else None
    names = set()
    for name, module in model.named_modules():
        if heads is not None and (module is heads or any(module is m for m in heads.modules())):
            names.add(name)
    if not names:  # not a timm model: the last Linear is the classifier
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        names.update(linears[-1:])
    return names


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def pool(x: torch.Tensor) -> torch.Tensor:
    """Per-channel feature of a layer output: spatial mean for conv maps. (B, C, ...) → (B, C)."""
    return x.flatten(2).mean(2) if x.dim() > 2 else x


def pool_copy(t: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) → (B, C): :func:`pool`, as a copy (a later in-place op must not change it)."""
    p = pool(t)
    return p.clone() if p is t else p


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the classifier reads (timm's ``forward_head(..., pre_logits=True)``), shape (B, D)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)
