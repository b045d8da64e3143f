"""``edgeslice compress``, read top to bottom as its stages.

load model and data → calibrate + slice → (device search) → restructure → fine-tune → (iterative prune) → export →
measure → report. Each stage is one function returning a small dataclass; :func:`build_report` assembles
``report.json`` from those results. With a device profile the search stage picks θ and the restructure … export
stages run once per θ, stepping down while the measured artifacts miss a budget. Every artifact is written to a
staging folder and moved into ``--out`` only when the whole run succeeded (:mod:`edgeslice.artifacts.staging`).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.files import atomic_write_json
from ..artifacts.manifest import write_manifest
from ..artifacts.staging import claim_output, staging_dir
from ..classes import select_classes
from ..data import DataBundle
from ..errors import EdgesliceError
from ..models import (
    count_parameters,
    create_model,
    has_sidecar,
    load_checkpoint,
    read_meta,
    resolve_model_name,
)
from ..slicing import SliceResult
from ..train import TrainOptions, evaluate, iterate_batches, train_model
from .baseline import (
    BaselineRecipe,
    cached_baseline,
    check_against_data,
    check_data,
    edgeslice_home,
    load_compress_data,
    make_prepare,
    near_chance_warning,
)
from .calibrate import slice_model
from .config import CompressConfig
from .device_search import DoesNotFit, Search, resolve_target, search_stage
from .export import bundle_stage, export_stage
from .report import report_json
from .results import CompressReport, Exported, Loaded, Restructured, Sliced, Timer, Tuned


def run(config: CompressConfig, device: torch.device, out: Path | None = None) -> CompressReport:
    """``edgeslice compress``: :func:`compress` into ``out`` (default ``edgeslice-out/<timm name>``), with ``out`` set.

    A ``config.checkpoint`` with a sidecar must hold ``config.model``; its input size is the default image size.

    Raises:
        ValueError: the checkpoint is another model.
        BudgetError, OutputError: as :func:`compress`.
    """
    timm_name = resolve_model_name(config.model)
    out = out or Path("edgeslice-out") / timm_name
    with claim_output(out):  # before the checkpoint is read: --out is checked before any work
        report = compress(checkpoint_defaults(config, timm_name), out, device)
    return replace(report, out=str(out))


def checkpoint_defaults(config: CompressConfig, timm_name: str) -> CompressConfig:
    """Check that a checkpoint with a sidecar is ``timm_name``, and take its input size where none was given (a plain
    state dict has no sidecar to read here: the load stage checks it against the model)."""
    if config.checkpoint is None or not has_sidecar(Path(config.checkpoint)):
        return config
    meta = read_meta(Path(config.checkpoint))
    if meta.timm_name != timm_name:
        raise ValueError(f"checkpoint {config.checkpoint} is a {meta.timm_name!r}, not {timm_name!r}")
    return replace(config, image_size=config.image_size or meta.input_size)


def compress(cfg: CompressConfig, out: Path, device: torch.device) -> CompressReport:
    """Run the whole compression pipeline and write the artifacts to ``out``; returns the report.

    With ``cfg.device`` the θ of ``cfg.slicing`` is replaced by the largest θ of
    :data:`edgeslice.deploy.budget.DEFAULT_THETAS` whose model meets every budget of that device profile, in fp32 or
    int8, whichever admits the larger θ (fp32 on a tie; int8 only with ``cfg.quantize == "int8"``); the measured
    artifacts are checked again and the search steps down a θ if they miss a budget.

    Raises:
        BudgetError: no candidate meets the device's budgets (nothing is written).
        OutputError: ``out`` cannot be written, or another run holds it (checked before any work).
    """
    with claim_output(out):
        target = resolve_target(cfg)
        timer = Timer()
        loaded = load_stage(cfg, device, timer)
        sliced = slice_stage(cfg, loaded, device, timer)
        search = search_stage(cfg, target, sliced, timer)
        for theta in search.attempts:
            candidate, model = sliced, loaded.model
            if search.profile is not None:
                candidate = rethreshold(cfg, sliced, theta)
                sliced.dense.to(device)  # a previous attempt's export moved it to the CPU
                model = copy.deepcopy(sliced.dense)
            try:
                return build_candidate(cfg, out, device, timer, search, loaded, candidate, model)
            except DoesNotFit as e:
                search.failures.append(e)
        raise search.exhausted()


def load_stage(cfg: CompressConfig, device: torch.device, timer: Timer) -> Loaded:
    """Stage 1: the checkpoint (checked against the data) or the cached baseline, and its test accuracy."""
    with timer.span("baseline_s"):
        timm_name = resolve_model_name(cfg.model)
        if cfg.checkpoint:
            model, meta = load_checkpoint(
                cfg.checkpoint, expect_model=timm_name, use_ema=cfg.use_ema, image_size=cfg.image_size,
                mean=cfg.mean, std=cfg.std,
            )  # fmt: skip
            data_cfg = replace(cfg, image_size=cfg.image_size if cfg.image_size is not None else meta.input_size)
            bundle = select_classes(load_compress_data(data_cfg, timm_name), cfg.classes, min_classes=2)
            check_against_data(meta, bundle)
            preflight(model, bundle, cfg)
            model.to(device)
            source, cached = str(cfg.checkpoint), True
        else:
            bundle = select_classes(load_compress_data(cfg, timm_name), cfg.classes, min_classes=2)
            check_data(bundle)
            preflight(create_model(timm_name, num_classes=len(bundle.classes), in_chans=bundle.in_chans,
                                   input_size=bundle.image_size), bundle, cfg)  # fmt: skip
            model, meta, path, cached = cached_baseline(cfg.model, bundle, baseline_recipe(cfg), device=device)
            source = _cache_relative(path)
    prepare = make_prepare(meta)
    with timer.span("evaluate_s"):
        acc = evaluate(model, bundle.test, prepare=prepare, device=device, description="baseline accuracy")
    warnings = [w for w in [near_chance_warning(acc, len(meta.classes))] if w]
    for w in warnings:
        sys.stderr.write(f"warning: {w}\n")
    return Loaded(timm_name, bundle, model, meta, prepare, source, cached, acc, warnings)


def baseline_recipe(cfg: CompressConfig) -> BaselineRecipe:
    """How compress trains a baseline when no checkpoint is given (``--train-epochs`` and the data options)."""
    return BaselineRecipe(epochs=cfg.train_epochs, seed=cfg.seed, batch_size=cfg.batch_size, lr=cfg.lr,
                          pretrained=cfg.pretrained, pretrained_file=cfg.pretrained_file, use_ema=cfg.use_ema,
                          augment=cfg.augment, amp=cfg.amp)  # fmt: skip


def preflight(model: nn.Module, bundle: DataBundle, cfg: CompressConfig) -> None:
    """Refuse, in one line and before any training, a model family that restructuring or ``cfg.widths`` cannot handle.

    Runs on perturbed copies (:func:`edgeslice.restructure.check_restructurable`, then
    :func:`edgeslice.allocation.check_allocatable`: a slice of random images, the width rule, restructure, masked
    equivalence) with the global RNG forked, so the run's artifacts are the same with or without it.

    Raises:
        ModelError: naming the layer (or the width rule) and the reason.
    """
    from ..allocation import check_allocatable
    from ..restructure import check_restructurable

    with torch.random.fork_rng(devices=[]):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, bundle.in_chans, bundle.image_size, bundle.image_size, generator=g)
        check_restructurable(model, x)  # works on its own perturbed copy: ``model`` (on the CPU here) is untouched
        check_allocatable(model, x, cfg.widths, theta=cfg.slicing.theta, round_to=cfg.round_to)


def _cache_relative(path: Path) -> str:
    """The cached baseline's path relative to the cache, so artifacts do not depend on where it is."""
    try:
        return f"$EDGESLICE_HOME/{Path(path).resolve().relative_to(edgeslice_home().resolve())}"
    except ValueError:
        return str(path)


