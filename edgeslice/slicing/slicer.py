"""Selection strategies and the two-step :class:`SemanticSlicer` (build once, slice many θ).

Strategies (paper §3):
- ``semantic``: per class and layer, the fewest top-ranked channels whose similarity to the whole layer reaches θ
  (Eq. 4, exact solver), union over classes;
- ``category``: the top ``ratio`` of channels per layer for each class, union over classes;
- ``global``: the top ``ratio`` of channels per layer, ranked on the whole calibration set;
- ``random`` / ``magnitude``: seeded random channels / the largest output-channel weight norms, either the top
  ``ratio`` per layer or exactly the per-layer budget of another slice (``budget=``), so semantic slicing can be
  compared with cheap heuristics at equal size.

Two solvers find the semantic k: ``exact`` (prefix sums, every θ at once, :mod:`.solver`) and ``scan`` (the paper's
Algorithm 1 linear scan with interval i: the first multiple of i, or N, whose prefix reaches θ).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import distributed
from .heuristics import magnitude_scores, random_scores
from .metrics import class_scores, descending_order, get_metric, global_scores
from .observe import Layer, find_layers
from .solver import SIMILARITIES, linear_scan, min_k, prefix_similarity, similarity_gram
from .stats import CalibrationStats, collect_stats

STRATEGIES = ("semantic", "category", "global", "random", "magnitude")
SOLVERS = ("exact", "scan")


@dataclass
class SliceResult:
    """Critical channels of every layer.

    Attributes:
        critical: layer name → (N,) bool, the union over classes.
        per_class: layer name → (C, N) bool, each class's own critical set (None for ``global``).
        params: how the slice was made (strategy, metric, θ or ratio, similarity).
    """

    layers: list[Layer]
    critical: dict[str, torch.Tensor]
    per_class: dict[str, torch.Tensor] | None
    params: dict
    scores: dict[str, torch.Tensor] = field(default_factory=dict)  # layer → (N,) global scores, for tie-breaking

    @property
    def kept_channels(self) -> int:
        return int(sum(int(m.sum()) for m in self.critical.values()))

    @property
    def total_channels(self) -> int:
        return int(sum(m.numel() for m in self.critical.values()))

    def critical_counts(self) -> dict[str, int]:
        """layer → number of critical channels (the per-layer budget other strategies can be matched to)."""
        return {name: int(m.sum()) for name, m in self.critical.items()}


class SemanticSlicer:
    """Score every channel per class once, then slice for any θ.

    Example:
        >>> slicer = SemanticSlicer(model, example, metric="taylor")
        >>> slicer.calibrate(batches, num_classes=10)
        >>> result = slicer.slice(theta=0.95)
        >>> same_size = slicer.slice(strategy="magnitude", budget=result)
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        *,
        metric: str = "taylor",
        similarity: str = "cka",
        baseline: str = "zero",
        layers: list[Layer] | None = None,
    ):
        """Find the sliceable layers; nothing is computed until :meth:`calibrate`.

        Args:
            model: the model to slice.
            example: one input batch (after normalisation), to find the observation points.
            metric: contribution metric (see :func:`~edgeslice.slicing.list_metrics`).
            similarity: ``cka`` (centered) or ``gram`` (the paper's Eq. 2).
            baseline: DeepLIFT reference: ``zero`` (zeros after normalisation, i.e. the dataset-mean image) or
                ``mean`` (the per-pixel mean calibration image).
            layers: the sliceable layers when already known (skips the tracing forward pass).
        """
        from .deeplift import BASELINES

        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; valid: {', '.join(SIMILARITIES)}")
        if baseline not in BASELINES:
            raise ValueError(f"unknown DeepLIFT baseline {baseline!r}; valid: {', '.join(BASELINES)}")
        self.model = model
        self.metric = get_metric(metric).name
        self.similarity = similarity
        self.baseline = baseline
        self.layers = layers if layers is not None else find_layers(model, example)
        self.stats: CalibrationStats | None = None
        # metric → layer → per class (order, prefix similarity); shared with the with_metric() copies
        self._curves: dict[str, dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]]] = {}

    def calibrate(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        *,
        num_classes: int,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        on_batch: Callable[[int], None] | None = None,
        metrics: Iterable[str] | None = None,
        class_batch: int | None = None,
        shard: bool = True,
    ) -> CalibrationStats:
        """One pass over the calibration batches (forward, plus backward for gradient metrics).

        Under torch.distributed (torchrun) every rank calls this with the same batches: each runs its round-robin
        share of the batches, then holds the features of its own classes (c mod W) and solves them; every rank
        ends with the same statistics and similarity curves, bit for bit, as one process (see :mod:`.stats`).

        Args:
            batches: (inputs, labels) pairs. With the ``mean`` DeepLIFT baseline they are read twice (once for
                the mean image): pass a re-iterable (list, or an object whose ``__iter__`` restarts); a one-shot
                iterator is materialised in memory first.
            num_classes: number of classes.
            prepare: normalisation applied to each batch on the device.
            device: where to run.
            on_batch: progress callback, called with each batch's size.
            metrics: collect the sums of these metrics too (default: only this slicer's), so that
                :meth:`with_metric` can slice by any of them without another pass.
            class_batch: accepted for compatibility and validated (>= 1), otherwise a no-op: the statistics no
                longer hold every class's Gram matrix (memory grows with the samples, and one class's Gram
                matrices are formed at a time while it is solved), so there is nothing left to stream by class.
            shard: split the batches over the torch.distributed ranks when initialised.
        """
        from .deeplift import mean_input

        wanted = [self.metric, *(get_metric(m).name for m in (metrics or ()) if get_metric(m).name != self.metric)]
        attributions = {get_metric(m).attribution for m in wanted}
        deeplift = "deeplift" in attributions
        if class_batch is not None and class_batch < 1:
            raise ValueError(f"class_batch must be >= 1, got {class_batch}")
        reference = None
        if deeplift and self.baseline == "mean":
            if iter(batches) is batches:  # a one-shot iterator: keep it to read it more than once
                batches = list(batches)
            # Every rank reads the whole set for the mean image (cheap, no model): identical on all of them.
            reference = mean_input(batches, prepare=prepare, device=device)
        self._curves = {}
        self.stats = collect_stats(
            self.model,
            self.layers,
            batches,
            num_classes=num_classes,
            with_gradients="taylor" in attributions,
            deeplift=deeplift,
            baseline=self.baseline,
            reference=reference,
            prepare=prepare,
            device=device,
            on_batch=on_batch,
            shard=shard,
        )
        if self.stats.sharded:
            # The solve is sharded by class and combined with a collective: run it now, while every rank is here.
            self._compute_curves(wanted)
        return self.stats

    def with_metric(self, metric: str) -> SemanticSlicer:
        """A slicer for another metric that shares this one's model, layers and calibration statistics.

        Raises:
            ValueError: the statistics lack the sums that metric needs (calibrate with ``metrics=``).
        """
        m = get_metric(metric)
        stats = self._require_stats()
        if (m.attribution == "taylor" and not stats.with_gradients) or (
            m.attribution == "deeplift" and stats.deeplift_baseline is None
        ):
            raise ValueError(f"the calibration did not collect {m.name!r} sums; calibrate with metrics=[{m.name!r}]")
        other = copy.copy(self)
        other.metric = m.name
        return other

    def _require_stats(self) -> CalibrationStats:
        if self.stats is None:
            raise RuntimeError("call calibrate() before slicing")
        return self.stats

    def _class_gram(self, name: str, c: int) -> torch.Tensor:
        s = self._require_stats().per_layer[name]
        return similarity_gram(s.class_gram(c), s.total[c], s.count[c], self.similarity)

    def _compute_curves(self, metrics: list[str]) -> None:
        """Similarity curves of ``metrics`` for every layer and class: each class's Gram matrix is formed once
        (from its feature rows) and serves every metric's order. Sharded: each rank solves its own classes and one
        all-reduce per metric (C × Σ N float64, each entry non-zero on one rank only: exact) shares the curves."""
        stats = self._require_stats()
        todo = [m for m in metrics if m not in self._curves]
        if not todo:
            return
        world = distributed.world_size() if stats.sharded else 1
        sims = {m: {} for m in todo}
        orders = {m: {} for m in todo}
        for layer in self.layers:
            s = stats.per_layer[layer.name]
            for m in todo:
                orders[m][layer.name] = descending_order(class_scores(s, m))
                sims[m][layer.name] = torch.zeros(stats.num_classes, layer.channels, dtype=torch.float64)
            for c in range(stats.num_classes):
                if float(s.count[c]) == 0 or not bool(s.held[c]):
                    continue
                g = similarity_gram(s.class_gram(c), s.total[c], s.count[c], self.similarity)
                for m in todo:
                    sims[m][layer.name][c] = prefix_similarity(g, orders[m][layer.name][c])
                del g
        for m in todo:
            if world > 1:
                packed = torch.cat([sims[m][la.name] for la in self.layers], 1).add_(0.0)
                distributed.all_reduce_sum_(packed)
                start = 0
                for la in self.layers:
                    sims[m][la.name] = packed[:, start : start + la.channels].clone()
                    start += la.channels
                del packed
            self._curves[m] = {
                la.name: [
                    (orders[m][la.name][c], sims[m][la.name][c] if float(stats.samples_per_class[c]) > 0 else None)
                    for c in range(stats.num_classes)
                ]
                for la in self.layers
            }

    def curves(self) -> dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]]:
        """layer → per class (order, prefix similarity): everything every θ needs, computed once.

        After a sharded calibration, a metric not asked for at :meth:`calibrate` is solved here with a collective:
        every rank must call this (as every rank runs the same program under torchrun).
        """
        if self.metric not in self._curves:
            self._compute_curves([self.metric])
        return self._curves[self.metric]

    def slice(
        self,
        *,
        theta: float | None = None,
        strategy: str = "semantic",
        ratio: float | None = None,
        budget: SliceResult | dict[str, int] | None = None,
        seed: int = 0,
        solver: str = "exact",
        interval: int = 1,
    ) -> SliceResult:
        """Critical channels for one θ (semantic) or one kept ratio / per-layer budget (the other strategies).

        Args:
            theta: similarity threshold in (0, 1] (``semantic``).
            strategy: one of :data:`STRATEGIES`.
            ratio: kept share per layer in (0, 1] (``category``, ``global``, ``random``, ``magnitude``).
            budget: instead of ``ratio`` (``random``, ``magnitude``): the number of channels to keep per layer,
                or a slice whose per-layer critical counts to match.
            seed: seed of ``random``.
            solver: ``exact`` (prefix sums) or ``scan`` (the paper's linear scan, ``semantic`` only).
            interval: the scan's step i (``scan`` only).
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        params: dict = {"strategy": strategy, "metric": self.metric, "similarity": self.similarity}
        if strategy in ("random", "magnitude"):
            return self._slice_heuristic(strategy, ratio, budget, seed)
        stats = self._require_stats()
        if self.metric == "deeplift" and stats.deeplift_baseline is not None:
            params["baseline"] = stats.deeplift_baseline
        critical: dict[str, torch.Tensor] = {}
        per_class: dict[str, torch.Tensor] | None = {}
        gscores = {layer.name: global_scores(stats.per_layer[layer.name], self.metric) for layer in self.layers}
        if strategy == "semantic":
            if theta is None or not 0.0 < theta <= 1.0:
                raise ValueError(f"theta must be in (0, 1], got {theta}")
            params["theta"] = float(theta)
            if solver == "scan":
                params.update(solver="scan", interval=int(interval))
                _check_scan(stats)
            for layer in self.layers:
                sets = torch.zeros(stats.num_classes, layer.channels, dtype=torch.bool)
                for c, (order, sim) in enumerate(self.curves()[layer.name]):
                    if sim is None:
                        continue  # class absent from the calibration set: it selects nothing
                    if solver == "exact":
                        k = int(min_k(sim, theta)[0])
                    else:
                        k = linear_scan(self._class_gram(layer.name, c), order, theta, interval)
                    sets[c, order[:k]] = True
                per_class[layer.name] = sets
                critical[layer.name] = sets.any(0)
        else:
            ratio = _check_ratio(ratio)
            params["ratio"] = float(ratio)
            for layer in self.layers:
                k = _top_k(ratio, layer.channels)
                if strategy == "global":
                    critical[layer.name] = _top_mask(gscores[layer.name], k)
                    per_class = None
                else:
                    scores = class_scores(stats.per_layer[layer.name], self.metric)
                    sets = torch.zeros(stats.num_classes, layer.channels, dtype=torch.bool)
                    for c in range(stats.num_classes):
                        if float(stats.per_layer[layer.name].count[c]) > 0:
                            sets[c] = _top_mask(scores[c], k)
                    per_class[layer.name] = sets
                    critical[layer.name] = sets.any(0)
        return SliceResult(layers=self.layers, critical=critical, per_class=per_class, params=params, scores=gscores)

    def _slice_heuristic(
        self,
        strategy: str,
        ratio: float | None,
        budget: SliceResult | dict[str, int] | None,
        seed: int,
    ) -> SliceResult:
        params: dict = {"strategy": strategy}
        if strategy == "random":
            scores = random_scores(self.layers, seed)
            params["seed"] = int(seed)
        else:
            scores = magnitude_scores(self.model, self.layers)
        if budget is not None:
            ks = budget.critical_counts() if isinstance(budget, SliceResult) else {k: int(v) for k, v in budget.items()}
            missing = [la.name for la in self.layers if la.name not in ks]
            if missing:
                raise ValueError(f"budget has no entry for layer {missing[0]!r}")
            params["budget"] = dict(budget.params) if isinstance(budget, SliceResult) else "per-layer counts"
        else:
            ratio = _check_ratio(ratio)
            params["ratio"] = float(ratio)
            ks = {la.name: _top_k(ratio, la.channels) for la in self.layers}
        critical = {}
        for la in self.layers:
            k = ks[la.name]
            if not 0 <= k <= la.channels:
                raise ValueError(f"budget {k} for layer {la.name!r} is outside 0..{la.channels}")
            critical[la.name] = _top_mask(scores[la.name], k)
        return SliceResult(layers=self.layers, critical=critical, per_class=None, params=params, scores=scores)

    def k_table(self, thetas: Iterable[float], *, solver: str = "exact", interval: int = 1) -> dict[str, torch.Tensor]:
        """layer → (C, len(thetas)) minimal k per class for every θ (exact: all θ at once; scan: one scan per θ)."""
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
        th = list(thetas)
        if solver == "scan":
            _check_scan(self._require_stats())
        out = {}
        for name, per_class in self.curves().items():
            rows = []
            for c, (order, sim) in enumerate(per_class):
                if sim is None:
                    rows.append(torch.zeros(len(th), dtype=torch.int64))
                elif solver == "exact":
                    rows.append(min_k(sim, th))
                else:
                    g = self._class_gram(name, c)
                    rows.append(torch.tensor([linear_scan(g, order, t, interval) for t in th], dtype=torch.int64))
            out[name] = torch.stack(rows)
        return out


def _check_scan(stats: CalibrationStats) -> None:
    if stats.sharded:
        raise ValueError(
            "the scan solver reads every class's features on one process: use the exact solver "
            "under torchrun (or run the scan in one process)"
        )


def _check_ratio(ratio: float | None) -> float:
    if ratio is None or not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return ratio


def _top_k(ratio: float, channels: int) -> int:
    return max(1, math.ceil(ratio * channels - 1e-9))


def _top_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[descending_order(scores)[:k]] = True
    return keep
