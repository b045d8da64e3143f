"""One streaming calibration pass: per-class, per-layer sufficient statistics of every channel.

Everything kept is a sum over samples (count, Σf, Σffᵀ and summed attributions). No activation is kept past its
batch.

Exact sums, any number of processes. Each calibration batch is a *chunk*: its per-class contribution is computed in
float64 from that batch alone, then converted to exact fixed point (:func:`edgeslice.distributed.to_fixed`, four
int64 limbs, resolution 2^-64) and added as integers. Integer addition is associative, so the totals do not depend
on the order in which chunks are added nor on which process added them: under torchrun each rank takes the chunks
at positions r, r+W, … and one all-reduce of the limbs gives, bit for bit, what one process computes. The float64
statistics are a fixed function of the integer totals (:func:`~edgeslice.distributed.from_fixed`). What the
guarantee needs from the caller: the same chunks (batch size fixed, independent of the world size — the pipeline
uses 100) and the same numerics per chunk (same device type and per-process thread count; torchrun sets
``OMP_NUM_THREADS=1``).

Per batch: a plain forward (plus a backward of the summed cross-entropy for Taylor), and for DeepLIFT one
forward/backward of ``[x; x_ref]`` under captum's rescale rules (:mod:`.deeplift`). When only DeepLIFT is asked
for, the forward statistics come from the input half of that pass, so no extra forward is run.

Memory: the fixed-point Gram accumulators take Σ_layers classes × N(N+1)/2 × 16 bytes (2 int64 limbs of the upper
triangle, ≈ 8 bytes per Gram entry) while streaming, and the float64 result Σ_layers classes × N² × 8 bytes.
``classes=`` restricts a pass to some classes (the slicer's ``class_batch`` streams class groups through several
passes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .observe import Layer, eval_mode, pool

STAT_FIELDS = ("count", "total", "sumsq", "gram", "taylor", "deeplift")


@dataclass
class LayerStats:
    """Sums for one layer; first axis is the class."""

    count: torch.Tensor  # (C,) float64 samples per class
    total: torch.Tensor  # (C, N) Σ f
    gram: torch.Tensor | None  # (C, N, N) Σ f fᵀ; None when the Gram matrices were consumed class group by group
    taylor: torch.Tensor  # (C, N) Σ |mean_space(a · ∂L/∂a)|
    deeplift: torch.Tensor  # (C, N) Σ Σ_space (a − a_ref) · m  (signed DeepLIFT attribution of the class logit)
    sumsq: torch.Tensor | None = None  # (C, N) Σ f², bit-identical to the Gram diagonal

    @classmethod
    def zeros(cls, classes: int, channels: int) -> LayerStats:
        z = dict(dtype=torch.float64)
        return cls(
            count=torch.zeros(classes, **z),
            total=torch.zeros(classes, channels, **z),
            gram=torch.zeros(classes, channels, channels, **z),
            taylor=torch.zeros(classes, channels, **z),
            deeplift=torch.zeros(classes, channels, **z),
            sumsq=torch.zeros(classes, channels, **z),
        )

    @property
    def sq(self) -> torch.Tensor:
        """Σ f² per class and channel, (C, N) (the variance metrics need only this part of the Gram)."""
        if self.sumsq is not None:
            return self.sumsq
        return torch.diagonal(self.gram, dim1=-2, dim2=-1)


@dataclass
class CalibrationStats:
    """Sufficient statistics of a calibration set for every sliceable layer.

    Attributes:
        with_gradients: Taylor sums were accumulated.
        deeplift_baseline: ``zero`` or ``mean`` when DeepLIFT sums were accumulated, else None.
        deeplift_reference: the reference input DeepLIFT used, (1, ...), or None.
        gram_classes: the classes of the Gram matrices' rows when a pass collected only some classes, else None.
    """

    layers: list[Layer]
    num_classes: int
    per_layer: dict[str, LayerStats] = field(default_factory=dict)
    with_gradients: bool = False
    deeplift_baseline: str | None = None
    deeplift_reference: torch.Tensor | None = None
    gram_classes: list[int] | None = None  # the classes the Gram rows belong to when not all of them

    def merge_(self, other: CalibrationStats) -> CalibrationStats:
        """Add another shard's float64 sums into this one (rounded once per value; for bit-exact sharding use
        torch.distributed, which reduces the fixed-point sums before rounding).

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
            or self.gram_classes != other.gram_classes
        ):
            raise ValueError("cannot merge calibration shards collected for other layers, classes or metrics")
        for name, s in self.per_layer.items():
            o = other.per_layer[name]
            for attr in STAT_FIELDS:
                mine, theirs = getattr(s, attr), getattr(o, attr)
                if (mine is None) != (theirs is None):
                    raise ValueError(f"cannot merge calibration shards: only one has {attr!r}")
                if mine is not None:
                    mine.add_(theirs)
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
    classes: Sequence[int] | None = None,
    shard: bool = True,
) -> CalibrationStats:
    """Stream ``batches`` through ``model`` once and accumulate per-class statistics at every layer.

    Under torch.distributed every rank must call this with the same batches (the same chunks, in the same order);
    each computes its round-robin share and the exact sums are all-reduced, so all ranks return the same bits as a
    single process would.

    Args:
        model: the model (put in eval mode for the pass; its mode is restored).
        layers: from :func:`~edgeslice.slicing.observe.find_layers`.
        batches: (inputs, labels) pairs; inputs as the model expects them after ``prepare``. Each batch is one
            chunk of the exact sums: keep their size independent of the number of processes.
        num_classes: number of classes (labels are 0..C-1).
        with_gradients: also run a backward pass of the summed cross-entropy for the Taylor scores.
        deeplift: also accumulate DeepLIFT attributions of each sample's own class logit.
        baseline: name of the DeepLIFT reference, recorded in the stats: ``zero`` or ``mean``.
        reference: the DeepLIFT reference input after ``prepare``, broadcastable to a batch, e.g. (1, C, H, W);
            zeros when None (see :func:`~edgeslice.slicing.deeplift.mean_input` for ``mean``).
        prepare: applied to each input batch on the device (normalisation).
        device: where to run.
        on_batch: called with the batch size after each batch this process ran (progress).
        classes: accumulate only these classes (the others stay zero, and batches without any of them are
            skipped); the Gram matrices then have one row per listed class, in ascending order
            (``CalibrationStats.gram_classes``). None: every class.
        shard: split the batches over the ranks when torch.distributed is initialised (False: this process runs
            every batch and nothing is reduced).
    """
    from .deeplift import BASELINES, channel_attributions

    if baseline not in BASELINES:
        raise ValueError(f"unknown DeepLIFT baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    device = torch.device(device)
    wanted = list(range(num_classes)) if classes is None else sorted({int(c) for c in classes})
    if any(not 0 <= c < num_classes for c in wanted):
        raise ValueError(f"classes must be in 0..{num_classes - 1}")
    stats = CalibrationStats(
        layers=layers,
        num_classes=num_classes,
        with_gradients=with_gradients,
        deeplift_baseline=baseline if deeplift else None,
        deeplift_reference=(reference.detach().cpu().clone() if reference is not None else None) if deeplift else None,
        gram_classes=None if classes is None else wanted,
    )
    sums = {la.name: _FixedSums(num_classes, wanted, la.channels, device) for la in layers}
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_m, _i, out):
            if not with_gradients:
                # Forward-only metrics need just the per-channel feature: pool now, before timm's in-place
                # activations can overwrite ``out``, and keep no full-size copy.
                captured[name] = pool(out.detach())
                return None
            captured[name] = out
            # Hand a copy downstream: timm's in-place activations would otherwise overwrite what we keep.
            return out.clone()

        return hook

    distributed_ = shard and distributed.world_size() > 1
    owned = distributed.shard_stream(batches) if distributed_ else batches
    ref = reference.to(device) if (deeplift and reference is not None) else None
    with eval_mode(model):
        for x, y in owned:
            if classes is not None and not bool(torch.isin(y, torch.tensor(wanted, dtype=y.dtype)).any()):
                continue  # nothing of these classes in this chunk: no forward needed
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
            _accumulate(sums, acts, grads, dl, y)
            if on_batch is not None:
                on_batch(len(y))
    for layer in layers:
        s = sums.pop(layer.name)
        if distributed_:
            s.all_reduce_()
        stats.per_layer[layer.name] = s.finish()
    return stats


