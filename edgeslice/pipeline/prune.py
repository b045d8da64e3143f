"""``edgeslice prune``: iterative unstructured pruning of a checkpoint, and the artifacts of a pruning run.

The algorithms (allocations, masks, the resumable loop) are :mod:`edgeslice.pruning`; this module is the command's
flow: load the checkpoint and its data, resolve the CR denominator and the accuracy budget's reference, prune, and
write ONNX (plain weights, BatchNorm folded), checkpoint, report, manifest and the accuracy-vs-compression plot.

config = PruneConfig(model="mlp", checkpoint=Path("out/train/model.safetensors"), data="digits", out=Path("out/p"))
report = run(config, torch.device("cpu"))
print(report.compression_rate, report.iterations, report.accuracy)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..artifacts.staging import claim_output, staging_dir
from ..pruning import ARTIFACTS, IterativePruneConfig
from ..pruning import PruneReport as PruningResult  # the loop's report; the command's is PruneReport below
from .report import HIDDEN

if TYPE_CHECKING:
    from ..data import DataBundle
    from ..models import ModelMeta


@dataclass(frozen=True)
class PruneConfig:
    """What ``edgeslice prune`` does, as one validated value (the command's options, same names)."""

    model: str
    checkpoint: Path
    pruner: str = "lamp"
    data: str = "fashion-mnist"
    prune_step: float = 0.2
    max_iterations: int = 10
    max_acc_drop: float = 1.0
    finetune_steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    dense_params: int | None = None
    baseline_accuracy: float | None = None
    out: Path = Path("edgeslice-out/prune")
    resume: bool = False
    download: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _ = self.pruning  # validates pruner, prune_step, max_iterations, max_acc_drop and finetune_steps
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"batch-size must be >= 1 and lr > 0, got {self.batch_size} and {self.lr}")
        if self.dense_params is not None and self.dense_params < 1:
            raise ValueError(f"dense-params must be >= 1, got {self.dense_params}")

    @property
    def pruning(self) -> IterativePruneConfig:
        """The settings of the iterative loop."""
        return IterativePruneConfig(
            pruner=self.pruner,
            prune_step=self.prune_step,
            max_iterations=self.max_iterations,
            max_acc_drop=self.max_acc_drop,
            finetune_steps=self.finetune_steps,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PruneReport:
    """What ``edgeslice prune`` wrote and measured (``--json`` prints these fields; ``data_name`` is for the tables).

    The fields after ``out`` are :class:`edgeslice.pruning.PruneReport`'s (see there), then its two counts.
    """

    model: str
    out: str
    config: dict[str, Any]
    dense_params: int
    params: int
    baseline_accuracy: float
    start: dict[str, Any]
    history: list[dict[str, Any]]
    stop_reason: str
    accuracy: float
    compression_rate: float
    nonzero_params: int
    prunable_sparsity: float
    wall_s: float
    resumed_from: int
    onnx: dict[str, Any] | None
    notes: list[str]
    version: int
    iterations: int
    iterations_kept: int
    data_name: str = field(default="", metadata=HIDDEN)


@dataclass(frozen=True)
class Loaded:
    """The checkpoint, its data, and the two references the numbers are measured against."""

    net: nn.Module
    meta: ModelMeta
    bundle: DataBundle
    dense_params: int
    dense_source: str
    baseline_accuracy: float | None
    baseline_source: str


def run(
    config: PruneConfig, device: torch.device, *, on_iteration: Callable[[dict[str, Any]], None] | None = None
) -> PruneReport:
    """Prune ``config.checkpoint`` iteratively and write :data:`ARTIFACTS` to ``config.out`` (all or nothing).

    The resume state is saved after each iteration (``config.resume`` continues from it) and removed once ``out`` is
    complete. ``on_iteration`` is called with each iteration's history entry as it is recorded.

    Raises:
        OutputError: ``config.out`` cannot be written or holds files edgeslice did not write (checked first).
        ModelError, DataError: the checkpoint or the data is unusable, or they do not fit each other.
    """
    from ..pruning import state_dir_for

    with claim_output(config.out):
        loaded = load_stage(config)
        state_dir = state_dir_for(config.out)
        result = prune_stage(config, loaded, device, state_dir, on_iteration)
        manifest = _manifest_config(config, loaded, result, device)
        export_pruned(loaded.net, loaded.meta, loaded.bundle, result, config.out, config=manifest, seed=config.seed,
                      state_dir=state_dir)  # fmt: skip
    doc = {"model": loaded.meta.timm_name, "out": str(config.out), **result.to_dict()}
    return PruneReport(**doc, data_name=loaded.bundle.name)


def load_stage(config: PruneConfig) -> Loaded:
    """The checkpoint checked against its data, the dense parameter count and the budget's reference accuracy."""
    from ..models import count_parameters, load_checkpoint, resolve_model_name
    from ..pruning import resolve_dense_params
    from .baseline import check_against_data, load_checkpoint_data

    net, meta = load_checkpoint(config.checkpoint, expect_model=resolve_model_name(config.model))
    bundle = load_checkpoint_data(meta, config.data, seed=config.seed, download=config.download)
    check_against_data(meta, bundle)
    dense, dense_source = resolve_dense_params(meta, count_parameters(net), config.dense_params)
    baseline, baseline_source = config.baseline_accuracy, "given"
    if baseline is None and meta.restructured and isinstance(meta.info.get("baseline_accuracy"), int | float):
        baseline, baseline_source = float(meta.info["baseline_accuracy"]), "checkpoint info (dense model)"
    elif baseline is None:
        baseline_source = "the checkpoint's measured accuracy"
    return Loaded(net, meta, bundle, dense, dense_source, baseline, baseline_source)


def prune_stage(
    config: PruneConfig,
    loaded: Loaded,
    device: torch.device,
    state_dir: Path,
    on_iteration: Callable[[dict[str, Any]], None] | None,
) -> PruningResult:
    """The resumable prune → fine-tune → test loop; the result notes where the two references came from."""
    from ..pruning import prune_pipeline_

    result = prune_pipeline_(
        loaded.net,
        loaded.meta,
        loaded.bundle,
        config.pruning,
        device=device,
        dense_params=loaded.dense_params,
        baseline_accuracy=loaded.baseline_accuracy,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        state_dir=state_dir,
        resume=config.resume,
        on_iteration=on_iteration,
    )
    result.notes.append(f"dense parameter count: {loaded.dense_source}")
    result.notes.append(f"baseline accuracy: {loaded.baseline_source}")
    return result


def _manifest_config(config: PruneConfig, loaded: Loaded, result: PruningResult, device: torch.device) -> dict:
    return {
        "command": "prune",
        "model": loaded.meta.timm_name,
        "checkpoint": str(config.checkpoint),
        "data": config.data,
        "pruning": config.pruning.to_dict(),
        "batch_size": config.batch_size,
        "lr": config.lr,
        "dense_params": loaded.dense_params,
        "baseline_accuracy": result.baseline_accuracy,
        "device": str(device),
    }


def export_pruned(
    model: nn.Module,
    meta: ModelMeta,
    bundle: DataBundle,
    report: PruningResult,
    out: str | Path,
    *,
    config: dict[str, Any],
    seed: int,
    title: str | None = None,
    state_dir: Path | None = None,
) -> PruningResult:
    """Writes every artifact of :data:`ARTIFACTS` into ``out`` through a staging folder, so ``out`` only ever holds
    a complete set (an existing ``out`` is left as it was if anything fails).

    Args:
        model: The pruned model.
        meta: Meta of the checkpoint it came from.
        bundle: Data (for the ONNX example batch).
        report: From :func:`~edgeslice.pruning.prune_pipeline_`.
        out: Output folder.
        config: The effective configuration, recorded in ``manifest.json``.
        seed: The run's seed, recorded in ``manifest.json``.
        title: Plot title.
        state_dir: The run's resume state, removed once ``out`` is complete.

    Returns:
        ``report``, with ``onnx`` filled in.
    """
    from ..artifacts.manifest import write_manifest
    from ..pruning import clear_state

    with staging_dir(out) as staging:
        write_pruned_artifacts(model, meta, bundle, report, staging, title=title)
        write_manifest(staging, config, seed)
    if state_dir is not None:
        clear_state(state_dir)
    return report


def write_pruned_artifacts(
    model: nn.Module,
    meta: ModelMeta,
    bundle: DataBundle,
    report: PruningResult,
    folder: Path,
    *,
    title: str | None = None,
) -> PruningResult:
    """Writes ``model.onnx``, ``model.safetensors`` + ``model.json``, ``report.json`` and ``accuracy_vs_cr.png``.

    No manifest and no staging: for callers that write into their own staging folder. The masks are made permanent
    first; ``report.onnx`` is filled in (sizes, latency, parity, non-zero ONNX weights).

    Args:
        model: The pruned model (moved to the CPU).
        meta: The meta of the checkpoint it came from; the new sidecar keeps its ``info`` and adds
            ``dense_params``, ``test_accuracy``, ``baseline_accuracy`` and a ``pruning`` summary.
        bundle: Data; a few test images serve as the ONNX example and parity batch.
        report: From :func:`~edgeslice.pruning.prune_pipeline_`.
        folder: Existing folder to write into.
        title: Plot title.

    Returns:
        ``report``, with ``onnx`` filled in.

    Raises:
        ExportError: If ONNX export fails or onnxruntime disagrees with PyTorch.
    """
    from ..artifacts.files import atomic_write_json
    from ..models import save_checkpoint
    from ..pruning import curve_points, make_permanent_, plot_prune_curves

    make_permanent_(model)
    model.cpu().eval()
    save_checkpoint(model, _pruned_meta(meta, report), folder / "model.safetensors")
    report.onnx = _export_onnx(model, meta, bundle, folder / "model.onnx")
    atomic_write_json(folder / "report.json", {"model": meta.timm_name, "data": bundle.describe(), **report.to_dict()})
    cfg = report.config
    plot_prune_curves(
        {cfg["pruner"]: curve_points(report)},
        folder / "accuracy_vs_cr.png",
        title or f"{meta.timm_name} on {bundle.name}: {cfg['pruner']}, step {cfg['prune_step']:g}",
        baseline_accuracy=report.baseline_accuracy,
        max_acc_drop=cfg["max_acc_drop"],
    )
    return report


def _pruned_meta(meta: ModelMeta, report: PruningResult) -> ModelMeta:
    """The source checkpoint's meta, its ``info`` extended by the pruning run's numbers."""
    from ..models import ModelMeta

    info = {
        **meta.info,
        "dense_params": report.dense_params,
        "test_accuracy": report.accuracy,
        "baseline_accuracy": report.baseline_accuracy,
        "pruning": {
            **report.config,
            "compression_rate": report.compression_rate,
            "iterations": report.iterations,
            "nonzero_params": report.nonzero_params,
            "source_fingerprint": meta.fingerprint,
        },
    }
    return ModelMeta(
        timm_name=meta.timm_name,
        classes=list(meta.classes),
        in_chans=meta.in_chans,
        input_size=meta.input_size,
        mean=list(meta.mean),
        std=list(meta.std),
        restructured=meta.restructured,
        info=info,
    )


def _export_onnx(model: nn.Module, meta: ModelMeta, bundle: DataBundle, onnx_path: Path) -> dict[str, Any]:
    """Export and measure ``model`` (already on the CPU, plain weights) as ONNX: sizes, latency, parity, weights."""
    from ..data import normalize
    from ..deploy.export import check_parity
    from ..deploy.measure import export_and_measure
    from ..pruning import onnx_weight_stats, sparsity_report
    from ..train import iterate_batches

    images, _ = next(iterate_batches(bundle.test, 16))
    x = normalize(images, tuple(meta.mean), tuple(meta.std)).contiguous()
    sizes = export_and_measure(model, x, onnx_path)
    parity = check_parity(model, onnx_path, x)
    return {
        **sizes,
        "parity_max_abs": parity,
        **onnx_weight_stats(onnx_path),
        "torch_nonzero_prunable_weights": sparsity_report(model)["total"]["n_nonzero"],
    }


__all__ = ["ARTIFACTS", "PruneConfig", "PruneReport", "export_pruned", "run", "write_pruned_artifacts"]
