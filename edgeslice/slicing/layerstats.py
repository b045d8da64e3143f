"""What one calibration pass leaves: :class:`CalibrationStats`, one :class:`LayerStats` per sliceable layer (the
per-class vector sums, and the class's pooled feature rows through a shared :class:`RowStore`), and the fixed
reduction order every per-class sum uses (:data:`REDUCE_ROWS`). :mod:`.stats` makes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .observe import Layer

__all__ = [
    "REDUCE_ROWS",
    "STAT_FIELDS",
    "VECTOR_FIELDS",
    "CalibrationStats",
    "LayerStats",
    "RowStore",
    "owner_of",
]

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
