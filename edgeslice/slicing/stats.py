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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..torchutil import eval_mode, pool
from .observe import Layer

#: Rows per float64 block in every per-class reduction (Gram matrices and vector sums): a constant, so the
#: reduction order depends on a class's sample count only, never on batch size or world size.
REDUCE_ROWS = 256
#: The per-class vector sums, in their packed order.
VECTOR_FIELDS = ("total", "sumsq", "taylor", "deeplift")
STAT_FIELDS = ("count", *VECTOR_FIELDS)


class RowStore:
    """The pooled rows of the samples this process holds, as they were computed: blocks of (b, Σ N) float32 (one
    per calibration chunk, or per chunk of rows received from another rank), per field (``f`` features, ``t``
    Taylor, ``d`` DeepLIFT), and per class the runs of its rows, in calibration order. Nothing is copied into a
    class-major matrix: a class's rows are gathered from its runs when it is solved."""

    def __init__(self, blocks: dict[str, list[torch.Tensor]], runs: list[list[tuple[int, int, int]]]):
        self.blocks = blocks
        self.runs = runs  # per class: (block, start, stop)

    def rows(self, c: int, cols: slice, field: str = "f") -> torch.Tensor:
        """Class ``c``'s rows of columns ``cols`` in calibration order, (n_c, N) float32 (a view when one run)."""
        blocks = self.blocks[field]
        parts = [blocks[b][start:stop, cols] for b, start, stop in self.runs[c]]
        if not parts:
            return torch.zeros(0, cols.stop - cols.start, dtype=torch.float32)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def drop_(self, field: str) -> None:
        self.blocks.pop(field, None)

    def merged(self, other: RowStore) -> RowStore:
        """This store's rows of each class followed by ``other``'s (fields both have)."""
        shift = len(self.blocks["f"])
        blocks = {k: v + other.blocks[k] for k, v in self.blocks.items() if k in other.blocks}
        runs = [
            mine + [(b + shift, lo, hi) for b, lo, hi in theirs]
            for mine, theirs in zip(self.runs, other.runs, strict=True)
        ]
        return RowStore(blocks, runs)


@dataclass
class LayerStats:
    """One layer's statistics; the first axis of every (C, ...) field is the class.

    The pooled features of the samples of the classes this process holds live in ``store`` (columns ``cols``):
    :meth:`class_features` gathers one class's rows (empty for a class held elsewhere or absent).
    """

    count: torch.Tensor  # (C,) float64 samples per class
    total: torch.Tensor  # (C, N) Σ f
    taylor: torch.Tensor  # (C, N) Σ |mean_space(a · ∂L/∂a)| (zeros when not collected)
    deeplift: torch.Tensor  # (C, N) Σ Σ_space (a − a_ref) · m (zeros when not collected)
    sumsq: torch.Tensor  # (C, N) Σ f²
    store: RowStore | None = None  # shared by every layer of one calibration
    cols: slice | None = None  # this layer's columns in the store's rows
    held: torch.Tensor | None = None  # (C,) bool: classes whose rows this process holds

    @property
    def sq(self) -> torch.Tensor:
        """Σ f² per class and channel, (C, N) (what the variance metrics need)."""
        return self.sumsq

    def class_features(self, c: int) -> torch.Tensor:
        """Class ``c``'s pooled features, (n_c, N) float32, in calibration order.

        Raises:
            ValueError: another process holds this class's rows (sharded solve).
        """
        if self.store is None or self.held is None or not bool(self.held[c]):
            raise ValueError(f"class {c}'s features are held by another process (the solve is sharded by class)")
        return self.store.rows(c, self.cols)

    @property
    def features(self) -> torch.Tensor:
        """Every held sample's features, class-major, (rows, N) float32 — a copy: for small models and tests."""
        return torch.cat([self.class_features(c) for c in range(len(self.count)) if bool(self.held[c])])

    def class_gram(self, c: int) -> torch.Tensor:
        """G_c = Σ f fᵀ over class ``c``'s samples, (N, N) float64: blocks of :data:`REDUCE_ROWS` rows, in order."""
        rows = self.class_features(c)
        n = rows.shape[1]
        gram = None
        for start in range(0, len(rows), REDUCE_ROWS):
            block = rows[start : start + REDUCE_ROWS].to(torch.float64).contiguous()
            share = block.T @ block
            gram = share if gram is None else gram.add_(share)
        return torch.zeros(n, n, dtype=torch.float64) if gram is None else gram

    @property
    def gram(self) -> torch.Tensor:
        """Every class's Gram matrix, (C, N, N) float64 — C × N² × 8 bytes: for small models and tests only."""
        return torch.stack([self.class_gram(c) for c in range(len(self.count))])


