"""The pipelines behind the commands: baseline training (cached), slicing, and ``compress``.

``compress`` = calibrate → semantic slice → restructure (torch-pruning) → fine-tune → export (ONNX + checkpoint +
index + report + manifest). Every artifact is written to a staging folder and moved into ``--out`` only when the
whole run succeeded.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ._io import atomic_write_json, pyplot, save_figure, staging_dir
from ._progress import progress
from .data import DataBundle, calibration_indices, load_data, normalize
from .errors import EdgesliceError, ModelError
from .index import CriticalIndex
from .manifest import write_manifest
from .models import (
    ModelMeta,
    count_parameters,
    create_model,
    fingerprint,
    load_checkpoint,
    resolve_model_name,
    save_checkpoint,
)
from .pruning import IterativePruneConfig
from .slicing import STRATEGIES, SemanticSlicer, SliceResult, channel_masks
from .slicing.deeplift import BASELINES
from .slicing.metrics import list_metrics
from .slicing.slicer import SOLVERS
from .slicing.solver import SIMILARITIES
from .train import evaluate, iterate_batches, train_model

CONFIG_VERSION = 1


QUANTIZE_MODES = ("none", "int8")


def edgeslice_home() -> Path:
    """``$EDGESLICE_HOME`` or ``~/.cache/edgeslice``: where trained baselines are cached."""
    return Path(os.environ.get("EDGESLICE_HOME") or Path.home() / ".cache" / "edgeslice")


@dataclass(frozen=True)
class SliceConfig:
    """How critical neurons are chosen (validated on construction)."""

    metric: str = "taylor"
    strategy: str = "semantic"
    theta: float = 0.95
    ratio: float = 0.5
    similarity: str = "cka"
    calib_per_class: int = 100
    baseline: str = "zero"
    solver: str = "exact"
    interval: int = 1
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"unknown DeepLIFT baseline {self.baseline!r}; valid: {', '.join(BASELINES)}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; valid: {', '.join(SOLVERS)}")
        if self.interval < 1:
            raise ValueError(f"interval must be >= 1, got {self.interval}")
        if self.metric not in list_metrics():
            raise ValueError(f"unknown metric {self.metric!r}; valid: {', '.join(list_metrics())}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity {self.similarity!r}; valid: {', '.join(SIMILARITIES)}")
        if not 0.0 < self.theta <= 1.0:
            raise ValueError(f"theta must be in (0, 1], got {self.theta}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.calib_per_class < 1:
            raise ValueError(f"calib-per-class must be >= 1, got {self.calib_per_class}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown slice settings: {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class CompressConfig:
    """Everything ``edgeslice compress`` does, as one validated value."""

    model: str = "mobilenetv3"
    data: str = "fashion-mnist"
    checkpoint: str | None = None
    slicing: SliceConfig = field(default_factory=SliceConfig)
    train_epochs: float = 3.0
    finetune_epochs: float = 1.0
    batch_size: int = 256
    lr: float = 2e-2
    finetune_lr: float = 5e-3
    image_size: int | None = None
    seed: int = 0
    download: bool = False
    pruning: IterativePruneConfig = field(default_factory=lambda: IterativePruneConfig(pruner="none"))
    #: Keep a multiple of this many channels per coupled group: onnxruntime's blocked (NCHWc) convolutions need it.
    #: Measured on MobileNetV3-small θ=0.95: batch-32 latency 9.03 ms unrounded, 2.21 ms with 8 (dense: 3.61 ms).
    round_to: int = 8
    #: Device profile name (``devices/*.toml``): search θ for the most accurate model that meets its budgets.
    device: str | None = None
    #: ``none`` or ``int8`` (onnxruntime static QDQ quantization of the exported model).
    quantize: str = "none"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.train_epochs <= 0 or self.finetune_epochs < 0:
            raise ValueError("train-epochs must be > 0 and finetune-epochs >= 0")
        if self.round_to < 1:
            raise ValueError("round-to must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch-size must be >= 1")
        if self.lr <= 0 or self.finetune_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"unknown quantize mode {self.quantize!r}; valid: {', '.join(QUANTIZE_MODES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompressConfig:
        """Build from :meth:`to_dict` output or a recipe; nested ``slicing``/``pruning`` may be dicts.

        Raises:
            ValueError: unknown keys or invalid values (the message names them).
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown compress settings: {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("slicing"), dict):
            d["slicing"] = SliceConfig.from_dict(d["slicing"])
        if isinstance(d.get("pruning"), dict):
            d["pruning"] = IterativePruneConfig.from_dict(d["pruning"])
        return cls(**d)


