"""The calibrate and slice stage shared by ``slice``, ``compress`` and the evaluations: a seeded per-class
calibration sample, one pass of the slicer, the critical-neuron index bound to the model, and the per-layer view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from .._progress import progress
from ..artifacts.files import pyplot, save_figure
from ..data import DataBundle, calibration_indices
from ..index import CriticalIndex
from ..models import ModelMeta, fingerprint
from ..ondevice.host_stats import attach_class_stats
from ..slicing import SemanticSlicer, SliceResult
from ..train import iterate_batches
from .baseline import make_prepare
from .config import SliceConfig


def calibration_set(bundle: DataBundle, per_class: int, seed: int) -> Subset:
    """The fixed, seeded per-class calibration sample of the training split."""
    return Subset(bundle.train, calibration_indices(bundle.train, per_class, seed))


def slice_model(
    model: nn.Module,
    meta: ModelMeta,
    bundle: DataBundle,
    cfg: SliceConfig,
    *,
    seed: int,
    device: torch.device,
    batch_size: int = 100,
    class_batch: int | None = None,
) -> tuple[SemanticSlicer, SliceResult, CriticalIndex]:
    """Calibrate on a seeded per-class sample, slice, and build the index bound to the model's fingerprint.

    Under torchrun the calibration batches are shared out over the ranks and the index is the same, byte for byte,
    as one process's (``batch_size`` fixes the chunks of the exact sums: keep it independent of the world size).
    ``class_batch`` bounds how many classes' Gram matrices are held at once (same result, more passes).
    """
    calib = calibration_set(bundle, cfg.calib_per_class, seed)
    example = make_prepare(meta)(next(iterate_batches(calib, 2))[0].to(device))
    slicer = SemanticSlicer(model, example, metric=cfg.metric, similarity=cfg.similarity, baseline=cfg.baseline)
    with progress(f"calibrate ({cfg.metric})", len(calib)) as advance:
        slicer.calibrate(
            iterate_batches(calib, batch_size),
            num_classes=len(meta.classes),
            prepare=make_prepare(meta),
            device=device,
            on_batch=advance,
            class_batch=class_batch,
        )
    if cfg.strategy == "semantic":
        result = slicer.slice(theta=cfg.theta, strategy="semantic", solver=cfg.solver, interval=cfg.interval)
    else:
        result = slicer.slice(ratio=cfg.ratio, strategy=cfg.strategy)
    index = CriticalIndex(
        model_fingerprint=meta.fingerprint or fingerprint(model),
        timm_name=meta.timm_name,
        layers=[{"name": la.name, "observe": la.observe, "channels": la.channels} for la in slicer.layers],
        critical=result.critical,
        per_class=result.per_class,
        classes=list(meta.classes),
        params=result.params,
        calibration={
            "dataset": bundle.name,
            "source": bundle.source,
            "split": "train",
            "per_class": cfg.calib_per_class,
            "seed": seed,
            "samples": len(calib),
        },
    )
    attach_class_stats(index, model, meta, bundle.train, seed=seed, device=device)  # the class-IL head's (issue 16)
    return slicer, result, index


def layer_table(result: SliceResult, effective: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Per layer: critical / total channels (and channels kept after coupling, when restructured)."""
    rows = []
    for la in result.layers:
        row = {"layer": la.name, "channels": la.channels, "critical": int(result.critical[la.name].sum())}
        if effective is not None:
            row["kept"] = int(effective[la.name].sum())
        rows.append(row)
    return rows


def plot_layer_ratios(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Bar chart of the critical (and kept) share of channels per layer, as PNG."""
    plt = pyplot()

    names = [r["layer"] for r in rows]
    crit = [r["critical"] / r["channels"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(rows)), 4.2), dpi=110)
    ax.bar(range(len(rows)), crit, color="#e07b39", label="critical")
    if rows and "kept" in rows[0]:
        kept = [r["kept"] / r["channels"] for r in rows]
        ax.plot(range(len(rows)), kept, "k.", label="kept after coupling")
    ax.set_xticks(range(len(rows)), names, rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of channels")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)


def describe_slice(result: SliceResult) -> str:
    p = result.params
    sel = f"θ={p['theta']:g}" if "theta" in p else f"ratio={p['ratio']:g}"
    return f"{p['strategy']}, {p['metric']}, {sel}"