def slice_stage(cfg: CompressConfig, loaded: Loaded, device: torch.device, timer: Timer) -> Sliced:
    """Stage 2: one calibration pass, the slice at ``cfg.slicing``, and an unpruned copy of the model."""
    with timer.span("slice_s"):
        slicer, result, index = slice_model(
            loaded.model, loaded.meta, loaded.bundle, cfg.slicing, seed=cfg.seed, device=device
        )
    dense = copy.deepcopy(loaded.model).eval()
    example, _ = next(iterate_batches(loaded.bundle.test, 64))
    meta = loaded.meta
    return Sliced(
        slicer, result, index, dense, loaded.prepare(example.to(device)),
        (meta.in_chans, meta.input_size, meta.input_size),
    )  # fmt: skip


def rethreshold(cfg: CompressConfig, sliced: Sliced, theta: float) -> Sliced:
    """The same calibration sliced at another θ (the device search's candidates)."""
    s = cfg.slicing
    result = sliced.slicer.slice(theta=theta, strategy="semantic", solver=s.solver, interval=s.interval)
    index = replace(sliced.index, critical=result.critical, per_class=result.per_class, params=result.params)
    return replace(sliced, result=result, index=index)


def restructure_stage(
    cfg: CompressConfig, model: nn.Module, sliced: Sliced, loaded: Loaded, device: torch.device, timer: Timer
) -> Restructured:
    """Stage 3: remove the non-critical channels from ``model`` in place; refuse a model that differs from masking.

    Raises:
        EdgesliceError: the restructured model's logits differ from the masked dense model's (a bug, never shipped).
    """
    from ..allocation import allocate_keep
    from ..restructure import restructure_

    x = sliced.example
    with timer.span("restructure_s"):
        keep = allocate_keep(cfg.widths, model, sliced.slicer, sliced.result, x[:2], round_to=cfg.round_to)
        report = restructure_(
            model, sliced.slicer.layers, keep, x[:2], scores=sliced.result.scores, round_to=cfg.round_to,
        )  # fmt: skip
        with torch.no_grad(), report.masked(sliced.dense, sliced.slicer.layers):
            masked = sliced.dense(x)
        with torch.no_grad():
            pruned = model.eval()(x)
        equivalence = float((masked - pruned).abs().max())
        if equivalence > 1e-3 * max(1.0, float(masked.abs().max())):
            raise EdgesliceError(f"restructured model differs from the masked model by {equivalence:.3g} (a bug)")
        acc = evaluate(model, loaded.bundle.test, prepare=loaded.prepare, device=device,
                       description="restructured accuracy")  # fmt: skip
    return Restructured(report, equivalence, acc)


