"""Slicing the new classes of an increment on the device's own data, with the index's strategy, metric and θ.

Run-time imports: torch and the torch-only parts of edgeslice (the slicer with forward/gradient metrics; no captum).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import ArrayDataset, calibration_indices, make_prepare, targets_of, uint8_images
from ..index import CriticalIndex
from ..models import ModelMeta
from ..slicing.metrics import get_metric
from ..slicing.observe import Layer
from ..train import iterate_batches


@dataclass(frozen=True)
class NewSlices:
    """The new classes' critical sets: per class (or None), their union per layer, the slicing parameters used, and
    the seconds it took."""

    per_class: dict[str, torch.Tensor] | None
    critical: dict[str, torch.Tensor]
    used: dict[str, Any]
    seconds: float


def slice_new_classes(
    model: nn.Module,
    meta: ModelMeta,
    index: CriticalIndex,
    data: Dataset,
    new_labels: Sequence[int],
    *,
    calib_per_class: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor], dict[str, Any]]:
    """Slice the new classes on the device's own data with the index's strategy, metric and θ.

    DeepLIFT needs captum, which the device does not have: an index sliced with it is extended with Taylor
    (recorded in the returned params).

    Returns:
        (per-layer (len(new_labels), N) per-class sets, or None for strategies without them; per-layer union;
        the slicing params used).
    """
    from ..slicing.slicer import SemanticSlicer

    params = dict(index.params)
    strategy = params.get("strategy", "semantic")
    metric = params.get("metric", "taylor")
    if get_metric(metric).attribution == "deeplift":
        metric = "taylor"
    used = {"strategy": strategy, "metric": metric, "similarity": params.get("similarity", "cka")}
    layers = [Layer(name=e["name"], observe=e["observe"], channels=int(e["channels"])) for e in index.layers]
    if strategy in ("random", "magnitude"):  # data-free sets: the new classes add nothing
        return None, {la.name: torch.zeros(la.channels, dtype=torch.bool) for la in layers}, used
    calib = torch.as_tensor(calibration_indices(data, calib_per_class, seed), dtype=torch.int64)
    images, labels = uint8_images(data, calib), targets_of(data)[calib]
    calib_set = ArrayDataset(images, labels)
    prepare = make_prepare(meta)
    example = prepare(images[:2].float().div(255).to(device))
    slicer = SemanticSlicer(model, example, metric=metric, similarity=used["similarity"], layers=layers)
    num_classes = model.get_classifier().out_features
    slicer.calibrate(iterate_batches(calib_set, 100), num_classes=num_classes, prepare=prepare, device=device)
    if strategy == "semantic":
        used["theta"] = float(params.get("theta", 0.95))
        result = slicer.slice(theta=used["theta"], strategy="semantic")
    else:
        used["ratio"] = float(params.get("ratio", 0.5))
        result = slicer.slice(ratio=used["ratio"], strategy=strategy)
    used["calibration"] = {"per_class": calib_per_class, "seed": seed, "samples": len(calib_set)}
    rows = list(new_labels)
    if result.per_class is None:
        return None, {k: v.clone() for k, v in result.critical.items()}, used
    per_class = {name: sets[rows] for name, sets in result.per_class.items()}
    return per_class, {name: sets.any(0) for name, sets in per_class.items()}, used


def slice_or_skip(
    model: nn.Module,
    meta: ModelMeta,
    index: CriticalIndex,
    data: Dataset,
    new_labels: Sequence[int],
    *,
    enabled: bool,
    calib_per_class: int,
    seed: int,
    device: torch.device | str,
) -> NewSlices:
    """:func:`slice_new_classes` when ``enabled``, else empty sets (the index keeps its own), timed."""
    t = time.perf_counter()
    if enabled:
        per_class, critical, used = slice_new_classes(
            model, meta, index, data, new_labels, calib_per_class=calib_per_class, seed=seed, device=device
        )
    else:
        per_class, critical, used = None, {k: torch.zeros_like(v) for k, v in index.critical.items()}, {}
    return NewSlices(per_class, critical, used, time.perf_counter() - t)


__all__ = ["NewSlices", "slice_new_classes", "slice_or_skip"]
