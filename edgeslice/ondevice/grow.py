"""What an increment changes besides the weights it trains: the classifier grown, the plan of what trains, the
index extended by the new classes, and the replay buffer a device may keep.

Run-time imports: torch and the torch-only parts of edgeslice (see :mod:`.learner`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import ArrayDataset, targets_of, uint8_images
from ..errors import EdgesliceError
from ..heads import resize_classifier_
from ..index import CriticalIndex
from ..models import fingerprint
from ..slicing.observe import find_layers
from .freeze import ChannelGroup, TrainPlan, make_plan


def grow_classifier_(model: nn.Module, extra: int, *, seed: int = 0) -> int:
    """Add ``extra`` outputs to the classifier in place, keeping the old rows; returns the old class count.

    Replaces the classifier (:func:`edgeslice.models.resize_classifier_`: new rows get ``nn.Linear``'s initialisation,
    seeded; works on restructured models) and copies the old rows back.
    """
    if extra < 1:
        raise ValueError(f"extra classes must be >= 1, got {extra}")
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise EdgesliceError(f"cannot grow a {type(head).__name__} classifier (a Linear is needed)")
    old = head.out_features
    weight, bias = head.weight.detach().clone(), None if head.bias is None else head.bias.detach().clone()
    new = resize_classifier_(model, old + extra, seed=seed)  # not timm's reset_classifier: see its docstring
    with torch.no_grad():
        new.weight[:old].copy_(weight)
        if bias is not None and new.bias is not None:
            new.bias[:old].copy_(bias)
    return old


def sample_fraction(dataset: Dataset, fraction: float, seed: int) -> ArrayDataset:
    """A seeded, per-class ``fraction`` of ``dataset`` (at least one item per class), as a uint8 copy."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"replay fraction must be in (0, 1], got {fraction}")
    targets = targets_of(dataset)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(targets).tolist():
        idx = (targets == c).nonzero().flatten()
        k = max(1, round(fraction * len(idx)))
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:k]].sort().values)
    keep = torch.cat(chosen)
    return ArrayDataset(uint8_images(dataset, keep), targets[keep].clone())


def stored_bytes(dataset: ArrayDataset) -> int:
    """Bytes a device needs to keep ``dataset``: uint8 pixels plus one byte per label."""
    return int(dataset.images.numel() + len(dataset))


def model_layers(model: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """The sliceable layers of ``model`` as index layer dicts."""
    return [{"name": la.name, "observe": la.observe, "channels": la.channels} for la in find_layers(model, example)]


def increment_plan(
    model: nn.Module,
    groups: list[ChannelGroup],
    frozen: dict[str, torch.Tensor],
    old_classes: int,
    *,
    info: dict[str, Any] | None = None,
) -> TrainPlan:
    """Train everything but the ``frozen`` channels and the first ``old_classes`` classifier rows (Eq. 9).

    Orphan parameters (in no channel group, not the classifier; none in MobileNetV3 or the MLP) stay frozen.
    """
    rows = model.get_classifier().out_features
    classifier = torch.arange(rows) >= old_classes
    trainable = {g.layer: ~frozen[g.layer].to(torch.bool) for g in groups}
    return make_plan(model, groups, trainable, classifier=classifier, info=info)


def extend_index(
    index: CriticalIndex,
    model: nn.Module,
    new_classes: list[str],
    per_class_new: dict[str, torch.Tensor] | None,
    critical_new: dict[str, torch.Tensor],
    used: dict[str, Any],
) -> CriticalIndex:
    """The index after an increment: classes appended, new sets added (union), bound to the grown model."""
    critical = {name: index.critical[name] | critical_new[name].to(torch.bool) for name in index.critical}
    per_class = None
    if index.per_class is not None:
        # A strategy without per-class sets (or no slicing) leaves the new classes' rows empty.
        new_rows = per_class_new or {
            name: torch.zeros(len(new_classes), m.numel(), dtype=torch.bool) for name, m in index.critical.items()
        }
        per_class = {name: torch.cat([index.per_class[name], new_rows[name].to(torch.bool)]) for name in critical}
    params = dict(index.params)
    params["increments"] = [*params.get("increments", []), {"classes": list(new_classes), **used}]
    return CriticalIndex(
        model_fingerprint=fingerprint(model),
        timm_name=index.timm_name,
        layers=[dict(e) for e in index.layers],
        critical=critical,
        per_class=per_class,
        classes=list(index.classes) + list(new_classes),
        params=params,
        calibration=dict(index.calibration),
        # Statistics are over features the trained head's increment may change: the caller re-attaches them.
        class_stats=None,
    )


__all__ = ["extend_index", "grow_classifier_", "increment_plan", "model_layers", "sample_fraction", "stored_bytes"]