def finetune_stage(
    cfg: CompressConfig,
    model: nn.Module,
    dense: nn.Module,
    loaded: Loaded,
    rs: Restructured,
    device: torch.device,
    timer: Timer,
) -> Tuned:
    """Stages 4–5: fine-tune the restructured model (``dense`` teaches with ``cfg.distill``; with edgeslice's own
    baseline a copy of it is fine-tuned the same way as the dense control), then (``cfg.pruning``) prune it."""
    bundle, prepare = loaded.bundle, loaded.prepare
    with timer.span("finetune_s"):
        if cfg.finetune_epochs > 0:
            train_model(model, bundle.train, finetune_options(cfg, dense), prepare=prepare, device=device,
                        description="fine-tune")  # fmt: skip
        acc = evaluate(model, bundle.test, prepare=prepare, device=device, description="fine-tuned accuracy")
    control = None
    if cfg.dense_control and not cfg.checkpoint and cfg.finetune_epochs > 0:
        with timer.span("dense_control_s"):
            control = dense_control_accuracy(cfg, dense, bundle, prepare, device)
    if not cfg.pruning.enabled:
        return Tuned(acc, acc, dense_control=control)
    from ..pruning import prune_pipeline_

    with timer.span("prune_s"):
        report = prune_pipeline_(
            model, loaded.meta, bundle, cfg.pruning, device=device, dense_params=rs.report.params_before,
            baseline_accuracy=loaded.accuracy, batch_size=cfg.batch_size, seed=cfg.seed,
        )  # fmt: skip
    return Tuned(acc, report.accuracy, report, dense_control=control)


def effective_config(cfg: CompressConfig, result: SliceResult, precision: str) -> CompressConfig:
    """The configuration that reproduces these artifacts: the θ the device search chose, the precision shipped."""
    theta = float(result.params.get("theta", cfg.slicing.theta))
    quantize = "int8" if precision == "int8" else cfg.quantize
    return replace(cfg, slicing=replace(cfg.slicing, theta=theta), quantize=quantize)


