"""Selection strategies and the two-step :class:`SemanticSlicer` (build once, slice many θ).

Strategies (paper §3):
- ``semantic``: per class and layer, the fewest top-ranked channels whose similarity to the whole layer reaches θ
  (Eq. 4, exact solver), union over classes;
- ``category``: the top ``ratio`` of channels per layer for each class, union over classes;
- ``global``: the top ``ratio`` of channels per layer, ranked on the whole calibration set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .metrics import class_scores, descending_order, get_metric, global_scores
from .observe import Layer, find_layers
from .solver import SIMILARITIES, min_k, prefix_similarity, similarity_gram
from .stats import CalibrationStats, collect_stats

STRATEGIES = ("semantic", "category", "global")


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


class SemanticSlicer:
    """Score every channel per class once, then slice for any θ.

    Example:
        >>> slicer = SemanticSlicer(model, example, metric="taylor")
        >>> slicer.calibrate(batches, num_classes=10)
        >>> result = slicer.slice(theta=0.95)
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, *, metric: str = "taylor", similarity: str = "cka"):
        if similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {similarity!r}; valid: {', '.join(SIMILARITIES)}")
        self.model = model
        self.metric = get_metric(metric).name
        self.similarity = similarity
        self.layers = find_layers(model, example)
        self.stats: CalibrationStats | None = None
        self._curves: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] | None = None

    def calibrate(
        self,
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        *,
        num_classes: int,
        prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        on_batch: Callable[[int], None] | None = None,
    ) -> CalibrationStats:
        """One pass over the calibration batches (forward, plus backward for gradient metrics)."""
        self.stats = collect_stats(
            self.model,
            self.layers,
            batches,
            num_classes=num_classes,
            with_gradients=get_metric(self.metric).needs_gradients,
            prepare=prepare,
            device=device,
            on_batch=on_batch,
        )
        self._curves = None
        return self.stats

    def _require_stats(self) -> CalibrationStats:
        if self.stats is None:
            raise RuntimeError("call calibrate() before slicing")
        return self.stats

    def curves(self) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """layer → per class (order, prefix similarity): everything every θ needs, computed once."""
        if self._curves is None:
            stats = self._require_stats()
            curves = {}
            for layer in self.layers:
                s = stats.per_layer[layer.name]
                scores = class_scores(s, self.metric)
                per_class = []
                for c in range(stats.num_classes):
                    order = descending_order(scores[c])
                    if float(s.count[c]) == 0:
                        per_class.append((order, None))
                        continue
                    g = similarity_gram(s.gram[c], s.total[c], s.count[c], self.similarity)
                    per_class.append((order, prefix_similarity(g, order)))
                curves[layer.name] = per_class
            self._curves = curves
        return self._curves

    def slice(
        self, *, theta: float | None = None, strategy: str = "semantic", ratio: float | None = None
    ) -> SliceResult:
        """Critical channels for one θ (semantic) or one kept ratio (category, global)."""
        stats = self._require_stats()
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
        params = {"strategy": strategy, "metric": self.metric, "similarity": self.similarity}
        critical: dict[str, torch.Tensor] = {}
        per_class: dict[str, torch.Tensor] | None = {}
        gscores = {layer.name: global_scores(stats.per_layer[layer.name], self.metric) for layer in self.layers}
        if strategy == "semantic":
            if theta is None or not 0.0 < theta <= 1.0:
                raise ValueError(f"theta must be in (0, 1], got {theta}")
            params["theta"] = float(theta)
            for layer in self.layers:
                sets = torch.zeros(stats.num_classes, layer.channels, dtype=torch.bool)
                for c, (order, sim) in enumerate(self.curves()[layer.name]):
                    if sim is None:
                        continue  # class absent from the calibration set: it selects nothing
                    k = int(min_k(sim, theta)[0])
                    sets[c, order[:k]] = True
                per_class[layer.name] = sets
                critical[layer.name] = sets.any(0)
        else:
            if ratio is None or not 0.0 < ratio <= 1.0:
                raise ValueError(f"ratio must be in (0, 1], got {ratio}")
            params["ratio"] = float(ratio)
            for layer in self.layers:
                k = max(1, math.ceil(ratio * layer.channels - 1e-9))
                if strategy == "global":
                    keep = torch.zeros(layer.channels, dtype=torch.bool)
                    keep[descending_order(gscores[layer.name])[:k]] = True
                    critical[layer.name] = keep
                    per_class = None
                else:
                    scores = class_scores(stats.per_layer[layer.name], self.metric)
                    sets = torch.zeros(stats.num_classes, layer.channels, dtype=torch.bool)
                    for c in range(stats.num_classes):
                        if float(stats.per_layer[layer.name].count[c]) > 0:
                            sets[c, descending_order(scores[c])[:k]] = True
                    per_class[layer.name] = sets
                    critical[layer.name] = sets.any(0)
        return SliceResult(layers=self.layers, critical=critical, per_class=per_class, params=params, scores=gscores)

    def k_table(self, thetas: Iterable[float]) -> dict[str, torch.Tensor]:
        """layer → (C, len(thetas)) minimal k per class for every θ at once (exact solver)."""
        th = list(thetas)
        out = {}
        for name, per_class in self.curves().items():
            rows = [
                min_k(sim, th) if sim is not None else torch.zeros(len(th), dtype=torch.int64) for _, sim in per_class
            ]
            out[name] = torch.stack(rows)
        return out
