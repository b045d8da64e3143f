"""One streaming calibration pass: per-class, per-layer sufficient statistics of every channel.

Everything kept is a sum over samples (count, Σf, Σffᵀ and summed attributions), accumulated in float64 in a fixed
order, so shards merge exactly (``merge_``) and reruns give identical bits. No activation is kept past its batch.

Per batch: a plain forward (plus a backward of the summed cross-entropy for Taylor), and for DeepLIFT one
forward/backward of ``[x; x_ref]`` under captum's rescale rules (:mod:`.deeplift`). When only DeepLIFT is asked
for, the forward statistics come from the input half of that pass, so no extra forward is run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .observe import Layer, eval_mode, pool

STAT_FIELDS = ("count", "total", "gram", "taylor", "deeplift")


@dataclass
class LayerStats:
    """Sums for one layer; first axis is the class."""

    count: torch.Tensor  # (C,) float64 samples per class
    total: torch.Tensor  # (C, N) Σ f
    gram: torch.Tensor  # (C, N, N) Σ f fᵀ
    taylor: torch.Tensor  # (C, N) Σ |mean_space(a · ∂L/∂a)|
    deeplift: torch.Tensor  # (C, N) Σ Σ_space (a − a_ref) · m  (signed DeepLIFT attribution of the class logit)

    @classmethod
    def zeros(cls, classes: int, channels: int) -> LayerStats:
        z = dict(dtype=torch.float64)
        return cls(
            count=torch.zeros(classes, **z),
            total=torch.zeros(classes, channels, **z),
            gram=torch.zeros(classes, channels, channels, **z),
            taylor=torch.zeros(classes, channels, **z),
            deeplift=torch.zeros(classes, channels, **z),
        )


@dataclass
class CalibrationStats:
    """Sufficient statistics of a calibration set for every sliceable layer.

    Attributes:
        with_gradients: Taylor sums were accumulated.
        deeplift_baseline: ``zero`` or ``mean`` when DeepLIFT sums were accumulated, else None.
        deeplift_reference: the reference input DeepLIFT used, (1, ...), or None.
    """

    layers: list[Layer]
    num_classes: int
    per_layer: dict[str, LayerStats] = field(default_factory=dict)
    with_gradients: bool = False
    deeplift_baseline: str | None = None
    deeplift_reference: torch.Tensor | None = None

    def merge_(self, other: CalibrationStats) -> CalibrationStats:
        """Add another shard's sums into this one (exact: sums of float64 in a fixed order).

        Raises:
            ValueError: the shards were collected for other layers, classes or metrics.
        """
        same_ref = (self.deeplift_reference is None) == (other.deeplift_reference is None) and (
            self.deeplift_reference is None or torch.equal(self.deeplift_reference, other.deeplift_reference)
        )
        if (
            [la.name for la in self.layers] != [la.name for la in other.layers]
            or self.num_classes != other.num_classes
            or self.with_gradients != other.with_gradients
            or self.deeplift_baseline != other.deeplift_baseline
            or not same_ref
        ):
            raise ValueError("cannot merge calibration shards collected for other layers, classes or metrics")
        for name, s in self.per_layer.items():
            o = other.per_layer[name]
            for attr in STAT_FIELDS:
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
    with_gradients: bool = False,
    deeplift: bool = False,
    baseline: str = "zero",
    reference: torch.Tensor | None = None,
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
        deeplift: also accumulate DeepLIFT attributions of each sample's own class logit.
        baseline: name of the DeepLIFT reference, recorded in the stats: ``zero`` or ``mean``.
        reference: the DeepLIFT reference input after ``prepare``, broadcastable to a batch, e.g. (1, C, H, W);
            zeros when None (see :func:`~edgeslice.slicing.deeplift.mean_input` for ``mean``).
        prepare: applied to each input batch on the device (normalisation).
        device: where to run.
        on_batch: called with the batch size after each batch (progress).
    """
    from .deeplift import BASELINES, channel_attributions

    if baseline not in BASELINES:
        raise ValueError(f"unknown DeepLIFT baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    device = torch.device(device)
    stats = CalibrationStats(
        layers=layers,
        num_classes=num_classes,
        with_gradients=with_gradients,
        deeplift_baseline=baseline if deeplift else None,
        deeplift_reference=(reference.detach().cpu().clone() if reference is not None else None) if deeplift else None,
    )
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

    ref = reference.to(device) if (deeplift and reference is not None) else None
    with eval_mode(model):
        for x, y in batches:
            x = x.to(device)
            y = y.to(device)
            if prepare is not None:
                x = prepare(x)
            acts: dict[str, torch.Tensor] = {}
            grads: dict[str, torch.Tensor] = {}
            dl: dict[str, torch.Tensor] = {}
            if deeplift:
                dl, acts = channel_attributions(model, layers, x, y, ref)
            if with_gradients or not deeplift:
                captured.clear()
                handles = [modules[la.observe].register_forward_hook(hook_for(la.name)) for la in layers]
                try:
                    with torch.set_grad_enabled(with_gradients):
                        logits = model(x)
                        if with_gradients:
                            loss = F.cross_entropy(logits, y, reduction="sum")
                            outs = [captured[la.name] for la in layers]
                            for la, g in zip(layers, torch.autograd.grad(loss, outs), strict=True):
                                grads[la.name] = g
                finally:
                    for h in handles:
                        h.remove()
                acts = dict(captured)
            _accumulate(stats, acts, grads, dl, y)
            if on_batch is not None:
                on_batch(len(y))
    return stats


@torch.no_grad()
def _accumulate(
    stats: CalibrationStats,
    captured: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    deeplift: dict[str, torch.Tensor],
    y: torch.Tensor,
) -> None:
    y_cpu = y.cpu()
    present = torch.unique(y_cpu).tolist()
    for name, s in stats.per_layer.items():
        a = captured[name].detach()
        f = pool(a).to(torch.float64)  # (B, N)
        t = pool(a * grads[name]).abs().to(torch.float64) if name in grads else None  # (B, N)
        d = deeplift[name].detach().to(torch.float64) if name in deeplift else None  # (B, N)
        for c in present:
            # Calibration batches are usually one class (the sample is sorted by class): skip the gather then.
            sel = None if len(present) == 1 else (y == c).nonzero().squeeze(1)
            fc = f if sel is None else f.index_select(0, sel)
            s.count[c] += len(fc)
            s.total[c] += fc.sum(0).cpu()
            if fc.device == s.gram.device:
                s.gram[c].addmm_(fc.T, fc)  # in place: no (N, N) temporary per batch
            else:
                s.gram[c] += (fc.T @ fc).cpu()
            if t is not None:
                s.taylor[c] += (t if sel is None else t.index_select(0, sel)).sum(0).cpu()
            if d is not None:
                s.deeplift[c] += (d if sel is None else d.index_select(0, sel)).sum(0).cpu()