class _FixedSums:
    """One layer's sums as exact fixed-point limbs (see :func:`edgeslice.distributed.to_fixed`).

    The Gram matrices are symmetric: only their upper triangles (diagonal included) are kept, packed row by row
    ((M,) with M = N(N+1)/2 per class).

    A class's Gram share is converted lazily: its first chunk is kept as float64 (``pending``) and only a second
    chunk turns it into limbs. A class that only ever had one chunk — the common case, calibration samples being
    sorted by class — finishes as ``trunc(x·2^56)·2^-56``, which is exactly ``from_fixed(to_fixed(x))``, without
    any integer work. Before an all-reduce every pending share is converted, so all ranks sum the same integers.
    """

    VECTORS = ("total", "sumsq", "taylor", "deeplift")

    def __init__(self, classes: int, wanted: list[int], channels: int, device: torch.device) -> None:
        limbs = distributed.LIMBS
        z = dict(dtype=torch.int64, device=device)
        self.channels = channels
        self.device = device
        self.slot = {c: i for i, c in enumerate(wanted)}
        self.count = torch.zeros(classes, **z)
        self.vectors = {f: torch.zeros(limbs, classes, channels, **z) for f in self.VECTORS}
        rows, cols = torch.triu_indices(channels, channels, device=device)
        self.upper = rows * channels + cols  # (M,) flat positions of the packed entries, row by row
        self.lower = cols * channels + rows  # their mirror images
        self.diagonal = (rows == cols).nonzero().squeeze(1)  # (N,) where the diagonal sits in the packed vector
        self.pending: dict[int, torch.Tensor] = {}  # slot → (M,) float64, a class's only chunk so far
        self.gram: dict[int, torch.Tensor] = {}  # slot → (LIMBS, M) int64, a class seen in several chunks
        self.gram_adds: dict[int, int] = {}
        self.adds = 0  # additions to ``vectors`` since the last carry

    def add_gram_(self, slot: int, share: torch.Tensor) -> None:
        """Add one chunk's packed Gram share (M,) float64 of one class."""
        if slot not in self.pending and slot not in self.gram:
            distributed.check_fixed_range(share)
            self.pending[slot] = share
            return
        if slot in self.pending:
            self.gram[slot] = distributed.to_fixed(self.pending.pop(slot))
            self.gram_adds[slot] = 1
        self.gram[slot] += distributed.to_fixed(share)
        self.gram_adds[slot] += 1
        if self.gram_adds[slot] >= distributed.SAFE_ADDS:
            distributed.carry_(self.gram[slot])
            self.gram_adds[slot] = 1

    def carry_if_due_(self) -> None:
        self.adds += 1
        if self.adds >= distributed.SAFE_ADDS:
            for t in self.vectors.values():
                distributed.carry_(t)
            self.adds = 0

    def _all_limbs(self) -> torch.Tensor:
        """(LIMBS, G, M) limbs of every class, pending shares converted."""
        out = torch.zeros(distributed.LIMBS, len(self.slot), len(self.upper), dtype=torch.int64, device=self.device)
        for slot, share in self.pending.items():
            out[:, slot] = distributed.to_fixed(share)
        for slot, limbs in self.gram.items():
            out[:, slot] = distributed.carry_(limbs)
        self.pending, self.gram = {}, {}
        return out

    def all_reduce_(self) -> None:
        for t in self.vectors.values():
            distributed.all_reduce_sum_(distributed.carry_(t))  # each rank's share normalised: W of them fit
        reduced = self._all_limbs()
        distributed.all_reduce_sum_(reduced)
        self.gram = {slot: reduced[:, slot] for slot in range(len(self.slot))}
        distributed.all_reduce_sum_(self.count)

    def finish(self) -> LayerStats:
        """The float64 statistics (on the CPU), a fixed function of the integer sums."""
        vec = {f: distributed.from_fixed(t, consume=True).cpu() for f, t in self.vectors.items()}
        n = self.channels
        packed = torch.zeros(len(self.slot), len(self.upper), dtype=torch.float64, device=self.device)  # (G, M)
        for slot, share in self.pending.items():
            packed[slot] = distributed.round_fixed(share)
        for slot, limbs in self.gram.items():
            packed[slot] = distributed.from_fixed(limbs, consume=True)
        gram = torch.empty(len(packed), n * n, dtype=torch.float64, device=packed.device)
        gram.index_copy_(1, self.lower, packed)  # the mirror image first: the diagonal is in both
        gram.index_copy_(1, self.upper, packed)
        gram = gram.view(-1, n, n).cpu()  # exactly symmetric
        self.pending = self.gram = self.vectors = None  # free memory before the caller converts the next layer
        return LayerStats(count=self.count.to(torch.float64).cpu(), gram=gram, **vec)


