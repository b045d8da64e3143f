"""The whole RQ1 evaluation as one call: calibrate once, sweep, AUC, masking study, DeepArc, coupling.

Used by ``edgeslice evaluate-slices`` (:mod:`edgeslice.pipeline.evaluate`) and by ``benchmarks/rq1_slicing.py``;
works for any model :func:`~edgeslice.slicing.find_layers` understands (timm CNNs, plain ``nn.Sequential`` MLPs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..slicing.metrics import get_metric
from ..slicing.slicer import SOLVERS, STRATEGIES, SemanticSlicer
from ..slicing.solver import SIMILARITIES
from .masking import masking_study
from .sweep import (
    DEFAULT_RATIOS,
    DEFAULT_THETAS,
    MASKS,
    MaskedEvaluator,
    accuracy,
    auc_table,
    points_to_count,
    rq1_sweep,
)

CONFIG_VERSION = 1
PAPER_METRICS = ("avg", "var", "ens", "deeplift", "taylor")


@dataclass(frozen=True)
class EvaluateConfig:
    """What ``evaluate-slices`` measures (validated on construction)."""

    metrics: tuple[str, ...] = PAPER_METRICS
    strategies: tuple[str, ...] = STRATEGIES
    thetas: tuple[float, ...] = DEFAULT_THETAS
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    similarity: str = "cka"
    baseline: str = "zero"
    solver: str = "exact"
    interval: int = 1
    calib_per_class: int = 100
    test_limit: int | None = None
    mask: str = "coupled"
    bands: int = 5
    deeparc: bool = True
    deeparc_threshold: float = 0.99
    deeparc_samples: int = 500
    seed: int = 0
    batch_size: int = 100
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        from ..slicing.deeplift import BASELINES

        for m in self.metrics:
            get_metric(m)
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategy {bad[0]!r}; valid: {', '.join(STRATEGIES)}")
        if not self.metrics or not self.strategies:
            raise ValueError("need at least one metric and one strategy")
        if any(not 0.0 < t <= 1.0 for t in self.thetas) or not self.thetas:
            raise ValueError("thetas must be in (0, 1]")
        if any(not 0.0 < r <= 1.0 for r in self.ratios) or not self.ratios:
            raise ValueError("ratios must be in (0, 1]")
        checks = [
            (self.similarity in SIMILARITIES, f"unknown similarity {self.similarity!r}"),
            (self.baseline in BASELINES, f"unknown DeepLIFT baseline {self.baseline!r}"),
            (self.solver in SOLVERS, f"unknown solver {self.solver!r}"),
            (self.mask in MASKS, f"unknown mask {self.mask!r}"),
            (self.interval >= 1, "interval must be >= 1"),
            (self.calib_per_class >= 1, "calib-per-class must be >= 1"),
            (self.test_limit is None or self.test_limit >= 1, "test-limit must be >= 1"),
            (0 <= self.bands <= 10, "bands must be in 0..10"),
            (0.0 < self.deeparc_threshold <= 1.0, "DeepArc threshold must be in (0, 1]"),
            (self.batch_size >= 1, "batch-size must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvaluateConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown evaluate settings: {', '.join(unknown)}")
        tuples = {k: tuple(v) for k, v in d.items() if k in ("metrics", "strategies", "thetas", "ratios")}
        return cls(**{**d, **tuples})


@dataclass
class _Batches:
    """Re-iterable batches of a dataset (the ``mean`` baseline reads the calibration set twice)."""

    dataset: Dataset
    batch_size: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from ..train import iterate_batches

        return iterate_batches(self.dataset, self.batch_size)


def test_subset(test: Dataset, limit: int | None, num_classes: int, seed: int) -> Dataset:
    """The whole test split, or a seeded class-stratified sample of about ``limit`` items."""
    from ..data import calibration_indices

    if limit is None or limit >= len(test):
        return test
    return Subset(test, calibration_indices(test, max(1, -(-limit // num_classes)), seed))


def run_evaluation(
    model: nn.Module,
    calib: Dataset,
    test: Dataset,
    *,
    num_classes: int,
    cfg: EvaluateConfig,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[str, int | None], Any] | None = None,
) -> dict[str, Any]:
    """Calibrate once on ``calib``, then measure every RQ1 point, the masking study and DeepArc on ``test``.

    Args:
        model: the trained, unsliced model (not changed).
        calib: the calibration sample (e.g. :func:`edgeslice.pipeline.calibration_set`).
        test: the test split (subsampled with ``cfg.test_limit``).
        num_classes: number of classes.
        cfg: what to measure.
        prepare: input normalisation.
        device: where to run.
        progress: ``progress(description, total)`` context manager yielding ``advance(n, **fields)``
            (default: :func:`edgeslice._progress.progress`).

    Returns:
        A JSON-able report: ``baseline_accuracy``, ``points``, ``auc``, ``masking``, ``deeparc``, ``coupling``,
        ``timings_s`` and the config.
    """
    from .._progress import progress as default_progress
    from ..train import iterate_batches

    bar = progress or default_progress
    timings: dict[str, float] = {}
    test = test_subset(test, cfg.test_limit, num_classes, cfg.seed)
    x0 = next(iterate_batches(calib, 2))[0].to(device)
    example = prepare(x0) if prepare is not None else x0
    model.eval()

    with _timed(timings, "calibrate_s"):
        base, batches = _calibrate(
            model, calib, example, num_classes=num_classes, cfg=cfg, prepare=prepare, device=device, bar=bar
        )
    slicers = {m: base.with_metric(m) for m in cfg.metrics}

    evaluator = MaskedEvaluator(
        model, base.layers, test, example=example, prepare=prepare, device=device, mask=cfg.mask
    )
    with _timed(timings, "baseline_accuracy_s"):
        baseline_accuracy = accuracy(model, test, prepare=prepare, device=device)
    with _timed(timings, "sweep_s"):
        rows = _sweep(slicers, evaluator, cfg, bar)

    masking: list[dict[str, Any]] = []
    if cfg.bands > 0:
        with _timed(timings, "masking_s"), bar("masking study", 2 * cfg.bands * len(cfg.metrics)) as advance:
            masking = masking_study(slicers, evaluator, bands=cfg.bands, num_classes=num_classes, on_step=advance)

    deeparc_out = None
    if cfg.deeparc:
        with _timed(timings, "deeparc_s"):
            deeparc_out = _deeparc(model, batches, test, cfg, prepare=prepare, device=device)
    with _timed(timings, "coupling_s"):
        coupling = _coupling(model, base, slicers, example, cfg)

    return {
        "config": cfg.to_dict(),
        "test_samples": len(test),
        "calibration_samples": len(calib),
        "layers": [{"name": la.name, "observe": la.observe, "channels": la.channels} for la in base.layers],
        "baseline_accuracy": baseline_accuracy,
        "points": rows,
        "auc": auc_table(rows),
        "masking": masking,
        "deeparc": deeparc_out,
        "coupling": coupling,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the seconds the block takes as ``timings[key]`` (when it succeeds)."""
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t


