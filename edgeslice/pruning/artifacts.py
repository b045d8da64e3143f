"""What the artifacts of a pruning run are made of: the non-zero weights of its ONNX file and the
accuracy-vs-compression plot (``edgeslice.pipeline.prune`` writes the artifacts; ``compress`` and the benchmarks plot).

Example:
    >>> report = prune_pipeline_(model, meta, bundle, cfg, device=device, dense_params=n, baseline_accuracy=None)
    >>> plot_prune_curves({cfg.pruner: curve_points(report)}, Path("out/accuracy_vs_cr.png"), "lamp")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts.files import pyplot, save_figure

if TYPE_CHECKING:
    from .run import PruneReport

#: Files a pruning run writes (:func:`edgeslice.pipeline.prune.export_pruned`).
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