def make_prepare(meta_or_bundle: ModelMeta | DataBundle) -> Callable[[torch.Tensor], torch.Tensor]:
    """The normalisation a model expects, as a batch function."""
    mean, std = tuple(meta_or_bundle.mean), tuple(meta_or_bundle.std)
    return lambda x: normalize(x, mean, std)


def _data_key(bundle: DataBundle) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(bundle.name).name or "data")
    digest = hashlib.sha256(f"{bundle.name}|{bundle.source}|{len(bundle.train)}".encode()).hexdigest()[:8]
    return f"{name}-{bundle.image_size}px-{digest}"


def meta_for(timm_name: str, bundle: DataBundle, **info: Any) -> ModelMeta:
    return ModelMeta(
        timm_name=timm_name,
        classes=list(bundle.classes),
        in_chans=bundle.in_chans,
        input_size=bundle.image_size,
        mean=list(bundle.mean),
        std=list(bundle.std),
        info=info,
    )


def train_baseline(
    model_name: str,
    bundle: DataBundle,
    *,
    epochs: float,
    seed: int,
    device: torch.device,
    batch_size: int = 128,
    lr: float = 3e-3,
) -> tuple[nn.Module, ModelMeta]:
    """Train a model from scratch on ``bundle`` and measure its test accuracy."""
    timm_name = resolve_model_name(model_name)
    torch.manual_seed(seed)
    model = create_model(
        timm_name, num_classes=len(bundle.classes), in_chans=bundle.in_chans, input_size=bundle.image_size
    ).to(device)
    prepare = make_prepare(bundle)
    t0 = time.perf_counter()
    stats = train_model(
        model,
        bundle.train,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        prepare=prepare,
        device=device,
        description=f"train {timm_name}",
    )
    acc = evaluate(model, bundle.test, prepare=prepare, device=device, description="test accuracy")
    meta = meta_for(
        timm_name,
        bundle,
        data=bundle.describe(),
        seed=seed,
        epochs=epochs,
        test_accuracy=acc,
        train_seconds=round(time.perf_counter() - t0, 2),
        final_loss=stats["final_loss"],
    )
    return model, meta


def cached_baseline(
    model_name: str,
    bundle: DataBundle,
    *,
    epochs: float,
    seed: int,
    device: torch.device,
    batch_size: int = 128,
    lr: float = 3e-3,
) -> tuple[nn.Module, ModelMeta, Path, bool]:
    """The baseline for (model, data, seed, epochs, batch size, lr): loaded from the cache, or trained and cached.

    Returns:
        (model on ``device``, meta, checkpoint path, whether it came from the cache).
    """
    timm_name = resolve_model_name(model_name)
    path = (
        edgeslice_home()
        / "baselines"
        / f"{timm_name}-{_data_key(bundle)}-seed{seed}-ep{epochs:g}-bs{batch_size}-lr{lr:g}"
        / "model.safetensors"
    )
    if path.is_file():
        try:
            model, meta = load_checkpoint(path, expect_model=timm_name)
            return model.to(device), meta, path, True
        except ModelError:
            pass  # a corrupt cache entry is retrained and overwritten
    model, meta = train_baseline(
        model_name, bundle, epochs=epochs, seed=seed, device=device, batch_size=batch_size, lr=lr
    )
    save_checkpoint(model, meta, path)
    return model, meta, path, False


def check_against_data(meta: ModelMeta, bundle: DataBundle) -> None:
    """Refuse a checkpoint whose classes or input format do not fit the data."""
    if len(meta.classes) != len(bundle.classes) or meta.in_chans != bundle.in_chans:
        raise ModelError(
            f"checkpoint is for {len(meta.classes)} classes x {meta.in_chans} channels, the data has "
            f"{len(bundle.classes)} x {bundle.in_chans}"
        )


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


