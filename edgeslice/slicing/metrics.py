"""Neuron contribution metrics computed from calibration sums (paper §2.3): Avg, Var, Ens, DeepLIFT, Taylor.

Each metric maps a layer's sums to one score per channel; higher means more important. A registry (dict +
decorator + ``list_metrics``/``get_metric``) lets new metrics plug in by name. A metric that needs a backward pass
names the :class:`~edgeslice.slicing.stats.LayerStats` field holding its summed per-sample attributions
(``taylor`` or ``deeplift``); it receives that sum as its fourth argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .layerstats import LayerStats

ATTRIBUTIONS = ("taylor", "deeplift")


@dataclass(frozen=True)
class Metric:
    """A contribution metric.

    Attributes:
        name: registry name.
        score: ``fn(count, total, sq, attribution) -> scores``.
        help: one line for ``--help``.
        attribution: the LayerStats field of summed attributions it needs (``taylor``, ``deeplift``), or None for
            metrics computed from the forward pass alone.
    """

    name: str
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    help: str
    attribution: str | None = None

    @property
    def needs_gradients(self) -> bool:
        """Whether calibration must run a backward pass for this metric."""
        return self.attribution is not None


_METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, attribution: str | None = None, help: str = ""):
    """Register ``fn(count, total, sq, attribution) -> scores`` (all shaped (..., N) except count (...,)).

    Args:
        name: registry name.
        attribution: which summed attribution the metric reads (``taylor`` or ``deeplift``); None if none.
        help: one line for ``--help``.
    """
    if attribution is not None and attribution not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution {attribution!r}; valid: {', '.join(ATTRIBUTIONS)}")

    def deco(fn):
        _METRICS[name] = Metric(name=name, score=fn, help=help, attribution=attribution)
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
    "taylor", attribution="taylor", help="mean |activation x gradient of the class loss| (first-order Taylor)"
)
def _taylor(count, total, sq, taylor):
    return taylor / _safe(count)


@register_metric(
    "deeplift",
    attribution="deeplift",
    help="mean DeepLIFT (rescale) attribution of the class logit, summed over space (approximate on Hardswish nets)",
)
def _deeplift(count, total, sq, deeplift):
    return deeplift / _safe(count)


def class_scores(stats: LayerStats, metric: str) -> torch.Tensor:
    """Per-class scores, (C, N)."""
    m = get_metric(metric)
    sq = stats.sq
    return m.score(stats.count, stats.total, sq, _attribution(stats, m))


def global_scores(stats: LayerStats, metric: str) -> torch.Tensor:
    """Scores over the whole calibration set (all classes pooled), (N,)."""
    m = get_metric(metric)
    sq = stats.sq.sum(0)
    return m.score(stats.count.sum(0), stats.total.sum(0), sq, _attribution(stats, m).sum(0))


def _attribution(stats: LayerStats, metric: Metric) -> torch.Tensor:
    return getattr(stats, metric.attribution) if metric.attribution is not None else stats.taylor


def descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Channels by descending score; ties broken by channel index so the order is reproducible."""
    return torch.sort(-scores, dim=-1, stable=True).indices
