"""Neuron contribution metrics computed from calibration sums (paper §2.3): Avg, Var, Ens, Taylor.

Each metric maps a layer's sums to one score per channel; higher means more important. A registry (dict +
decorator + ``list_metrics``/``get_metric``) lets new metrics plug in by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .stats import LayerStats


@dataclass(frozen=True)
class Metric:
    name: str
    needs_gradients: bool
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    help: str


_METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, needs_gradients: bool = False, help: str = ""):
    """Register ``fn(count, total, sq, taylor) -> scores`` (all shaped (..., N) except count (...,))."""

    def deco(fn):
        _METRICS[name] = Metric(name=name, needs_gradients=needs_gradients, score=fn, help=help)
        return fn

    return deco


def list_metrics() -> list[str]:
    return sorted(_METRICS)


def get_metric(name: str) -> Metric:
    try:
        return _METRICS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; valid: {', '.join(list_metrics())}") from None


def _safe(count: torch.Tensor) -> torch.Tensor:
    return count.clamp_min(1.0).unsqueeze(-1)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo = x.min(-1, keepdim=True).values
    hi = x.max(-1, keepdim=True).values
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


@register_metric("avg", help="mean activation of the channel")
def _avg(count, total, sq, taylor):
    return total / _safe(count)


@register_metric("var", help="variance of the channel's activation")
def _var(count, total, sq, taylor):
    mean = total / _safe(count)
    return (sq / _safe(count) - mean * mean).clamp_min(0.0)


@register_metric("ens", help="(minmax(Avg) + minmax(Var)) / 2 within the layer")
def _ens(count, total, sq, taylor):
    return 0.5 * (_minmax(_avg(count, total, sq, taylor)) + _minmax(_var(count, total, sq, taylor)))


@register_metric(
    "taylor", needs_gradients=True, help="mean |activation x gradient of the class loss| (first-order Taylor)"
)
def _taylor(count, total, sq, taylor):
    return taylor / _safe(count)


def class_scores(stats: LayerStats, metric: str) -> torch.Tensor:
    """Per-class scores, (C, N)."""
    sq = torch.diagonal(stats.gram, dim1=-2, dim2=-1)
    return get_metric(metric).score(stats.count, stats.total, sq, stats.taylor)


def global_scores(stats: LayerStats, metric: str) -> torch.Tensor:
    """Scores over the whole calibration set (all classes pooled), (N,)."""
    sq = torch.diagonal(stats.gram, dim1=-2, dim2=-1).sum(0)
    return get_metric(metric).score(stats.count.sum(0), stats.total.sum(0), sq, stats.taylor.sum(0))


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Channels by descending score; ties broken by channel index so the order is reproducible."""
    return torch.sort(-scores, dim=-1, stable=True).indices
