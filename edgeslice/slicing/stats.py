"""One streaming calibration pass: per-class, per-layer sufficient statistics of every channel.

Everything kept is a sum over samples (count, Σf, Σffᵀ and summed attributions), accumulated in float64 in a fixed
order, so shards merge exactly (``merge_``) and reruns give identical bits. No activation is kept past its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .observe import Layer, eval_mode, pool


@dataclass
class LayerStats:
    """Sums for one layer; first axis is the class."""

    count: torch.Tensor  # (C,) float64 samples per class
    total: torch.Tensor  # (C, N) Σ f
    gram: torch.Tensor  # (C, N, N) Σ f fᵀ
    taylor: torch.Tensor  # (C, N) Σ |mean_space(a · ∂L/∂a)|

    @classmethod
    def zeros(cls, classes: int, channels: int) -> LayerStats:
        z = dict(dtype=torch.float64)
        return cls(
            count=torch.zeros(classes, **z),
            total=torch.zeros(classes, channels, **z),
            gram=torch.zeros(classes, channels, channels, **z),
            taylor=torch.zeros(classes, channels, **z),
        )


@dataclass
class CalibrationStats:
    """Sufficient statistics of a calibration set for every sliceable layer."""

    layers: list[Layer]
    num_classes: int
    per_layer: dict[str, LayerStats] = field(default_factory=dict)
    with_gradients: bool = False

    def merge_(self, other: CalibrationStats) -> CalibrationStats:
        """Add another shard's sums into this one (exact: sums of float64 in a fixed order)."""
        for name, s in self.per_layer.items():
            o = other.per_layer[name]
            for attr in ("count", "total", "gram", "taylor"):
                getattr(s, attr).add_(getattr(o, attr))
        return self

    @property
    def samples_per_class(self) -> torch.Tensor:
        return next(iter(self.per_layer.values())).count


def collect_stats(
    model: nn.Module,
    layers: list[Layer],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    num_classes: int,
    with_gradients: bool,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> CalibrationStats:
    """Stream ``batches`` through ``model`` once and accumulate per-class statistics at every layer.

    Args:
        model: the model (put in eval mode for the pass; its mode is restored).
        layers: from :func:`~edgeslice.slicing.observe.find_layers`.
        batches: (inputs, labels) pairs; inputs as the model expects them after ``prepare``.
        num_classes: number of classes (labels are 0..C-1).
        with_gradients: also run a backward pass of the summed cross-entropy for the Taylor scores.
        prepare: applied to each input batch on the device (normalisation).
        device: where to run.
        on_batch: called with the batch size after each batch (progress).
    """
    device = torch.device(device)
    stats = CalibrationStats(layers=layers, num_classes=num_classes, with_gradients=with_gradients)
    for layer in layers:
        stats.per_layer[layer.name] = LayerStats.zeros(num_classes, layer.channels)
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_m, _i, out):
            captured[name] = out
            # Hand a copy downstream: timm's in-place activations would otherwise overwrite what we keep.
            return out.clone()

        return hook

    handles = [modules[layer.observe].register_forward_hook(hook_for(layer.name)) for layer in layers]
    try:
        with eval_mode(model):
            for x, y in batches:
                x = x.to(device)
                y = y.to(device)
                if prepare is not None:
                    x = prepare(x)
                captured.clear()
                with torch.set_grad_enabled(with_gradients):
                    logits = model(x)
                    grads: dict[str, torch.Tensor] = {}
                    if with_gradients:
                        loss = F.cross_entropy(logits, y, reduction="sum")
                        outs = [captured[layer.name] for layer in layers]
                        for layer, g in zip(layers, torch.autograd.grad(loss, outs), strict=True):
                            grads[layer.name] = g
                _accumulate(stats, captured, grads, y)
                if on_batch is not None:
                    on_batch(len(y))
    finally:
        for h in handles:
            h.remove()
    return stats


@torch.no_grad()
def _accumulate(
    stats: CalibrationStats, captured: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], y: torch.Tensor
) -> None:
    y_cpu = y.cpu()
    present = torch.unique(y_cpu).tolist()
    for name, s in stats.per_layer.items():
        a = captured[name].detach()
        f = pool(a).to(torch.float64)  # (B, N)
        t = pool(a * grads[name]).abs().to(torch.float64) if name in grads else None  # (B, N)
        for c in present:
            sel = (y == c).nonzero().squeeze(1)
            fc = f.index_select(0, sel)
            s.count[c] += len(sel)
            s.total[c] += fc.sum(0).cpu()
            s.gram[c] += (fc.T @ fc).cpu()
            if t is not None:
                s.taylor[c] += t.index_select(0, sel).sum(0).cpu()
