"""The small typed results the stages of ``compress`` return (:mod:`edgeslice.pipeline.compress`), and the timer
that records each stage's seconds. Their own module, so that the device stages (:mod:`.device_search`) can name them
without importing ``compress``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._progress import stage
from ..data import DataBundle
from ..index import CriticalIndex
from ..models import ModelMeta
from ..restructure import RestructureReport
from ..slicing import SemanticSlicer, SliceResult
from .report import optional


class Timer:
    """Wall-clock seconds per stage, under the keys ``report.json`` has always used (``slice_s``, …)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def span(self, key: str) -> Iterator[None]:
        """Time one stage under ``key``; without a terminal it also logs its start and end (``budget_search_s`` →
        ``[edgeslice] budget search: start``, see :func:`edgeslice._progress.stage`)."""
        t = time.perf_counter()
        with stage(key.removesuffix("_s").replace("_", " ")):
            yield
        self.seconds[key] = time.perf_counter() - t

    def finish(self) -> None:
        self.seconds["total_s"] = time.perf_counter() - self.start


@dataclass
class Loaded:
    """Stage 1: the model to compress, its data and its accuracy."""

    timm_name: str
    bundle: DataBundle
    model: nn.Module
    meta: ModelMeta
    prepare: Callable[[torch.Tensor], torch.Tensor]
    baseline_source: str
    from_cache: bool
    accuracy: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class Sliced:
    """Stage 2: the calibrated slicer, one θ's result and index, and what the later stages compare against."""

    slicer: SemanticSlicer
    result: SliceResult
    index: CriticalIndex
    dense: nn.Module  # an unpruned copy of the model: masked equivalence, the "before" ONNX, every budget candidate
    example: torch.Tensor  # the first 64 test images, normalised, on the device
    input_shape: tuple[int, int, int]


@dataclass
class Restructured:
    """Stage 3: the non-critical channels physically removed, proven equal to masking them."""

    report: RestructureReport
    equivalence: float
    accuracy: float


@dataclass
class Tuned:
    """Stages 4–5: accuracy after fine-tuning and, when enabled, after iterative pruning."""

    accuracy_finetuned: float
    accuracy: float
    prune_report: Any = None
    dense_control: dict[str, Any] | None = None  # the dense model fine-tuned the same way (own baselines)


@dataclass
class Exported:
    """Stages 6–7: the files written to the staging folder and what they measure."""

    index_bytes: int
    after: dict[str, Any]
    before: dict[str, Any]
    parity: float
    int8: dict[str, Any] | None
    budget: dict[str, Any] | None
    layers: list[dict[str, Any]]


@dataclass(frozen=True)
class CompressReport:
    """What ``edgeslice compress`` measured and wrote: ``report.json`` is :func:`.report.report_json` of it, and
    ``--json`` prints the same with ``out`` set. Nested parts that other tools read as documents (the ONNX costs,
    the budget, the pruning run) stay JSON objects."""

    model: str
    data: dict[str, Any]
    config: dict[str, Any]
    device: str
    precision: str
    opset: int
    baseline: dict[str, Any]
    warnings: list[str]
    slicing: dict[str, Any]
    params_before: int
    params_after: int
    nonzero_params_after: int
    compression_rate: float
    restructure_compression_rate: float
    accuracy_finetuned: float | None
    pruning: dict[str, Any] | None
    accuracy_before: float
    dense_control: dict[str, Any] | None
    accuracy_restructured: float
    accuracy_after: float
    restructure_equivalence_max_abs: float
    onnx_parity_max_abs: float
    onnx_before: dict[str, Any]
    onnx_after: dict[str, Any]
    int8: dict[str, Any] | None
    budget: dict[str, Any] | None
    index_bytes: int
    layers: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    timings_s: dict[str, float]
    bundle: dict[str, Any]
    out: str | None = optional()  # set by :func:`.compress.run`; absent from report.json
