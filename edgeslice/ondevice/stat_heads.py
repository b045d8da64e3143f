"""The heads made from class statistics (:mod:`edgeslice.classstats`): the routed head and the discriminant (lda).

Both need the index's statistics of the old classes; the new classes' are computed on the device's new data over the
same features, and the two are pooled. Run-time imports: torch and the torch-only parts of edgeslice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..classstats import ClassStats, class_stats
from ..errors import EdgesliceError
from ..index import CriticalIndex
from ..models import ModelMeta
from ..routed import install_head_, routed_head
from ..train import iterate_batches
from .isolate import IsolationReport, frozen_classifier_inputs


def index_stats(index: CriticalIndex, meta: ModelMeta, *, isolated: bool = False) -> ClassStats:
    """The index's class statistics, checked against the model's classes (and isolated when required)."""
    stats = index.class_stats
    if stats is None:
        raise EdgesliceError(
            "the index has no class statistics, so a class-incremental head cannot be made without old data "
            "(slice the model again with this edgeslice, or use the task-incremental head: --head trained)"
        )
    if list(stats.classes) != list(meta.classes):
        raise EdgesliceError("the index's class statistics are for other classes than the model")
    if isolated and not stats.isolated:
        raise EdgesliceError(
            "the index's class statistics are not over isolated features (this model could not be isolated, or the "
            "index is from an older edgeslice): use --head lda or --head trained"
        )
    return stats


def pooled_stats(
    model: nn.Module,
    stats: ClassStats,
    new_data: Dataset,
    new_classes: list[str],
    *,
    batch_size: int,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str,
    isolated: bool,
) -> ClassStats:
    """The old classes' statistics with the new classes' (computed on ``new_data``, labels ``len(stats.classes)``
    onwards, over the same features) added."""
    old = len(stats.classes)
    shifted = ((x, y - old) for x, y in iterate_batches(new_data, max(batch_size, 1)))
    new_stats = class_stats(
        model, shifted, new_classes, dims=stats.dims, prepare=prepare, device=device,
        shrinkage=stats.shrinkage, budget=stats.budget, isolated=isolated, taps=stats.taps,
    )  # fmt: skip
    return stats.extend(new_stats)


def route_(
    model: nn.Module,
    stats: ClassStats,
    isolation: IsolationReport,
    new_data: Dataset,
    new_classes: list[str],
    prior_tasks: list[list[int]],
    *,
    batch_size: int,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str,
) -> ClassStats:
    """Install the routed head over the trained classifier; returns the statistics with the new classes added."""
    check_router_features(model, stats, isolation)
    old = len(stats.classes)
    merged = pooled_stats(model, stats, new_data, new_classes, batch_size=batch_size, prepare=prepare, device=device,
                          isolated=True)  # fmt: skip
    tasks = [*prior_tasks, list(range(old, old + len(new_classes)))]
    install_head_(model, routed_head(model.get_classifier(), merged, tasks))
    model.eval()
    return merged


def check_router_features(model: nn.Module, stats: ClassStats, isolation: IsolationReport) -> None:
    """The statistics' features (classifier inputs and taps) must be among those the isolated sub-network keeps
    exactly."""
    dims_now = frozen_classifier_inputs(model, isolation)
    taps_ok = all(
        t.layer in isolation.frozen
        and isolation.frozen[t.layer].numel() == t.mask.numel()
        and not (t.mask & ~isolation.frozen[t.layer].cpu()).any()
        for t in stats.taps
    )
    if (
        not taps_ok
        or dims_now is None
        or dims_now.numel() != stats.dims.numel()
        or (stats.dims & ~dims_now.cpu()).any()
    ):
        raise EdgesliceError(
            "the index's class statistics are over features this increment does not keep frozen "
            "(the model or index changed since slicing)"
        )


def stats_report(stats: ClassStats) -> dict[str, Any]:
    """What a report says about class statistics: size, rank, features, counts, taps."""
    return {
        "bytes": stats.nbytes(),
        "budget": stats.budget,
        "rank": int(stats.basis.shape[0]),
        "features": stats.d,
        "counts": stats.counts.tolist(),
        "shrinkage": stats.shrinkage,
        "isolated": stats.isolated,
        "taps": [{"layer": t.layer, "channels": int(t.mask.sum())} for t in stats.taps],
    }


__all__ = ["check_router_features", "index_stats", "pooled_stats", "route_", "stats_report"]