@torch.no_grad()
def _accumulate(
    sums: dict[str, _FixedSums],
    captured: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    deeplift: dict[str, torch.Tensor],
    y: torch.Tensor,
) -> None:
    y_cpu = y.cpu()
    present = torch.unique(y_cpu).tolist()
    for name, s in sums.items():
        classes = [c for c in present if c in s.slot]
        if not classes:
            continue
        a = captured[name].detach()
        f = pool(a).to(torch.float64)  # (B, N)
        t = pool(a * grads[name]).abs().to(torch.float64) if name in grads else None  # (B, N)
        d = deeplift[name].detach().to(torch.float64) if name in deeplift else None  # (B, N)
        fields = ["total", *(["taylor"] if t is not None else []), *(["deeplift"] if d is not None else [])]
        grams, vectors = [], []
        for c in classes:
            # Calibration batches are usually one class (the sample is sorted by class): skip the gather then.
            sel = None if len(present) == 1 else (y == c).nonzero().squeeze(1)
            fc = f if sel is None else f.index_select(0, sel)
            s.count[c] += len(fc)
            grams.append((fc.T @ fc).flatten().index_select(0, s.upper))  # (M,) upper triangle of the (N, N) share
            rows = [fc.sum(0)]
            if t is not None:
                rows.append((t if sel is None else t.index_select(0, sel)).sum(0))
            if d is not None:
                rows.append((d if sel is None else d.index_select(0, sel)).sum(0))
            vectors.append(torch.stack(rows))
        for c, share in zip(classes, grams, strict=True):
            s.add_gram_(s.slot[c], share)
        # One elementwise conversion for all of them: a value's limbs depend on that value only.
        diag_limbs = distributed.to_fixed(torch.stack([g.index_select(0, s.diagonal) for g in grams]))  # (L, P, N)
        vector_limbs = distributed.to_fixed(torch.stack(vectors))  # (LIMBS, P, fields, N)
        idx = torch.tensor(classes, device=vector_limbs.device)
        s.vectors["sumsq"].index_add_(1, idx, diag_limbs)  # = the Gram diagonal, bit for bit
        for i, name_ in enumerate(fields):
            s.vectors[name_].index_add_(1, idx, vector_limbs[:, :, i])
        s.carry_if_due_()
