"""Stages 6–7 of ``compress``: the artifacts written into the staging folder — index, checkpoint, ONNX (+ int8),
parity, budgets, figures (:func:`export_stage`) — and the device bundle growth starts from (:func:`bundle_stage`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import save_checkpoint
from .baseline import meta_for
from .calibrate import calibration_set, describe_slice, layer_table, plot_layer_ratios, slice_model
from .config import CompressConfig
from .device_search import Search, budget_stage
from .results import Exported, Loaded, Restructured, Sliced, Tuned


def export_stage(
    cfg: CompressConfig,
    effective: CompressConfig,
    staging: Path,
    search: Search,
    loaded: Loaded,
    sliced: Sliced,
    model: nn.Module,
    rs: Restructured,
    tuned: Tuned,
) -> Exported:
    """Stages 6–7: index, checkpoint, ONNX (+ int8) into ``staging``, parity, budgets, the "before" model, figures.

    Raises:
        DoesNotFit: with a device profile, the measured artifacts miss a budget.
    """
    from ..deploy.budget import measure_model
    from ..deploy.devices import BYTES_PER_ELEMENT
    from ..deploy.export import check_parity
    from ..deploy.int8 import int8_artifact
    from ..deploy.measure import export_and_measure

    meta, bundle, result, index = loaded.meta, loaded.bundle, sliced.result, sliced.index
    if cfg.widths != "theta":  # the shipped model has the θ slice's size, not necessarily its critical channels
        index = replace(index, params={**index.params, "widths": cfg.widths})
    # The slice of the dense model that decided what to remove; the device's critical_index (bound to the compact
    # model) is written by bundle_stage.
    index_path = index.save(staging / SOURCE_INDEX)
    pruning = (
        None
        if tuned.prune_report is None
        else {"pruner": cfg.pruning.pruner, "cr": tuned.prune_report.compression_rate}
    )
    meta_out = meta_for(
        loaded.timm_name, bundle, source_fingerprint=index.model_fingerprint, baseline=loaded.baseline_source,
        slicing=result.params, test_accuracy=tuned.accuracy, baseline_accuracy=loaded.accuracy,
        dense_params=rs.report.params_before, pruning=pruning,
    )  # fmt: skip
    meta_out.restructured = True
    model.cpu()
    save_checkpoint(model, meta_out, staging / "model.safetensors")
    x_cpu = sliced.example.cpu()
    threads = search.profile.threads if search.profile is not None else 1
    after = export_and_measure(model, x_cpu, staging / "model.onnx", search.opset, threads=threads)
    parity = check_parity(model, staging / "model.onnx", x_cpu)
    estimate = measure_model(model, sliced.input_shape, "fp32")["peak_activation_bytes"]
    beside_estimate(after, estimate)
    int8 = None
    if effective.quantize == "int8":
        calib = calibration_set(bundle, cfg.slicing.calib_per_class, cfg.seed)
        int8 = int8_artifact(staging / "model.onnx", staging / "model.int8.onnx", calib, bundle.test, loaded.prepare,
                             threads=threads)  # fmt: skip
        beside_estimate(int8, estimate * BYTES_PER_ELEMENT["int8"] // BYTES_PER_ELEMENT["fp32"])
    budget = budget_stage(cfg, effective, search, model, meta, staging, tuned.prune_report)
    before = export_and_measure(sliced.dense.cpu(), x_cpu, staging / "baseline.onnx", search.opset, threads=threads)
    (staging / "baseline.onnx").unlink()
    beside_estimate(before, measure_model(sliced.dense, sliced.input_shape, "fp32")["peak_activation_bytes"])
    if tuned.prune_report is not None:
        from ..pruning import curve_points, plot_prune_curves

        plot_prune_curves(
            {f"NeuSemSlice + {cfg.pruning.pruner}": curve_points(tuned.prune_report)},
            staging / "accuracy_vs_cr.png",
            f"{loaded.timm_name} on {bundle.name}: iterative {cfg.pruning.pruner} after semantic restructure",
            baseline_accuracy=loaded.accuracy,
            max_acc_drop=cfg.pruning.max_acc_drop,
        )
    rows = layer_table(result, rs.report.effective_keep)
    title = f"{loaded.timm_name} on {bundle.name}: critical channels per layer ({describe_slice(result)})"
    plot_layer_ratios(rows, staging / "critical_ratio.png", title)
    return Exported(index_path.stat().st_size, after, before, parity, int8, budget, rows)


def beside_estimate(cost: dict[str, Any], estimate_bytes: int) -> None:
    """Put the RAM budget's activation estimate beside the peak measured on the ONNX graph (``cost`` in place)."""
    cost["peak_activation"] = {
        **cost["peak_activation"],
        "budget_estimate_bytes": int(estimate_bytes),
        "budget_estimate_method": "what the RAM budget counts (edgeslice.deploy.budget.count_macs): the largest "
        "input + output of one PyTorch layer at batch 1, times bytes per element of the precision",
    }


#: The dense model's slice (what restructuring removed); ``critical_index`` is the compact model's own.
SOURCE_INDEX = "source_index"


def bundle_stage(cfg: CompressConfig, staging: Path, loaded: Loaded, model: nn.Module, device: torch.device) -> dict:
    """Stage 7b: make ``staging`` the device bundle: the compact model re-sliced at ``cfg.grow_theta`` (its own
    ``critical_index``: the channels growth keeps frozen, bound to the shipped weights), the class statistics over
    its classifier inputs, the preprocessing, and ``bundle.json`` binding them (``edgeslice_device``'s format)."""
    from ..deploy.bundle import class_statistics, write_bundle
    from ..models import read_meta

    meta = read_meta(staging / "model.json")
    grow = replace(cfg.slicing, strategy="semantic", theta=cfg.grow_theta)
    model.to(device)
    _, result, index = slice_model(model, meta, loaded.bundle, grow, seed=cfg.seed, device=device)
    index.save(staging / "critical_index")
    stats = class_statistics(model, loaded.bundle.train, meta.classes, loaded.prepare, seed=cfg.seed, device=device)
    model.cpu()
    write_bundle(staging, model, meta, stats, history=[{"op": "compress", "path": "host", "classes": meta.classes}])
    return {
        "grow_theta": cfg.grow_theta,
        "critical_channels": result.kept_channels,
        "trainable_channels": result.total_channels - result.kept_channels,
        "total_channels": result.total_channels,
        "stats_features": int(stats.means.shape[1]),
        "stats_items": int(stats.counts.sum()),
    }
