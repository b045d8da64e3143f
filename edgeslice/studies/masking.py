"""The paper's pilot masking study (§3.1, Tables 1–2): accuracy after masking each band of top-ranked channels.

Channels are ranked per layer by a metric's scores, globally (whole calibration set) and per class; masking the
top 0–10 % should hurt most if the metric finds the channels that matter (see :func:`masking_study`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..slicing.metrics import class_scores, descending_order, global_scores
from ..slicing.slicer import SemanticSlicer
from .sweep import MaskedEvaluator


def band_keep(order: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Keep mask of a layer's channels with the band [lo, hi) of ``order`` (best first) masked out."""
    n = len(order)
    start, end = math.ceil(lo * n - 1e-9), math.ceil(hi * n - 1e-9)
    keep = torch.ones(n, dtype=torch.bool)
    keep[order[start:end]] = False
    return keep


def masking_study(
    slicers: dict[str, SemanticSlicer],
    evaluator: MaskedEvaluator,
    *,
    bands: int = 5,
    width: float = 0.1,
    num_classes: int,
    on_step: Callable[..., None] | None = None,
) -> list[dict[str, Any]]:
    """The paper's Tables 1–2: accuracy after masking the channels ranked in each band (top 0–10%, 10–20%, …).

    ``global``: channels ranked per layer on the whole calibration set, accuracy on the whole test set.
    ``category``: for each class, channels ranked on that class's scores, accuracy on that class's test samples;
    the row holds the mean over classes and each class's accuracy.
    """
    from ..data import class_subset

    per_class_sets = [class_subset(evaluator.test_set, [c]) for c in range(num_classes)]
    rows = []
    for metric, slicer in slicers.items():
        stats = slicer._require_stats()
        g_orders = {la.name: descending_order(global_scores(stats.per_layer[la.name], metric)) for la in slicer.layers}
        c_orders = {
            la.name: descending_order(class_scores(stats.per_layer[la.name], metric)) for la in slicer.layers
        }  # (C, N)
        for b in range(bands):
            lo, hi = b * width, (b + 1) * width
            band = f"{100 * lo:.0f}-{100 * hi:.0f}%"
            keep = {name: band_keep(order, lo, hi) for name, order in g_orders.items()}
            rows.append(
                {"metric": metric, "scope": "global", "band": band, "accuracy": evaluator.masked_accuracy(keep)}
            )
            if on_step is not None:
                on_step(1)
            accs = []
            for c, subset in enumerate(per_class_sets):
                if len(subset) == 0:
                    continue
                keep = {name: band_keep(order[c], lo, hi) for name, order in c_orders.items()}
                accs.append(evaluator.masked_accuracy(keep, subset))
            rows.append(
                {
                    "metric": metric,
                    "scope": "category",
                    "band": band,
                    "accuracy": sum(accs) / len(accs) if accs else float("nan"),
                    "per_class": accs,
                }
            )
            if on_step is not None:
                on_step(1)
    return rows


__all__ = ["band_keep", "masking_study"]