def _calibrate(
    model: nn.Module,
    calib: Dataset,
    example: torch.Tensor,
    *,
    num_classes: int,
    cfg: EvaluateConfig,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device | str,
    bar: Callable[[str, int | None], Any],
) -> tuple[SemanticSlicer, _Batches]:
    """One calibration pass that collects the statistics of every metric in ``cfg.metrics``."""
    base = SemanticSlicer(model, example, metric=cfg.metrics[0], similarity=cfg.similarity, baseline=cfg.baseline)
    batches = _Batches(calib, cfg.batch_size)
    with bar(f"calibrate ({', '.join(cfg.metrics)})", len(calib)) as advance:
        base.calibrate(
            batches, num_classes=num_classes, prepare=prepare, device=device, on_batch=advance, metrics=cfg.metrics
        )
    return base, batches


def _sweep(
    slicers: dict[str, SemanticSlicer], evaluator: MaskedEvaluator, cfg: EvaluateConfig, bar: Callable[..., Any]
) -> list[dict[str, Any]]:
    """Every RQ1 point of ``cfg`` (:func:`~edgeslice.studies.sweep.rq1_sweep`) under one progress bar."""
    total = points_to_count(cfg.metrics, cfg.strategies, cfg.thetas, cfg.ratios)
    with bar("RQ1 sweep", total) as advance:
        return rq1_sweep(
            slicers,
            evaluator,
            strategies=cfg.strategies,
            thetas=cfg.thetas,
            ratios=cfg.ratios,
            seed=cfg.seed,
            solver=cfg.solver,
            interval=cfg.interval,
            on_point=advance,
        )


def _deeparc(
    model: nn.Module,
    batches: _Batches,
    test: Dataset,
    cfg: EvaluateConfig,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device | str,
) -> dict[str, Any]:
    """DeepArc's redundant blocks and the accuracy of a copy of the model without them."""
    import copy

    from .deeparc import deeparc, remove_blocks_

    report = deeparc(
        model, batches, threshold=cfg.deeparc_threshold, prepare=prepare, device=device, max_samples=cfg.deeparc_samples
    )
    twin = remove_blocks_(copy.deepcopy(model), report.redundant)
    return {**report.to_dict(), "accuracy": accuracy(twin, test, prepare=prepare, device=device)}


def _coupling(
    model: nn.Module,
    base: SemanticSlicer,
    slicers: dict[str, SemanticSlicer],
    example: torch.Tensor,
    cfg: EvaluateConfig,
) -> dict[str, Any]:
    """Coupling of one representative semantic slice per metric (the middle θ): per layer and per group."""
    from .coupling import coupling_report

    coupling = {}
    if "semantic" in cfg.strategies:
        theta = sorted(cfg.thetas)[len(cfg.thetas) // 2]
        for metric, slicer in slicers.items():
            res = slicer.slice(theta=theta, solver=cfg.solver, interval=cfg.interval)
            rep = coupling_report(model, base.layers, res.critical, example, scores=res.scores)
            coupling[metric] = {"theta": theta, **rep.to_dict()}
    return coupling
