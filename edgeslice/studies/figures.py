"""The RQ1 figure (paper Fig. 5): accuracy vs compression rate, one panel per metric, DeepArc as a star."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifacts.files import pyplot, save_figure

_STYLE = {
    "semantic": ("#d62728", "o", "-"),
    "category": ("#1f77b4", "s", "--"),
    "global": ("#2ca02c", "^", "--"),
    "random": ("#7f7f7f", "x", ":"),
    "magnitude": ("#9467bd", "d", ":"),
}


def plot_rq1(
    rows: list[dict[str, Any]],
    path: Path,
    *,
    title: str,
    baseline_accuracy: float | None = None,
    deeparc: dict[str, Any] | None = None,
    auc: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write the figure as PNG (atomically) and return its path.

    Args:
        rows: RQ1 points (metric, strategy, compression_rate, accuracy).
        path: where to write.
        title: figure title.
        baseline_accuracy: the unsliced model's accuracy (dashed line).
        deeparc: ``{"compression_rate", "accuracy"}`` of the DeepArc model (a star in every panel).
        auc: :func:`~edgeslice.studies.sweep.auc_table` output, for the legend.
    """
    plt = pyplot()

    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    cols = min(3, max(1, len(metrics)))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), dpi=110, squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for strategy in dict.fromkeys(r["strategy"] for r in rows):
            pts = sorted(
                (100 * r["compression_rate"], r["accuracy"])
                for r in rows
                if r["metric"] == metric and r["strategy"] == strategy
            )
            if not pts:
                continue
            color, marker, line = _STYLE.get(strategy, ("k", ".", "-"))
            value = (auc or {}).get(metric, {}).get("auc", {}).get(strategy)
            label = strategy + (f" (AUC {value:.1f})" if value is not None else "")
            ax.plot(*zip(*pts, strict=True), line, marker=marker, color=color, ms=4, lw=1.2, label=label)
        if baseline_accuracy is not None:
            ax.axhline(baseline_accuracy, color="k", lw=0.8, ls="-.", alpha=0.6, label="unsliced")
        if deeparc is not None:
            ax.plot(
                100 * deeparc["compression_rate"],
                deeparc["accuracy"],
                "*",
                color="#ff7f0e",
                ms=13,
                mec="k",
                label="DeepArc",
            )
        span = (auc or {}).get(metric, {}).get("range")
        if span:
            ax.axvspan(span[0], span[1], color="#cccccc", alpha=0.25, lw=0)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("compression rate (%)", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_xlim(left=0)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
