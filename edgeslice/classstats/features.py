"""Class statistics computed from a model: the features the router reads (:func:`router_features`: the classifier
inputs, then the frozen channels of earlier sliced layers, the taps of :func:`choose_taps`), their per-class moments
(:func:`feature_moments`), and :class:`ClassStats` fitted to a byte budget from a model and data (:func:`class_stats`)
or from exact moments (:func:`stats_from_moments`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import IndexFileError
from ..torchutil import pool_copy, pre_logits
from .statistics import DEFAULT_BUDGET, DEFAULT_SHRINKAGE, ClassStats, Tap, feature_width, fit_stats, fixed_bytes

__all__ = ["MIN_TAP_RANK", "choose_taps", "class_stats", "feature_moments", "router_features", "stats_from_moments"]


def router_features(
    model: nn.Module, x: torch.Tensor, dims: torch.Tensor, taps: Sequence[Tap] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(:func:`pre_logits` of ``x``, the statistics' features: its ``dims``, then each tap's channels pooled)."""
    outs: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda module, inputs, output: outs.__setitem__(name, pool_copy(output))

    handles = [model.get_submodule(t.layer).register_forward_hook(keep(t.layer)) for t in taps]
    try:
        f = pre_logits(model, x)
    finally:
        for h in handles:
            h.remove()
    parts = [f[:, dims.to(f.device)]] + [outs[t.layer][:, t.mask.to(f.device)] for t in taps]
    return f, torch.cat(parts, 1)


#: Taps are added while the covariance keeps at least this rank (or full rank, when it has fewer features).
MIN_TAP_RANK = 64


def choose_taps(
    report: Any,
    layers: Sequence[dict[str, Any]],
    dims: torch.Tensor,
    n_classes: int,
    budget: int,
    exclude: Sequence[str] = (),
) -> list[Tap]:
    """Frozen channels of sliced layers for the router, deepest layer first, while the budget keeps their rank.

    A layer is added while the statistics, grown to twice ``n_classes`` classes, still fit ``budget`` with the
    covariance at rank ``min(features, MIN_TAP_RANK)``; the first layer that does not fit ends the list.
    ``layers``: the index's layers (``name``) in forward order; ``exclude``: layers whose channels are
    already features (the classifier's producer).
    """
    d, taps = int(dims.sum()), []
    for layer in reversed(list(layers)):
        name = layer["name"]
        mask = report.frozen.get(name)
        if name in exclude or mask is None or not mask.any():
            continue
        cand, chosen = d + int(mask.sum()), [*taps, Tap(name, mask.clone())]
        room = budget - fixed_bytes(2 * n_classes, cand, dims, chosen)
        if room < 2 * min(cand, MIN_TAP_RANK) * (cand + 1):
            break
        d, taps = cand, chosen
    return taps


@torch.no_grad()
def feature_moments(
    model: nn.Module,
    batches: Iterable,
    num_classes: int,
    dims: torch.Tensor,
    *,
    prepare=None,
    device="cpu",
    taps: Sequence[Tap] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class counts, means (float64) and the pooled within-class scatter of :func:`router_features`.

    Labels must be in ``0..num_classes-1`` (the caller maps them).
    """
    d = feature_width(dims, taps)
    sums = torch.zeros(num_classes, d, dtype=torch.float64)
    outer = torch.zeros(d, d, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.int64)
    was = model.training
    model.eval()
    try:
        for x, y in batches:
            x = x.to(device)
            f = router_features(model, prepare(x) if prepare is not None else x, dims, taps)[1].double().cpu()
            y = y.to(torch.int64).cpu()
            sums.index_add_(0, y, f)
            counts += torch.bincount(y, minlength=num_classes)
            outer += f.T @ f
    finally:
        model.train(was)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise IndexFileError(f"no items of class label(s) {missing} to compute class statistics from")
    means = sums / counts[:, None]
    scatter = outer - (means.T * counts) @ means  # Σ_i f fᵀ − Σ_c n_c μ_c μ_cᵀ
    return counts, means, scatter


def class_stats(
    model: nn.Module,
    batches: Iterable,
    classes: Sequence[str],
    *,
    dims: torch.Tensor | None = None,
    prepare=None,
    device="cpu",
    shrinkage: float = DEFAULT_SHRINKAGE,
    budget: int = DEFAULT_BUDGET,
    isolated: bool = False,
    taps: Sequence[Tap] = (),
) -> ClassStats:
    """Statistics of ``classes`` (labels ``0..C-1`` in ``batches``) over the classifier's input features (``dims``
    of them; all by default) and the ``taps``' channels."""
    if dims is None:
        dims = torch.ones(model.get_classifier().in_features, dtype=torch.bool)
    counts, means, scatter = feature_moments(
        model, batches, len(classes), dims, prepare=prepare, device=device, taps=taps
    )
    cov = scatter / max(int(counts.sum()) - len(classes), 1)
    return fit_stats(
        list(classes), dims, counts, means, cov, shrinkage=shrinkage, budget=budget, isolated=isolated, taps=taps
    )


def stats_from_moments(
    classes: Sequence[str],
    dims: torch.Tensor,
    counts: torch.Tensor,
    means: torch.Tensor,
    scatter: torch.Tensor,
    *,
    shrinkage: float = DEFAULT_SHRINKAGE,
    budget: int = DEFAULT_BUDGET,
) -> ClassStats:
    """Index statistics (not isolated) from exact moments: per-class counts and means and the pooled within-class
    scatter (a sum) over the classifier inputs ``dims`` (bool, (D,)) — e.g. a device bundle's statistics, which a
    device grows in closed form. The covariance is the scatter over ``N − C`` (over ``N`` when that is not positive).
    """
    n, c = float(counts.sum()), len(classes)
    cov = scatter.double() / (n - c if n > c else max(n, 1.0))
    return fit_stats(list(classes), dims.bool(), counts, means.double(), cov, shrinkage=shrinkage, budget=budget)
