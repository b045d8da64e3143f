"""One streaming calibration pass: every calibration sample's pooled channel features, and per-class sums.

Layout (memory grows with the samples, not with classes × N²). Per sample, every observed channel's feature (its
spatial mean, float32 as the model computes it) is kept: one row of Σ_layers N values per sample, in the blocks
the calibration chunks produced (:class:`RowStore`; each class's rows are indexed as runs, in calibration order).
The solver's per-class channel Gram matrix G_c = F_cᵀF_c (paper Eq. 4) is formed from those rows only while class c
is solved
(:meth:`LayerStats.class_gram`), so the pass holds samples × Σ N × 4 bytes plus one class's Σ N² × 8 at a time.
The per-class vector sums (count, Σf, Σf², Σ attributions) are small, (C, N) float64, and kept for every class.
The per-sample attribution rows (Taylor, DeepLIFT) are kept only until they are summed.

Exact and reproducible. A row is the model's own float32 output for one sample: it does not depend on how the
samples were batched across processes, only on the chunk it was computed in (the caller's batches: keep their size
independent of the number of processes; the pipeline uses 100) and the per-process numerics (device type and thread
count; torchrun sets ``OMP_NUM_THREADS=1``). Every float reduction over rows has a fixed order and fixed shapes: a
class's rows in calibration order, in blocks of :data:`REDUCE_ROWS` rows (float64), the blocks added in order. So
any number of processes gives, bit for bit, the same statistics and Gram matrices. There is no range limit short of
float32 overflow (a non-finite feature is a clear error before any solving).

Distributed (torch.distributed): calibration is sharded by samples — rank r runs the chunks at positions r, r+W, …
(every rank reads every chunk's labels, so all know which sample is where); the solve is sharded by classes — class c
belongs to rank c mod W. After the pass every rank sends each other rank the rows of that rank's classes
(point-to-point, samples × Σ N × 4 bytes per kept field in all, over all ranks), each owner sums its classes' vectors
and one all-reduce (C × Σ N × 8 bytes per vector field, each entry non-zero on one rank only, so the sum is exact)
gives every rank every class's vectors. A rank then holds the feature rows of its own classes only
(:attr:`LayerStats.held`).

Per batch: a plain forward (plus a backward of the summed cross-entropy for Taylor, gradients with respect to the
observed activations only), and for DeepLIFT one forward/backward of ``[x; x_ref]`` under captum's rescale rules
(:mod:`.deeplift`). When only DeepLIFT is asked for, the forward statistics come from the input half of that pass.
``classes=`` restricts a pass to some classes (the others stay zero; batches without any of them are skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..torchutil import eval_mode, pool
from .layerstats import REDUCE_ROWS as REDUCE_ROWS  # the reduction order, stated in the docstring above
from .layerstats import STAT_FIELDS as STAT_FIELDS
from .layerstats import VECTOR_FIELDS as VECTOR_FIELDS
from .layerstats import CalibrationStats as CalibrationStats
from .layerstats import LayerStats as LayerStats
from .layerstats import RowStore as RowStore
from .layerstats import owner_of as owner_of
from .observe import Layer
from .reduction import finish_stats


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
    """Stream ``batches`` through ``model`` once; keep every sample's pooled features and per-class sums.

    Under torch.distributed every rank must call this with the same batches (the same chunks, in the same order);
    each runs its round-robin share of the chunks and ends with the rows of its own classes (c mod W) and every
    class's vector sums — the same bits one process computes.

    Args:
        model: the model (put in eval mode for the pass; its mode is restored).
        layers: from :func:`~edgeslice.slicing.observe.find_layers`.
        batches: (inputs, labels) pairs; inputs as the model expects them after ``prepare``. Each batch is one
            chunk of computation: keep their size independent of the number of processes.
        num_classes: number of classes (labels are 0..C-1).
        with_gradients: also run a backward pass of the summed cross-entropy for the Taylor scores.
        deeplift: also accumulate DeepLIFT attributions of each sample's own class logit.
        baseline: name of the DeepLIFT reference, recorded in the stats: ``zero`` or ``mean``.
        reference: the DeepLIFT reference input after ``prepare``, broadcastable to a batch, e.g. (1, C, H, W);
            zeros when None (see :func:`~edgeslice.slicing.deeplift.mean_input` for ``mean``).
        prepare: applied to each input batch on the device (normalisation).
        device: where to run.
        on_batch: called with the batch size after each batch this process ran (progress).
        classes: keep only these classes' samples (the others count zero; batches without any are skipped).
            None: every class.
        shard: split the batches over the ranks when torch.distributed is initialised (False: this process runs
            every batch and nothing is exchanged).

    Raises:
        ValueError: a label outside 0..C-1, or a non-finite feature or attribution.
    """
    from .deeplift import BASELINES, channel_attributions

    if baseline not in BASELINES:
        raise ValueError(f"unknown DeepLIFT baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    device = torch.device(device)
    keep_class = _class_mask(num_classes, classes)
    sharded = shard and distributed.world_size() > 1
    world, me = (distributed.world_size(), distributed.rank()) if sharded else (1, 0)
    fields = ["f", *(["t"] if with_gradients else []), *(["d"] if deeplift else [])]
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hook_for = _capture_hooks(captured, with_gradients)
    ref = reference.to(device) if (deeplift and reference is not None) else None

    def run(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return _run_chunk(model, layers, modules, captured, hook_for, x, y, prepare, device, with_gradients,
                          deeplift, ref, channel_attributions)  # fmt: skip

    with eval_mode(model):
        labels, chunk_of, mine = _read_chunks(batches, keep_class, world, me, run, on_batch)
    stats = CalibrationStats(
        layers=layers,
        num_classes=num_classes,
        with_gradients=with_gradients,
        deeplift_baseline=baseline if deeplift else None,
        deeplift_reference=(reference.detach().cpu().clone() if reference is not None else None) if deeplift else None,
        sharded=sharded,
    )
    finish_stats(stats, layers, labels, chunk_of, mine, fields, world, me, sharded)
    return stats


def _class_mask(num_classes: int, classes: Sequence[int] | None) -> torch.Tensor:
    """(C,) bool: the classes a pass keeps (every class when ``classes`` is None)."""
    wanted = list(range(num_classes)) if classes is None else sorted({int(c) for c in classes})
    if any(not 0 <= c < num_classes for c in wanted):
        raise ValueError(f"classes must be in 0..{num_classes - 1}")
    keep_class = torch.zeros(num_classes, dtype=torch.bool)
    keep_class[wanted] = True
    return keep_class


def _read_chunks(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    keep_class: torch.Tensor,
    world: int,
    me: int,
    run: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    on_batch: Callable[[int], None] | None,
) -> tuple[list[torch.Tensor], list[int], list[tuple[int, dict[str, torch.Tensor]]]]:
    """Read every chunk's labels and ``run`` this process's share (chunks ``me``, ``me + world``, …).

    Returns:
        (every chunk's kept labels, the chunk index of each, (chunk, field → (b, Σ N) float32 rows) of the chunks
        this process ran), chunks without a kept class left out.
    """
    num_classes = len(keep_class)
    labels: list[torch.Tensor] = []  # every chunk's kept labels (all ranks read all chunks)
    chunk_of: list[int] = []  # per kept-label block: the chunk index
    mine: list[tuple[int, dict[str, torch.Tensor]]] = []  # (chunk, field → (b, ΣN) float32) chunks this rank ran
    for i, (x, y) in enumerate(batches):
        y = torch.as_tensor(y).reshape(-1)
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"a calibration label is outside 0..{num_classes - 1}")
        keep = keep_class[y.cpu()]
        if not bool(keep.any()):
            continue  # nothing of the wanted classes in this chunk: no forward needed
        labels.append(y.cpu()[keep])
        chunk_of.append(i)
        if i % world != me:
            continue
        rows = run(x, y)
        mine.append((i, {k: v[keep.to(v.device)].cpu() if not bool(keep.all()) else v.cpu() for k, v in rows.items()}))
        if on_batch is not None:
            on_batch(len(y))
    return labels, chunk_of, mine


def _run_chunk(model, layers, modules, captured, hook_for, x, y, prepare, device, with_gradients, deeplift, ref,
               channel_attributions) -> dict[str, torch.Tensor]:  # fmt: skip
    """One chunk's per-sample rows: field → (B, Σ N) float32 (features, Taylor, DeepLIFT)."""
    x = x.to(device)
    y = y.to(device)
    if prepare is not None:
        x = prepare(x)
    acts: dict[str, torch.Tensor] = {}
    dl: dict[str, torch.Tensor] = {}
    taylor: list[torch.Tensor] = []
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
                    grads = torch.autograd.grad(loss, outs)
                    with torch.no_grad():
                        taylor = [pool(a * g).abs_() for a, g in zip(outs, grads, strict=True)]
                    del grads, outs
        finally:
            for h in handles:
                h.remove()
        acts = dict(captured)
        captured.clear()
    with torch.no_grad():
        rows = {"f": torch.cat([pool(acts[la.name].detach()) for la in layers], 1)}
        if with_gradients:
            rows["t"] = torch.cat(taylor, 1)
        if deeplift:
            rows["d"] = torch.cat([dl[la.name].detach() for la in layers], 1)
    for k, v in rows.items():
        if not bool(torch.isfinite(v).all()):
            what = {"f": "feature", "t": "Taylor attribution", "d": "DeepLIFT attribution"}[k]
            raise ValueError(f"a calibration {what} is not finite (the model overflows on the calibration data)")
    return {k: v.float() for k, v in rows.items()}


def _capture_hooks(captured: dict[str, torch.Tensor], with_gradients: bool) -> Callable:
    """``hook_for(layer name)``: a forward hook that keeps the layer's output in ``captured`` (pooled at once for
    forward-only metrics; whole, with a copy handed downstream, when gradients are needed)."""

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

    return hook_for