@dataclass
class CalibrationStats:
    """Statistics of a calibration set for every sliceable layer.

    Attributes:
        with_gradients: Taylor sums were accumulated.
        deeplift_baseline: ``zero`` or ``mean`` when DeepLIFT sums were accumulated, else None.
        deeplift_reference: the reference input DeepLIFT used, (1, ...), or None.
        sharded: the rows are spread over the torch.distributed ranks (class c on rank c mod W).
    """

    layers: list[Layer]
    num_classes: int
    per_layer: dict[str, LayerStats] = field(default_factory=dict)
    with_gradients: bool = False
    deeplift_baseline: str | None = None
    deeplift_reference: torch.Tensor | None = None
    sharded: bool = False

    def merge_(self, other: CalibrationStats) -> CalibrationStats:
        """Add another shard's samples (collected over other batches, in one process): vector sums are added in
        float64 (rounded once per value), and each class's rows become this shard's followed by the other's.

        Raises:
            ValueError: the shards were collected for other layers, classes or metrics, or are sharded.
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
            or self.sharded
            or other.sharded
        ):
            raise ValueError("cannot merge calibration shards collected for other layers, classes or metrics")
        store = None
        for name, s in self.per_layer.items():
            o = other.per_layer[name]
            for attr in STAT_FIELDS:
                setattr(s, attr, getattr(s, attr) + getattr(o, attr))
            if store is None:  # one store serves every layer
                store = s.store.merged(o.store)
            s.store = store
        return self

    @property
    def samples_per_class(self) -> torch.Tensor:
        return next(iter(self.per_layer.values())).count


def owner_of(c: int, world: int) -> int:
    """The rank that holds and solves class ``c`` in a sharded solve."""
    return c % world


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
    wanted = list(range(num_classes)) if classes is None else sorted({int(c) for c in classes})
    if any(not 0 <= c < num_classes for c in wanted):
        raise ValueError(f"classes must be in 0..{num_classes - 1}")
    keep_class = torch.zeros(num_classes, dtype=torch.bool)
    keep_class[wanted] = True
    sharded = shard and distributed.world_size() > 1
    world, me = (distributed.world_size(), distributed.rank()) if sharded else (1, 0)
    fields = ["f", *(["t"] if with_gradients else []), *(["d"] if deeplift else [])]
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

    labels: list[torch.Tensor] = []  # every chunk's kept labels (all ranks read all chunks)
    chunk_of: list[int] = []  # per kept-label block: the chunk index
    mine: list[tuple[int, dict[str, torch.Tensor]]] = []  # (chunk, field → (b, ΣN) float32) chunks this rank ran
    ref = reference.to(device) if (deeplift and reference is not None) else None
    with eval_mode(model):
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
            rows = _run_chunk(model, layers, modules, captured, hook_for, x, y, prepare, device, with_gradients,
                              deeplift, ref, channel_attributions)  # fmt: skip
            mine.append((i, {k: v[keep.to(v.device)].cpu() if not bool(keep.all()) else v.cpu()
                             for k, v in rows.items()}))  # fmt: skip
            if on_batch is not None:
                on_batch(len(y))
    stats = CalibrationStats(
        layers=layers,
        num_classes=num_classes,
        with_gradients=with_gradients,
        deeplift_baseline=baseline if deeplift else None,
        deeplift_reference=(reference.detach().cpu().clone() if reference is not None else None) if deeplift else None,
        sharded=sharded,
    )
    _finish(stats, layers, labels, chunk_of, mine, fields, world, me, sharded)
    return stats


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


@torch.no_grad()
def _finish(
    stats: CalibrationStats,
    layers: list[Layer],
    labels: list[torch.Tensor],
    chunk_of: list[int],
    mine: list[tuple[int, dict[str, torch.Tensor]]],
    fields: list[str],
    world: int,
    me: int,
    sharded: bool,
) -> None:
    """Send rows to their class's owner, index each held class's runs, sum the per-class vectors, fill
    ``stats.per_layer``."""
    C = stats.num_classes
    y = (torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)).to(torch.int64)
    sizes = [len(t) for t in labels]
    starts = torch.cumsum(torch.tensor([0, *sizes]), 0).tolist()
    chunk_start = dict(zip(chunk_of, starts, strict=False))
    count = torch.bincount(y, minlength=C)  # every rank knows every label: no communication
    owner = torch.arange(C) % world
    held = owner == me
    blocks: dict[str, list[torch.Tensor]] = {k: [] for k in fields}
    block_pos: list[torch.Tensor] = []  # per block: the calibration positions of its rows (ascending)
    sends: dict[int, list[tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {r: [] for r in range(world)}
    while mine:
        i, rows = mine.pop(0)
        pos = torch.arange(chunk_start[i], chunk_start[i] + len(rows["f"]))
        dest = owner[y[pos]]
        for r in range(world):
            sel = (dest == r).nonzero().squeeze(1)
            if not len(sel):
                continue
            part = {k: v if len(sel) == len(pos) else v.index_select(0, sel) for k, v in rows.items()}
            if r == me:
                for k in fields:
                    blocks[k].append(part[k])
                block_pos.append(pos[sel])
            else:
                sends[r].append((pos[sel], part))
        del rows
    if sharded:
        for pos, part in _exchange(
            sends, y, owner, chunk_of, chunk_start, sizes, fields, sum(la.channels for la in layers), world, me
        ):
            for k in fields:
                blocks[k].append(part[k])
            block_pos.append(pos)
    store = RowStore(blocks, _runs(block_pos, y, C))
    widths = [la.channels for la in layers]
    # Per-class vector sums from the rows, in a fixed order: per layer, class c's rows in calibration order, in
    # blocks of REDUCE_ROWS, each a contiguous (rows, N) float64 copy (shapes independent of batch or world size).
    source = {"total": "f", "sumsq": "f", **({"taylor": "t"} if "t" in blocks else {}),
              **({"deeplift": "d"} if "d" in blocks else {})}  # fmt: skip
    vec = {la.name: {name: torch.zeros(C, la.channels, dtype=torch.float64) for name in source} for la in layers}
    mine_classes = [c for c in held.nonzero().squeeze(1).tolist() if int(count[c]) > 0]
    first = 0
    for la, n in zip(layers, widths, strict=True):
        cols, v = slice(first, first + n), vec[la.name]
        for c in mine_classes:
            rows = {k: store.rows(c, cols, k) for k in set(source.values())}
            for start in range(0, len(rows["f"]), REDUCE_ROWS):
                f = rows["f"][start : start + REDUCE_ROWS].to(torch.float64).contiguous()
                v["total"][c] += f.sum(0)
                v["sumsq"][c] += (f * f).sum(0)
                for name in ("taylor", "deeplift"):
                    if name in source:
                        block = rows[source[name]][start : start + REDUCE_ROWS]
                        v[name][c] += block.to(torch.float64).contiguous().sum(0)
        for t in v.values():
            t.add_(0.0)  # -0.0 → +0.0, so that the exact all-reduce below (x + 0 + …) returns the same bits
        first += n
    store.drop_("t")  # the attribution rows are summed: only the features stay
    store.drop_("d")
    if sharded:
        packed = torch.cat([t for la in layers for t in vec[la.name].values()], 1)
        distributed.all_reduce_sum_(packed)  # each entry is non-zero on its owner only: exact
        first = 0
        for la in layers:
            for name in source:
                vec[la.name][name] = packed[:, first : first + la.channels].clone()
                first += la.channels
        del packed
    countf = count.to(torch.float64)
    first = 0
    for la, n in zip(layers, widths, strict=True):
        v = vec.pop(la.name)
        for name in ("taylor", "deeplift"):
            v.setdefault(name, torch.zeros((), dtype=torch.float64).expand(C, n))  # not collected: zeros, no memory
        stats.per_layer[la.name] = LayerStats(
            count=countf.clone(), store=store, cols=slice(first, first + n), held=held, **v
        )
        first += n


def _runs(block_pos: list[torch.Tensor], y: torch.Tensor, classes: int) -> list[list[tuple[int, int, int]]]:
    """Per class, the (block, start, stop) runs of its rows in calibration order."""
    runs: list[list[tuple[int, int, int]]] = [[] for _ in range(classes)]
    if not block_pos:
        return runs
    pos = torch.cat(block_pos)
    block = torch.cat([torch.full((len(p),), b, dtype=torch.int64) for b, p in enumerate(block_pos)])
    row = torch.cat([torch.arange(len(p)) for p in block_pos])
    order = torch.argsort(pos, stable=True)
    order = order[torch.sort(y[pos[order]], stable=True).indices]  # by class, then calibration position
    lab, block, row = y[pos[order]], block[order], row[order]
    if len(lab) == 0:
        return runs
    brk = torch.ones(len(lab), dtype=torch.bool)
    brk[1:] = (lab[1:] != lab[:-1]) | (block[1:] != block[:-1]) | (row[1:] != row[:-1] + 1)
    heads = brk.nonzero().squeeze(1).tolist() + [len(lab)]
    for a, b in zip(heads[:-1], heads[1:], strict=True):
        runs[int(lab[a])].append((int(block[a]), int(row[a]), int(row[b - 1]) + 1))
    return runs


def _exchange(sends, y, owner, chunk_of, chunk_start, sizes, fields, width, world, me):
    """Point-to-point: send every other rank the rows of its classes; return the received (positions, rows) blocks,
    one per source rank, rows in calibration order."""
    import torch.distributed as dist

    cuda = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    ops, keep = [], []
    for r in range(world):
        if r == me or not sends[r]:
            continue
        buf = torch.cat([torch.cat([p[k] for k in fields], 1) for _, p in sends[r]]).to(dev)
        ops.append(dist.P2POp(dist.isend, buf, r))
        keep.append(buf)
    sends.clear()
    size_of = dict(zip(chunk_of, sizes, strict=True))
    by_src: dict[int, list[torch.Tensor]] = {}
    for i, start in chunk_start.items():  # chunk order: the order the sender packed its rows in
        src = i % world
        if src == me:
            continue
        pos = torch.arange(start, start + size_of[i])
        pos = pos[owner[y[pos]] == me]
        if len(pos):
            by_src.setdefault(src, []).append(pos)
    incoming = []
    for src, parts in sorted(by_src.items()):
        pos = torch.cat(parts)
        buf = torch.empty(len(pos), len(fields) * width, dtype=torch.float32, device=dev)
        ops.append(dist.P2POp(dist.irecv, buf, src))
        incoming.append((pos, buf))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    del keep
    out = []
    for pos, buf in incoming:
        buf = buf.cpu()
        width = buf.shape[1] // len(fields)
        out.append((pos, {k: buf[:, j * width : (j + 1) * width].clone() for j, k in enumerate(fields)}))
    return out
