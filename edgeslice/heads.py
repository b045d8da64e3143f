"""Classifier heads of timm models, changed in place (a floor module: imports torch and errors only)."""

from __future__ import annotations

import torch
from torch import nn

from .errors import ModelError


def resize_classifier_(model: nn.Module, num_classes: int, *, seed: int = 0) -> nn.Linear:
    """Give ``model`` a fresh Linear classifier with ``num_classes`` outputs over the same input features, in place.

    timm's ``reset_classifier`` rebuilds the whole head from the architecture's original widths, and on a
    restructured model (MobileNetV3's ``conv_head`` narrowed by restructuring) it refuses or builds the wrong input
    width; this replaces only the classifier module, reading its input width from the module itself. The new rows get
    ``nn.Linear``'s default initialisation under ``seed`` (the global RNG is forked).

    Raises:
        ModelError: the classifier is not a Linear layer.
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise ModelError(f"cannot resize a {type(head).__name__} classifier (a Linear is needed)")
    owner_name, _, attr = next(n for n, m in model.named_modules() if m is head).rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    new = new.to(device=head.weight.device, dtype=head.weight.dtype)
    setattr(owner, attr, new)
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return new