def _latency_and_size(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None = None) -> dict[str, Any]:
    from .export import DEFAULT_OPSET, export_onnx, file_sizes, onnx_latency

    export_onnx(model, example, path, opset=opset or DEFAULT_OPSET)
    return {
        **file_sizes(path),
        "latency": onnx_latency(path, (1, *example.shape[1:])),
        "latency_batch32": onnx_latency(path, (32, *example.shape[1:]), runs=20),
    }


def _numpy_inputs(dataset: Any, prepare: Callable[[torch.Tensor], torch.Tensor], limit: int | None = None):
    """Normalised (inputs, labels) of the first ``limit`` samples, as float32 numpy arrays."""
    import numpy as np

    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    xs, ys = [], []
    for x, y in iterate_batches(dataset, 512):
        xs.append(prepare(x.float()).numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _int8_artifact(
    fp32_path: Path, int8_path: Path, calib: Subset, test: Any, prepare: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Any]:
    """Quantize ``fp32_path`` to ``int8_path`` on the calibration set, then measure it against fp32 on the test subset.

    Raises:
        ExportError: quantization failed or the int8 model disagrees with fp32 beyond the stated tolerance.
    """
    from .export import file_sizes, onnx_latency
    from .quantize import EVAL_SUBSET, MAX_CALIBRATION_SAMPLES, check_int8_parity, quantize_int8

    # The calibration set is grouped by class: a seeded shuffle keeps every class in the capped sample.
    order = torch.randperm(len(calib), generator=torch.Generator().manual_seed(0))[:MAX_CALIBRATION_SAMPLES]
    calib_x, _ = _numpy_inputs(Subset(calib, order.tolist()), prepare)
    quantize_int8(fp32_path, int8_path, [calib_x[i : i + 64] for i in range(0, len(calib_x), 64)])
    test_x, test_y = _numpy_inputs(test, prepare, EVAL_SUBSET)
    parity = check_int8_parity(fp32_path, int8_path, test_x, labels=test_y)
    shape = test_x.shape[1:]
    return {
        **file_sizes(int8_path),
        "latency": onnx_latency(int8_path, (1, *shape)),
        "latency_batch32": onnx_latency(int8_path, (32, *shape), runs=20),
        "parity": parity,
        "calibration_samples": int(len(calib_x)),
        "eval_subset": f"first {parity['samples']} test samples",
    }


class _DoesNotFit(Exception):
    """The measured artifacts of one θ miss a device budget (the search steps down)."""

    def __init__(self, theta: float, checks: list[Any]) -> None:
        super().__init__(theta)
        self.theta, self.checks = theta, checks


def _device_search(
    cfg: CompressConfig,
    profile: Any,
    slicer: SemanticSlicer,
    original: nn.Module,
    example: torch.Tensor,
    input_shape: tuple[int, ...],
    opset: int,
) -> tuple[Any, list[Any]]:
    """Largest θ of the grid whose restructured (not yet fine-tuned) model meets every budget of ``profile``."""
    import tempfile

    from .budget import DEFAULT_THETAS, BudgetError, StructureProbe, explain_failure, search_theta

    precisions = ["int8"] if cfg.quantize == "int8" else ["fp32", "int8"]
    with tempfile.TemporaryDirectory(prefix="edgeslice-probe.") as tmp:
        probe = StructureProbe(
            slicer,
            original,
            example,
            input_shape,
            Path(tmp),
            round_to=cfg.round_to,
            opset=opset,
            solver=cfg.slicing.solver,
            interval=cfg.slicing.interval,
        )
        with progress(f"budget search ({profile.name})", None):
            best, tried = search_theta(profile, probe, thetas=DEFAULT_THETAS, precisions=precisions)
    if best is None:
        raise BudgetError(explain_failure(profile, tried))
    return best, tried


def compress(cfg: CompressConfig, out: Path, device: torch.device) -> dict[str, Any]:
    """Run the whole compression pipeline and write the artifacts to ``out``; returns the report.

    With ``cfg.device`` the θ of ``cfg.slicing`` is replaced by the largest θ of
    :data:`edgeslice.budget.DEFAULT_THETAS` whose model meets every budget of that device profile, in fp32 or int8,
    whichever admits the larger θ (fp32 on a tie; int8 only with ``cfg.quantize == "int8"``); the measured artifacts
    are checked again and the search steps down a θ if they miss a budget.

    Raises:
        BudgetError: no candidate meets the device's budgets (nothing is written).
    """
    from .export import DEFAULT_OPSET

    profile = None
    opset = DEFAULT_OPSET
    if cfg.device:
        from .devices import get_device

        profile = get_device(cfg.device)
        if cfg.slicing.strategy != "semantic":
            raise ValueError(f"--device searches θ: it needs --strategy semantic, not {cfg.slicing.strategy!r}")
        if cfg.quantize == "int8" and not profile.supports("int8"):
            raise ValueError(
                f"device {profile.name!r} does not support int8 (it supports {', '.join(profile.precisions)})"
            )
        opset = min(DEFAULT_OPSET, profile.opset)

    timings: dict[str, float] = {}
    t_all = t = time.perf_counter()
    timm_name = resolve_model_name(cfg.model)
    bundle = load_data(cfg.data, image_size=cfg.image_size, seed=cfg.seed, download=cfg.download)
    if cfg.checkpoint:
        model, meta = load_checkpoint(cfg.checkpoint, expect_model=timm_name)
        check_against_data(meta, bundle)
        model.to(device)
        baseline_source, cached = str(cfg.checkpoint), True
    else:
        from .restructure import check_restructurable  # refuse in one line before minutes of training

        check_restructurable(
            create_model(timm_name, num_classes=len(bundle.classes), in_chans=bundle.in_chans).eval(),
            torch.randn(2, bundle.in_chans, bundle.image_size, bundle.image_size),
        )
        model, meta, path, cached = cached_baseline(
            cfg.model,
            bundle,
            epochs=cfg.train_epochs,
            seed=cfg.seed,
            device=device,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
        )
        # Relative to the cache, so artifacts do not depend on where $EDGESLICE_HOME is (byte-identical manifests).
        try:
            baseline_source = f"$EDGESLICE_HOME/{Path(path).resolve().relative_to(edgeslice_home().resolve())}"
        except ValueError:
            baseline_source = str(path)
    timings["baseline_s"] = time.perf_counter() - t
    prepare = make_prepare(meta)
    t = time.perf_counter()
    acc_before = evaluate(model, bundle.test, prepare=prepare, device=device, description="baseline accuracy")
    timings["evaluate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    slicer, result, index = slice_model(model, meta, bundle, cfg.slicing, seed=cfg.seed, device=device)
    timings["slice_s"] = time.perf_counter() - t

    # Keep an unpruned copy for the masked-equivalence check, the "before" ONNX and every budget candidate.
    import copy

    original = copy.deepcopy(model).eval()
    calib_x, _ = next(iterate_batches(bundle.test, 64))
    calib_x = prepare(calib_x.to(device))
    input_shape = (meta.in_chans, meta.input_size, meta.input_size)

    search_info: dict[str, Any] | None = None
    attempts = [cfg.slicing.theta]
    precision = "int8" if cfg.quantize == "int8" else "fp32"
    failures: list[_DoesNotFit] = []
    if profile is not None:
        from .budget import DEFAULT_THETAS

        t = time.perf_counter()
        best, tried = _device_search(cfg, profile, slicer, original, calib_x, input_shape, opset)
        precision = best.precision
        attempts = sorted((th for th in DEFAULT_THETAS if th <= best.theta), reverse=True)
        timings["budget_search_s"] = time.perf_counter() - t
        search_info = {
            "thetas": list(DEFAULT_THETAS),
            "chosen_by_structure": best.theta,
            "stepped_down": failures,  # filled below, serialised in _finish
            "candidates": [
                {"theta": c.theta, "precision": c.precision, "ok": c.ok, "model_bytes": c.measured["model_bytes"],
                 "macs": c.measured["macs"], "params": c.measured["params"],
                 "failing": [b.name for b in c.failing()]}
                for c in tried
            ],
        }  # fmt: skip

    for theta in attempts:
        if profile is not None:
            result = slicer.slice(
                theta=theta, strategy="semantic", solver=cfg.slicing.solver, interval=cfg.slicing.interval
            )
            index = _rebind_index(index, result)
            original.to(device)  # a previous attempt's export moved it to the CPU
            model = copy.deepcopy(original)
        try:
            return _finish(
                cfg, out, device, timings, t_all, model=model, original=original, meta=meta, bundle=bundle,
                slicer=slicer, result=result, index=index, calib_x=calib_x, prepare=prepare, acc_before=acc_before,
                baseline_source=baseline_source, cached=cached, timm_name=timm_name, profile=profile,
                precision=precision, opset=opset, search_info=search_info,
            )  # fmt: skip
        except _DoesNotFit as e:
            failures.append(e)
    from .budget import BudgetError

    last = failures[-1]
    raise BudgetError(
        f"no model fits device {profile.name!r}: the measured artifacts at θ={last.theta:g} ({precision}) miss "
        + "; ".join(c.describe() for c in last.checks if not c.ok)
    )


def _rebind_index(index: CriticalIndex, result: SliceResult) -> CriticalIndex:
    """The index of ``result`` (another θ of the same calibration)."""
    from dataclasses import replace

    return replace(index, critical=result.critical, per_class=result.per_class, params=result.params)


def _finish(
    cfg: CompressConfig,
    out: Path,
    device: torch.device,
    timings: dict[str, float],
    t_all: float,
    *,
    model: nn.Module,
    original: nn.Module,
    meta: ModelMeta,
    bundle: DataBundle,
    slicer: SemanticSlicer,
    result: SliceResult,
    index: CriticalIndex,
    calib_x: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    acc_before: float,
    baseline_source: str,
    cached: bool,
    timm_name: str,
    profile: Any,
    precision: str,
    opset: int,
    search_info: dict[str, Any] | None,
) -> dict[str, Any]:
    """Restructure, fine-tune, (prune,) export and write the artifacts of one slice result.

    Raises:
        _DoesNotFit: with a device profile, the measured artifacts miss a budget (nothing is written).
    """
    from dataclasses import replace

    from .export import check_parity
    from .restructure import restructure_

    t = time.perf_counter()
    report_rs = restructure_(
        model, slicer.layers, result.critical, calib_x[:2], scores=result.scores, round_to=cfg.round_to
    )
    with torch.no_grad(), channel_masks(original, slicer.layers, report_rs.effective_keep):
        masked = original(calib_x)
    with torch.no_grad():
        pruned = model.eval()(calib_x)
    equivalence = float((masked - pruned).abs().max())
    if equivalence > 1e-3 * max(1.0, float(masked.abs().max())):
        raise EdgesliceError(f"restructured model differs from the masked model by {equivalence:.3g} (a bug)")
    acc_restructured = evaluate(model, bundle.test, prepare=prepare, device=device, description="restructured accuracy")
    timings["restructure_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if cfg.finetune_epochs > 0:
        train_model(
            model,
            bundle.train,
            epochs=cfg.finetune_epochs,
            batch_size=cfg.batch_size,
            lr=cfg.finetune_lr,
            seed=cfg.seed + 1,
            prepare=prepare,
            device=device,
            description="fine-tune",
        )
    acc_after = evaluate(model, bundle.test, prepare=prepare, device=device, description="fine-tuned accuracy")
    timings["finetune_s"] = time.perf_counter() - t

    acc_finetuned = acc_after
    prune_report = None
    if cfg.pruning.enabled:
        from .pruning import prune_pipeline_

        t = time.perf_counter()
        prune_report = prune_pipeline_(
            model,
            meta,
            bundle,
            cfg.pruning,
            device=device,
            dense_params=report_rs.params_before,
            baseline_accuracy=acc_before,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
        )
        acc_after = prune_report.accuracy
        timings["prune_s"] = time.perf_counter() - t

    # The configuration that reproduces these artifacts: the θ the device search chose, the precision shipped.
    effective = replace(
        cfg,
        slicing=replace(cfg.slicing, theta=float(result.params.get("theta", cfg.slicing.theta))),
        quantize="int8" if precision == "int8" else cfg.quantize,
    )
    t = time.perf_counter()
    rows = layer_table(result, report_rs.effective_keep)
    with staging_dir(out) as stage:
        index_path = index.save(stage / "critical_index")
        meta_out = meta_for(
            timm_name,
            bundle,
            source_fingerprint=index.model_fingerprint,
            baseline=baseline_source,
            slicing=result.params,
            test_accuracy=acc_after,
            baseline_accuracy=acc_before,
            dense_params=report_rs.params_before,
            pruning=None
            if prune_report is None
            else {"pruner": cfg.pruning.pruner, "cr": prune_report.compression_rate},
        )
        meta_out.restructured = True
        model.cpu()
        save_checkpoint(model, meta_out, stage / "model.safetensors")
        x_cpu = calib_x.cpu()
        after = _latency_and_size(model, x_cpu, stage / "model.onnx", opset)
        parity = check_parity(model, stage / "model.onnx", x_cpu)
        int8 = None
        if effective.quantize == "int8":
            int8 = _int8_artifact(
                stage / "model.onnx",
                stage / "model.int8.onnx",
                calibration_set(bundle, cfg.slicing.calib_per_class, cfg.seed),
                bundle.test,
                prepare,
            )
        budget = None
        if profile is not None:
            from .budget import measure_model, measure_onnx

            measured = {
                **measure_model(model, (meta.in_chans, meta.input_size, meta.input_size), precision),
                **measure_onnx(stage / ("model.int8.onnx" if precision == "int8" else "model.onnx")),
            }
            checks = profile.check(measured)
            if not all(c.ok for c in checks):
                raise _DoesNotFit(effective.slicing.theta, checks)
            budget = {
                "device": cfg.device,
                "profile": profile.to_dict(),
                "precision": precision,
                "theta": effective.slicing.theta,
                "measured": measured,
                "estimated_latency_ms": profile.estimated_latency_ms(measured["macs"], precision),
                "checks": [c.to_dict() for c in checks],
                "ok": True,
                "pruning_note": None
                if prune_report is None
                else "unstructured zeros do not change the dense ONNX size, RAM or MACs: every pruning iteration "
                "fits exactly when its restructured start does, so the pruner's last kept iteration is shipped",
            }
            if search_info is not None:
                budget["search"] = {
                    **search_info,
                    "stepped_down": [
                        {"theta": f.theta, "failing": [c.to_dict() for c in f.checks if not c.ok]}
                        for f in search_info["stepped_down"]
                    ],
                }
        before = _latency_and_size(original.cpu(), x_cpu, stage / "baseline.onnx", opset)
        (stage / "baseline.onnx").unlink()
        if prune_report is not None:
            from .pruning import curve_points, plot_prune_curves

            plot_prune_curves(
                {f"NeuSemSlice + {cfg.pruning.pruner}": curve_points(prune_report)},
                stage / "accuracy_vs_cr.png",
                f"{timm_name} on {bundle.name}: iterative {cfg.pruning.pruner} after semantic restructure",
                baseline_accuracy=acc_before,
                max_acc_drop=cfg.pruning.max_acc_drop,
            )
        plot_layer_ratios(
            rows,
            stage / "critical_ratio.png",
            f"{timm_name} on {bundle.name}: critical channels per layer ({_describe_slice(result)})",
        )
        timings["export_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_all
        report = {
            "model": timm_name,
            "data": bundle.describe(),
            "config": effective.to_dict(),
            "device": str(device),
            "precision": precision,
            "opset": opset,
            "baseline": {"source": baseline_source, "from_cache": cached},
            "slicing": {
                **result.params,
                "critical_channels": result.kept_channels,
                "total_channels": result.total_channels,
                "calibration": index.calibration,
            },
            "params_before": report_rs.params_before,
            "params_after": report_rs.params_after,
            "nonzero_params_after": count_parameters(model, nonzero=True),
            "compression_rate": report_rs.removed_share if prune_report is None else prune_report.compression_rate,
            "restructure_compression_rate": report_rs.removed_share,
            "accuracy_finetuned": acc_finetuned,
            "pruning": None if prune_report is None else prune_report.to_dict(),
            "accuracy_before": acc_before,
            "accuracy_restructured": acc_restructured,
            "accuracy_after": acc_after,
            "restructure_equivalence_max_abs": equivalence,
            "onnx_parity_max_abs": parity,
            "onnx_before": before,
            "onnx_after": after,
            "int8": int8,
            "budget": budget,
            "index_bytes": index_path.stat().st_size,
            "layers": rows,
            "groups": report_rs.to_dict()["groups"],
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        }
        atomic_write_json(stage / "report.json", report)
        write_manifest(stage, effective.to_dict(), cfg.seed)
    return report


def _describe_slice(result: SliceResult) -> str:
    p = result.params
    sel = f"θ={p['theta']:g}" if "theta" in p else f"ratio={p['ratio']:g}"
    return f"{p['strategy']}, {p['metric']}, {sel}"
