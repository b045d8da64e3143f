"""The paper's RQ1 (§5.2, Fig. 5): the masked-accuracy sweep over metrics × strategies, and its AUC.

RQ1: for every metric × strategy, zero the channels a slice drops and measure test accuracy against the compression
rate, the share of parameters that physically removing those channels would remove. The rate is counted by
restructuring a copy of the model through torch-pruning's dependency graph, so coupled channels (depthwise,
squeeze-excite, residual stages) count once and only when removable. By default the *masked* channels are also the
coupled ones (``mask="coupled"``), so each (compression, accuracy) point describes one real restructured model before
fine-tuning; ``mask="critical"`` zeroes exactly the non-critical channels of every layer, as the paper does.

Calibration runs once for all metrics; every θ and ratio reuses the same statistics (the exact solver answers all
θ from one prefix-sum curve per class and layer).

AUC: per metric, each strategy's accuracy (%) is linearly interpolated over compression rate and averaged over the
compression range every compared strategy covers (the paper's "AUC within the same range"), so the number is a mean
accuracy in % and strategies with different ranges compare fairly.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..slicing.observe import Layer, channel_masks
from ..slicing.slicer import SemanticSlicer, SliceResult
from ..torchutil import eval_mode

DEFAULT_THETAS = tuple(round(0.90 + 0.01 * i, 2) for i in range(10))
DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 11))
MASKS = ("coupled", "critical")


def accuracy(
    model: nn.Module,
    dataset: Dataset,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> float:
    """Top-1 accuracy in percent (no progress bar: callers draw one over many evaluations)."""
    from ..train import iterate_batches

    correct = total = 0
    with torch.no_grad(), eval_mode(model):
        for x, y in iterate_batches(dataset, batch_size):
            x = x.to(device)
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(prepare(x) if prepare is not None else x)
            correct += int((logits.argmax(1).cpu() == y).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1)


def _mask_key(masks: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(name.encode())
        h.update(masks[name].to(torch.bool).numpy().tobytes())
    return h.hexdigest()


class MaskedEvaluator:
    """Compression rate and masked accuracy of keep masks, memoised by mask content.

    Args:
        model: the unsliced model (never changed; restructuring happens on copies).
        layers: its sliceable layers.
        test_set: where accuracy is measured.
        example: an input batch (after ``prepare``) for tracing the dependency graph.
        prepare / device: as for :func:`accuracy`.
        mask: ``coupled`` (zero what a restructure would remove) or ``critical`` (zero every non-critical channel).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[Layer],
        test_set: Dataset,
        *,
        example: torch.Tensor,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        mask: str = "coupled",
    ):
        if mask not in MASKS:
            raise ValueError(f"unknown mask {mask!r}; valid: {', '.join(MASKS)}")
        self.model, self.layers, self.test_set = model, layers, test_set
        self.example, self.prepare, self.device, self.mask = example, prepare, device, mask
        #: mask key → the restructure's (rate, params before, after, effective keep, norm keep)
        self._restructured: dict[str, tuple[float, int, int, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = {}
        self._accuracy: dict[str, float] = {}

    def compression(
        self, keep: dict[str, torch.Tensor], scores: dict[str, torch.Tensor] | None = None
    ) -> tuple[float, int, int, dict[str, torch.Tensor]]:
        """(compression rate, params before, params after, effective keep masks) of removing ``~keep``."""
        from ..restructure import restructure_

        key = _mask_key(keep)
        if key not in self._restructured:
            twin = copy.deepcopy(self.model)
            report = restructure_(twin, self.layers, keep, self.example, scores=scores)
            self._restructured[key] = (
                report.removed_share,
                report.params_before,
                report.params_after,
                report.effective_keep,
                report.norm_keep,
            )
        return self._restructured[key][:4]

    def masked_accuracy(
        self,
        keep: dict[str, torch.Tensor],
        dataset: Dataset | None = None,
        *,
        norm_keep: dict[str, torch.Tensor] | None = None,
    ) -> float:
        """Accuracy with the channels ``keep`` marks False zeroed at their observation points (and the channels
        ``norm_keep`` marks False at those norms' outputs: what a restructure removes after a concatenation)."""
        data = self.test_set if dataset is None else dataset
        key = _mask_key(keep) + (f"/{id(dataset)}" if dataset is not None else "") + ("/norms" if norm_keep else "")
        if key not in self._accuracy:
            with channel_masks(self.model, self.layers, keep, extra=norm_keep):
                self._accuracy[key] = accuracy(self.model, data, prepare=self.prepare, device=self.device)
        return self._accuracy[key]

    def point(self, result: SliceResult) -> dict[str, Any]:
        """Measure one slice: channels, compression rate and accuracy."""
        rate, before, after, effective = self.compression(result.critical, result.scores or None)
        masks = effective if self.mask == "coupled" else result.critical
        norms = self._restructured[_mask_key(result.critical)][4] if self.mask == "coupled" else None
        return {
            "critical_channels": result.kept_channels,
            "kept_channels": int(sum(int(m.sum()) for m in effective.values())),
            "total_channels": result.total_channels,
            "params_before": before,
            "params_after": after,
            "compression_rate": rate,
            "accuracy": self.masked_accuracy(masks, norm_keep=norms),
        }


def slices_for(
    slicer: SemanticSlicer,
    strategy: str,
    *,
    thetas: Sequence[float] = DEFAULT_THETAS,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    solver: str = "exact",
    interval: int = 1,
) -> list[tuple[str, float, SliceResult]]:
    """(setting, value, slice) for one metric × strategy: θ for semantic, ratio for category/global, and the
    per-layer budget of the semantic slice at each θ for random/magnitude."""
    if strategy == "semantic":
        return [("theta", t, slicer.slice(theta=t, solver=solver, interval=interval)) for t in thetas]
    if strategy in ("category", "global"):
        return [("ratio", r, slicer.slice(strategy=strategy, ratio=r)) for r in ratios]
    out = []
    for t in thetas:
        budget = slicer.slice(theta=t, solver=solver, interval=interval)
        out.append(("theta", t, slicer.slice(strategy=strategy, budget=budget, seed=seed)))
    return out


def rq1_sweep(
    slicers: dict[str, SemanticSlicer],
    evaluator: MaskedEvaluator,
    *,
    strategies: Sequence[str],
    thetas: Sequence[float] = DEFAULT_THETAS,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
    solver: str = "exact",
    interval: int = 1,
    on_point: Callable[..., None] | None = None,
) -> list[dict[str, Any]]:
    """Every (metric, strategy, setting) point of RQ1.

    Args:
        slicers: metric → a calibrated slicer (e.g. ``base.with_metric(m)`` sharing one calibration).
        evaluator: measures each slice.
        strategies: which strategies to sweep.
        thetas / ratios: the semantic θ values and the category/global kept ratios.
        seed: seed of ``random``.
        solver / interval: the semantic solver.
        on_point: progress callback, called once per point.

    Returns:
        One row per point: metric, strategy, setting, value and the fields of :meth:`MaskedEvaluator.point`.
    """
    rows = []
    for metric, slicer in slicers.items():
        for strategy in strategies:
            for setting, value, result in slices_for(
                slicer, strategy, thetas=thetas, ratios=ratios, seed=seed, solver=solver, interval=interval
            ):
                row = {"metric": metric, "strategy": strategy, "setting": setting, "value": value}
                row.update(evaluator.point(result))
                rows.append(row)
                if on_point is not None:
                    on_point(1, metric=metric, strategy=strategy, acc=row["accuracy"])
    return rows


def points_to_count(metrics: Sequence[str], strategies: Sequence[str], thetas: Sequence, ratios: Sequence) -> int:
    """How many RQ1 points a sweep measures (for progress bars)."""
    per = sum(len(ratios) if s in ("category", "global") else len(thetas) for s in strategies)
    return per * len(metrics)


def _curve(rows: Iterable[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Sorted (compression %, accuracy %), duplicate compression rates averaged."""
    by_x: dict[float, list[float]] = {}
    for r in rows:
        by_x.setdefault(round(100.0 * r["compression_rate"], 9), []).append(r["accuracy"])
    xs = sorted(by_x)
    return xs, [sum(by_x[x]) / len(by_x[x]) for x in xs]


def _mean_over(xs: list[float], ys: list[float], lo: float, hi: float) -> float:
    """Mean of the piecewise-linear curve through (xs, ys) over [lo, hi] (lo < hi, inside [xs[0], xs[-1]])."""

    def at(x: float) -> float:
        for i in range(len(xs) - 1):
            if xs[i] <= x <= xs[i + 1]:
                span = xs[i + 1] - xs[i]
                return ys[i] if span == 0 else ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / span
        return ys[-1] if x >= xs[-1] else ys[0]

    knots = [lo] + [x for x in xs if lo < x < hi] + [hi]
    area = sum((knots[i + 1] - knots[i]) * (at(knots[i]) + at(knots[i + 1])) / 2 for i in range(len(knots) - 1))
    return area / (hi - lo)


def auc_table(rows: list[dict[str, Any]], strategies: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per metric: the common compression range and each strategy's mean accuracy over it (the AUC).

    Returns:
        metric → ``{"range": [lo, hi] (compression %), "auc": {strategy: mean accuracy % or None},
        "order_ok": semantic > category > global (None when one of them is missing)}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for metric in dict.fromkeys(r["metric"] for r in rows):
        mine = [r for r in rows if r["metric"] == metric]
        names = [s for s in dict.fromkeys(r["strategy"] for r in mine) if strategies is None or s in strategies]
        curves = {s: _curve(r for r in mine if r["strategy"] == s) for s in names}
        lo = max((c[0][0] for c in curves.values()), default=0.0)
        hi = min((c[0][-1] for c in curves.values()), default=0.0)
        ok = hi - lo > 1e-6
        auc = {s: (_mean_over(*curves[s], lo, hi) if ok else None) for s in names}
        order = None
        if ok and all(s in auc for s in ("semantic", "category", "global")):
            order = bool(auc["semantic"] > auc["category"] > auc["global"])
        out[metric] = {"range": [lo, hi] if ok else None, "auc": auc, "order_ok": order}
    return out
