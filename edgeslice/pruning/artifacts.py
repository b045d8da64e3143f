"""Artifacts of a pruning run: ONNX (plain weights, BatchNorm folded), checkpoint, report, manifest and the
accuracy-vs-compression plot.

Example:
    >>> report = prune_pipeline_(model, meta, bundle, cfg, device=device, dense_params=n, baseline_accuracy=None)
    >>> export_pruned(model, meta, bundle, report, Path("out"), config={"pruning": cfg.to_dict()}, seed=0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..artifacts.files import pyplot, save_figure
from ._state import clear_state
from .masks import make_permanent_, sparsity_report
from .run import PruneReport

if TYPE_CHECKING:
    from ..data import DataBundle
    from ..models import ModelMeta

#: Files :func:`export_pruned` writes.
ARTIFACTS = ("model.onnx", "model.safetensors", "model.json", "report.json", "manifest.json", "accuracy_vs_cr.png")


def onnx_weight_stats(path: str | Path) -> dict[str, int]:
    """Counts the weights (input 1) of every Conv, Gemm and MatMul node of an ONNX file, and the non-zero ones.

    BatchNorm folding scales each output channel of a conv, so zeros stay zeros: the non-zero count must equal the
    PyTorch model's non-zero prunable weights.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    constants = {
        n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
    }
    n_weights = n_nonzero = 0
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] in seen:
            continue
        tensor = inits.get(node.input[1]) or constants.get(node.input[1])
        if tensor is None:
            continue
        seen.add(node.input[1])
        array = numpy_helper.to_array(tensor)
        n_weights += int(array.size)
        n_nonzero += int((array != 0).sum())
    return {"weights": n_weights, "nonzero_weights": n_nonzero}


def plot_prune_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: Path,
    title: str,
    *,
    baseline_accuracy: float | None = None,
    max_acc_drop: float | None = None,
) -> Path:
    """Accuracy vs compression rate, one line per method, as PNG.

    Args:
        curves: Method label → points ``{"compression_rate", "accuracy", "kept"}`` in iteration order (the starting
            point first). Kept points are joined by a line; rejected ones are drawn as crosses.
        path: PNG file to write (atomically).
        title: Plot title.
        baseline_accuracy: Draws the dense accuracy as a dashed line.
        max_acc_drop: With ``baseline_accuracy``, draws the accuracy budget as a dotted line.

    Returns:
        ``path``.
    """
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for i, (label, points) in enumerate(curves.items()):
        color = f"C{i % 10}"
        for kept, style in ((True, "o-"), (False, "x")):
            chosen = [p for p in points if p.get("kept", True) is kept]
            if chosen:
                xs, ys = [100 * p["compression_rate"] for p in chosen], [p["accuracy"] for p in chosen]
                ax.plot(xs, ys, style, ms=3 if kept else 6, color=color, label=label if kept else None)
    if baseline_accuracy is not None:
        ax.axhline(baseline_accuracy, color="k", ls="--", lw=0.8, label="dense baseline")
        if max_acc_drop is not None:
            ax.axhline(baseline_accuracy - max_acc_drop, color="k", ls=":", lw=0.8, label="accuracy budget")
    ax.set_xlabel("compression rate vs dense model (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def curve_points(report: PruneReport) -> list[dict[str, Any]]:
    """The report's starting point followed by its iterations, for :func:`plot_prune_curves`."""
    return [{**report.start, "kept": True}, *report.history]


def write_pruned_artifacts(
    model: nn.Module,
    meta: ModelMeta,
    bundle: DataBundle,
    report: PruneReport,
    folder: Path,
    *,
    title: str | None = None,
) -> PruneReport:
    """Writes ``model.onnx``, ``model.safetensors`` + ``model.json``, ``report.json`` and ``accuracy_vs_cr.png``.

    No manifest and no staging: for callers (``compress``) that write into their own staging folder. The masks are
    made permanent first; ``report.onnx`` is filled in (sizes, latency, parity, non-zero ONNX weights).

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
    from ..data import normalize
    from ..deploy.export import check_parity
    from ..deploy.measure import export_and_measure
    from ..models import ModelMeta, save_checkpoint
    from ..train import iterate_batches

    make_permanent_(model)
    model.cpu().eval()
    images, _ = next(iterate_batches(bundle.test, 16))
    x = normalize(images, tuple(meta.mean), tuple(meta.std)).contiguous()
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
    meta_out = ModelMeta(
        timm_name=meta.timm_name,
        classes=list(meta.classes),
        in_chans=meta.in_chans,
        input_size=meta.input_size,
        mean=list(meta.mean),
        std=list(meta.std),
        restructured=meta.restructured,
        info=info,
    )
    save_checkpoint(model, meta_out, folder / "model.safetensors")
    onnx_path = folder / "model.onnx"
    sizes = export_and_measure(model, x, onnx_path)
    parity = check_parity(model, onnx_path, x)
    report.onnx = {
        **sizes,
        "parity_max_abs": parity,
        **onnx_weight_stats(onnx_path),
        "torch_nonzero_prunable_weights": sparsity_report(model)["total"]["n_nonzero"],
    }
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


def export_pruned(
    model: nn.Module,
    meta: ModelMeta,
    bundle: DataBundle,
    report: PruneReport,
    out: str | Path,
    *,
    config: dict[str, Any],
    seed: int,
    title: str | None = None,
    state_dir: Path | None = None,
) -> PruneReport:
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
    from ..artifacts.staging import staging_dir

    with staging_dir(out) as stage:
        write_pruned_artifacts(model, meta, bundle, report, stage, title=title)
        write_manifest(stage, config, seed)
    if state_dir is not None:
        clear_state(state_dir)
    return report