def build_candidate(
    cfg: CompressConfig,
    out: Path,
    device: torch.device,
    timer: Timer,
    search: Search,
    loaded: Loaded,
    sliced: Sliced,
    model: nn.Module,
) -> CompressReport:
    """Build the compressed model of one candidate slice (one θ) and its artifacts, all or nothing into ``out``.

    Stages 3–8: restructure, fine-tune, export, measure, bundle, report; :func:`compress` calls it once per θ the
    device search tries.

    Raises:
        DoesNotFit: with a device profile, the measured artifacts miss a budget (nothing is written).
    """
    rs = restructure_stage(cfg, model, sliced, loaded, device, timer)
    tuned = finetune_stage(cfg, model, sliced.dense, loaded, rs, device, timer)
    effective = effective_config(cfg, sliced.result, search.precision)
    with staging_dir(out) as staging:
        with timer.span("export_s"):
            exported = export_stage(cfg, effective, staging, search, loaded, sliced, model, rs, tuned)
        with timer.span("bundle_s"):
            bundled = bundle_stage(cfg, staging, loaded, model, device)
        timer.finish()
        report = build_report(effective, device, timer, search, loaded, sliced, model, rs, tuned, exported, bundled)
        atomic_write_json(staging / "report.json", report_json(report))  # out is still None: not in the file
        write_manifest(staging, effective.to_dict(), cfg.seed)
    return report


def build_report(
    effective: CompressConfig,
    device: torch.device,
    timer: Timer,
    search: Search,
    loaded: Loaded,
    sliced: Sliced,
    model: nn.Module,
    rs: Restructured,
    tuned: Tuned,
    exported: Exported,
    bundled: dict[str, Any],
) -> CompressReport:
    """The report (``report.json``), assembled from the stage results."""
    result, prune = sliced.result, tuned.prune_report
    fields = {
        "model": loaded.timm_name,
        "data": loaded.bundle.describe(),
        "config": effective.to_dict(),
        "device": str(device),
        "precision": search.precision,
        "opset": search.opset,
        "baseline": {"source": loaded.baseline_source, "from_cache": loaded.from_cache},
        "warnings": list(loaded.warnings),
        "slicing": {
            **result.params,
            "critical_channels": result.kept_channels,
            "total_channels": result.total_channels,
            "calibration": sliced.index.calibration,
        },
        "params_before": rs.report.params_before,
        "params_after": rs.report.params_after,
        "nonzero_params_after": count_parameters(model, nonzero=True),
        "compression_rate": rs.report.removed_share if prune is None else prune.compression_rate,
        "restructure_compression_rate": rs.report.removed_share,
        "accuracy_finetuned": tuned.accuracy_finetuned,
        "pruning": None if prune is None else prune.to_dict(),
        "accuracy_before": loaded.accuracy,
        "dense_control": tuned.dense_control,
        "accuracy_restructured": rs.accuracy,
        "accuracy_after": tuned.accuracy,
        "restructure_equivalence_max_abs": rs.equivalence,
        "onnx_parity_max_abs": exported.parity,
        "onnx_before": exported.before,
        "onnx_after": exported.after,
        "int8": exported.int8,
        "budget": exported.budget,
        "index_bytes": exported.index_bytes,
        "layers": exported.layers,
        "groups": rs.report.to_dict()["groups"],
        "timings_s": {k: round(v, 2) for k, v in timer.seconds.items()},
        "bundle": bundled,
    }
    return CompressReport(**fields)


def finetune_options(cfg: CompressConfig, dense: nn.Module) -> TrainOptions:
    """The ``train_model`` options of the post-restructure fine-tune, the same for the dense control: epochs, batch
    size, learning rate, seed, augmentation, mixed precision, and distillation from ``dense``."""
    return TrainOptions(
        epochs=cfg.finetune_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.finetune_lr,
        seed=cfg.seed + 1,
        augment=cfg.augment,
        amp=cfg.amp,
        teacher=dense if cfg.distill else None,
        distill_temperature=cfg.distill_temperature,
        distill_alpha=cfg.distill_alpha,
    )


def dense_control_accuracy(
    cfg: CompressConfig,
    dense: nn.Module,
    bundle: DataBundle,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> dict[str, Any]:
    """Fine-tune a copy of the dense model exactly as the restructured one was, and measure it.

    An undertrained baseline gains from one more epoch whatever is removed; this control separates that gain from
    the effect of slicing. The global RNG is forked, so the artifacts are the same with or without the control.
    """
    control = copy.deepcopy(dense)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        train_model(control, bundle.train, finetune_options(cfg, dense), prepare=prepare, device=device,
                    description="dense control fine-tune")  # fmt: skip
    acc = evaluate(control, bundle.test, prepare=prepare, device=device, description="dense control accuracy")
    return {"accuracy": acc, "finetune_epochs": cfg.finetune_epochs, "distill": cfg.distill}
