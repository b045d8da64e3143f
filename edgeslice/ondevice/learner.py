"""Incremental development on the device (paper §4.3, Eq. 8–9): learn new classes from local data only.

The device holds the deployed checkpoint and its critical-neuron index (a few KB), never task A's data. To learn
new classes it grows the classifier, freezes the critical channels of the index and the old classifier rows
exactly (:mod:`.freeze`), trains the rest on the new data with cross-entropy (Eq. 8), and slices the new classes
on its own data so that the next increment also protects them. Optionally a small replay buffer of old data joins
the new data ("NeuSemSlice + Replay").

Run-time imports: torch, timm, safetensors, numpy and the torch-only parts of edgeslice (checkpoint I/O, the index,
the slicer with forward/gradient metrics). No torch-pruning, captum, onnx or onnxruntime: ONNX export happens on the
host (``edgeslice increment``).

Example:
    >>> model, meta = load_checkpoint("deployed/model.safetensors")
    >>> index = CriticalIndex.load("deployed/critical_index")
    >>> new = relabel(bundle.train, {5: 5, 6: 6})  # Fashion-MNIST Sandal, Shirt → outputs 5, 6 of a 5-class model
    >>> result = learn_increment(model, meta, index, new, ["Sandal", "Shirt"], IncrementConfig(epochs=3))
    >>> save_checkpoint(result.model, result.meta, "out/model.safetensors")
    >>> result.index.save("out/critical_index")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ..data import ArrayDataset, calibration_indices, normalize, targets_of, uint8_images
from ..errors import EdgesliceError
from ..heads import resize_classifier_
from ..index import CriticalIndex
from ..models import ModelMeta, fingerprint
from ..routed import RoutedHead, routed_spec, unwrap_routed_
from ..slicing.metrics import get_metric
from ..slicing.observe import Layer, find_layers
from ..torchutil import eval_mode
from ..train import iterate_batches
from .freeze import ChannelGroup, TrainPlan, channel_groups, make_plan
from .guarantees import old_logit_check, pre_logits
from .isolate import IsolationError, frozen_classifier_inputs, isolate_
from .loop import LoopConfig, peak_rss_bytes, train_partial

INCREMENT_VERSION = 1
HEADS = ("routed", "trained", "lda")


@dataclass(frozen=True)
class IncrementConfig:
    """How the device learns an increment.

    Attributes:
        epochs: passes over the new data (plus the replay buffer).
        batch_size: samples per step.
        lr: peak learning rate (cosine decay).
        weight_decay: AdamW weight decay (frozen rows are restored, so it cannot move them).
        optimizer: ``adamw`` or ``sgd``.
        calib_per_class: images per new class used to slice the new classes.
        slice_new: slice the new classes and add them to the index (else the index keeps its sets).
        frozen_bn: ``eval``: frozen channels keep inference-mode BatchNorm while training (see :mod:`.freeze`).
        isolate: close the frozen channels and old class rows into a sub-network first (:mod:`.isolate`), so the
            old classes' logits cannot change at all; costs the frozen channels their non-critical inputs once.
        seed: shuffling, classifier initialisation and calibration sampling.
        head: ``routed`` (class-incremental: train isolated as ``trained`` does, then a router from the index's
            class statistics over the frozen features picks the task and each task's trained rows pick the class,
            :class:`~.classil.RoutedHead`), ``trained`` (train the new rows and the non-critical channels:
            task-incremental; old-class logits kept as :mod:`.guarantees` defines) or ``lda`` (class-incremental,
            nothing trains: the new classes' feature statistics join the index's (:mod:`.classil`) and the whole
            classifier becomes their linear discriminant). ``routed`` and ``lda`` need an index with class
            statistics; ``routed`` needs them over isolated features.
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    calib_per_class: int = 50
    slice_new: bool = True
    frozen_bn: str = "eval"
    isolate: bool = False
    seed: int = 0
    head: str = "trained"
    version: int = INCREMENT_VERSION

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.calib_per_class < 1:
            raise ValueError("batch_size and calib_per_class must be >= 1")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        self.loop()  # validates epochs, lr, weight decay and optimizer

    def loop(self) -> LoopConfig:
        return LoopConfig.of(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IncrementConfig:
        return cls(**d)


@dataclass
class IncrementResult:
    """The grown model, its meta and index, and what the increment cost."""

    model: nn.Module
    meta: ModelMeta
    index: CriticalIndex
    report: dict[str, Any] = field(default_factory=dict)


def grow_classifier_(model: nn.Module, extra: int, *, seed: int = 0) -> int:
    """Add ``extra`` outputs to the classifier in place, keeping the old rows; returns the old class count.

    Replaces the classifier (:func:`edgeslice.models.resize_classifier_`: new rows get ``nn.Linear``'s initialisation,
    seeded; works on restructured models) and copies the old rows back.
    """
    if extra < 1:
        raise ValueError(f"extra classes must be >= 1, got {extra}")
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise EdgesliceError(f"cannot grow a {type(head).__name__} classifier (a Linear is needed)")
    old = head.out_features
    weight, bias = head.weight.detach().clone(), None if head.bias is None else head.bias.detach().clone()
    new = resize_classifier_(model, old + extra, seed=seed)  # not timm's reset_classifier: see its docstring
    with torch.no_grad():
        new.weight[:old].copy_(weight)
        if bias is not None and new.bias is not None:
            new.bias[:old].copy_(bias)
    return old


def sample_fraction(dataset: Dataset, fraction: float, seed: int) -> ArrayDataset:
    """A seeded, per-class ``fraction`` of ``dataset`` (at least one item per class), as a uint8 copy."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"replay fraction must be in (0, 1], got {fraction}")
    targets = targets_of(dataset)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(targets).tolist():
        idx = (targets == c).nonzero().flatten()
        k = max(1, round(fraction * len(idx)))
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:k]].sort().values)
    keep = torch.cat(chosen)
    return ArrayDataset(uint8_images(dataset, keep), targets[keep].clone())


def stored_bytes(dataset: ArrayDataset) -> int:
    """Bytes a device needs to keep ``dataset``: uint8 pixels plus one byte per label."""
    return int(dataset.images.numel() + len(dataset))


def model_layers(model: nn.Module, example: torch.Tensor) -> list[dict[str, Any]]:
    """The sliceable layers of ``model`` as index layer dicts."""
    return [{"name": la.name, "observe": la.observe, "channels": la.channels} for la in find_layers(model, example)]


def increment_plan(
    model: nn.Module,
    groups: list[ChannelGroup],
    frozen: dict[str, torch.Tensor],
    old_classes: int,
    *,
    info: dict[str, Any] | None = None,
) -> TrainPlan:
    """Train everything but the ``frozen`` channels and the first ``old_classes`` classifier rows (Eq. 9).

    Orphan parameters (in no channel group, not the classifier; none in MobileNetV3 or the MLP) stay frozen.
    """
    rows = model.get_classifier().out_features
    classifier = torch.arange(rows) >= old_classes
    trainable = {g.layer: ~frozen[g.layer].to(torch.bool) for g in groups}
    return make_plan(model, groups, trainable, classifier=classifier, info=info)


def slice_new_classes(
    model: nn.Module,
    meta: ModelMeta,
    index: CriticalIndex,
    data: Dataset,
    new_labels: Sequence[int],
    *,
    calib_per_class: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor], dict[str, Any]]:
    """Slice the new classes on the device's own data with the index's strategy, metric and θ.

    DeepLIFT needs captum, which the device does not have: an index sliced with it is extended with Taylor
    (recorded in the returned params).

    Returns:
        (per-layer (len(new_labels), N) per-class sets, or None for strategies without them; per-layer union;
        the slicing params used).
    """
    from ..slicing.slicer import SemanticSlicer

    params = dict(index.params)
    strategy = params.get("strategy", "semantic")
    metric = params.get("metric", "taylor")
    if get_metric(metric).attribution == "deeplift":
        metric = "taylor"
    used = {"strategy": strategy, "metric": metric, "similarity": params.get("similarity", "cka")}
    layers = [Layer(name=e["name"], observe=e["observe"], channels=int(e["channels"])) for e in index.layers]
    if strategy in ("random", "magnitude"):  # data-free sets: the new classes add nothing
        return None, {la.name: torch.zeros(la.channels, dtype=torch.bool) for la in layers}, used
    calib = torch.as_tensor(calibration_indices(data, calib_per_class, seed), dtype=torch.int64)
    images, labels = uint8_images(data, calib), targets_of(data)[calib]
    calib_set = ArrayDataset(images, labels)
    prepare = _prepare(meta)
    example = prepare(images[:2].float().div(255).to(device))
    slicer = SemanticSlicer(model, example, metric=metric, similarity=used["similarity"], layers=layers)
    num_classes = model.get_classifier().out_features
    slicer.calibrate(iterate_batches(calib_set, 100), num_classes=num_classes, prepare=prepare, device=device)
    if strategy == "semantic":
        used["theta"] = float(params.get("theta", 0.95))
        result = slicer.slice(theta=used["theta"], strategy="semantic")
    else:
        used["ratio"] = float(params.get("ratio", 0.5))
        result = slicer.slice(ratio=used["ratio"], strategy=strategy)
    used["calibration"] = {"per_class": calib_per_class, "seed": seed, "samples": len(calib_set)}
    rows = list(new_labels)
    if result.per_class is None:
        return None, {k: v.clone() for k, v in result.critical.items()}, used
    per_class = {name: sets[rows] for name, sets in result.per_class.items()}
    return per_class, {name: sets.any(0) for name, sets in per_class.items()}, used


def _prepare(meta: ModelMeta):
    mean, std = tuple(meta.mean), tuple(meta.std)
    return lambda x: normalize(x, mean, std)


def learn_increment(
    model: nn.Module,
    meta: ModelMeta,
    index: CriticalIndex,
    new_data: Dataset,
    new_classes: Sequence[str],
    cfg: IncrementConfig,
    *,
    device: torch.device | str = "cpu",
    replay: Dataset | None = None,
    frozen: dict[str, torch.Tensor] | None = None,
    freeze_old_rows: bool = True,
) -> IncrementResult:
    """Learn ``new_classes`` from ``new_data`` without touching the critical channels or the old class rows.

    Args:
        model: the deployed model (changed in place: classifier grown, non-critical rows trained).
        meta: its checkpoint meta.
        index: its critical-neuron index (checked against the model, fingerprint included).
        new_data: the device's data of the new classes, labels already ``len(meta.classes) + j`` for class j.
        new_classes: names of the new classes, in label order.
        cfg: training settings.
        device: where to train.
        replay: optional old-class items (old labels) trained together with the new data.
        frozen: channels to freeze instead of the index's critical sets (baselines: global, random, DeepArc...).
        freeze_old_rows: keep the old classes' classifier rows (False only for the retraining/replay baselines).

    Returns:
        The grown model, its meta (classes extended), the updated index (bound to the new weights; new classes'
        sets sliced on ``new_data``) and a report (time and memory per step, bytes kept, drift).

    Raises:
        IndexFileError: the index was made for another model.
        EdgesliceError: labels outside the new classes, or a class that the model already has.
    """
    old = len(meta.classes)
    if len(new_data) == 0:
        raise EdgesliceError("no new-class items to learn from")
    prepare = _prepare(meta)
    model.to(device)
    x0, _ = next(iterate_batches(new_data, 2))
    example = prepare(x0.to(device))
    index.check_model(meta.timm_name, model_layers(model, example), fingerprint(model))
    clash = sorted(set(new_classes) & set(meta.classes))
    if clash:
        raise EdgesliceError(f"the model already has class(es) {', '.join(clash)}")
    labels = targets_of(new_data)
    if int(labels.min()) < old or int(labels.max()) >= old + len(new_classes):
        raise EdgesliceError(f"new-data labels must be in {old}..{old + len(new_classes) - 1}")
    prior_tasks = None
    if isinstance(model.get_classifier(), RoutedHead) and cfg.head != "routed":
        raise EdgesliceError("this model has a routed class-incremental head: grow it with head 'routed'")
    if cfg.head == "routed":
        if replay is not None or frozen is not None or not freeze_old_rows:
            raise EdgesliceError(
                "the routed head trains isolated on new data only: replay and frozen sets need 'trained'"
            )
        routed_stats = _index_stats(index, meta, isolated=True)
        prior_tasks = unwrap_routed_(model) or [list(range(old))]
    groups = channel_groups(model, index.layers, example)
    if cfg.head == "lda":
        if replay is not None or frozen is not None or cfg.isolate or not freeze_old_rows:
            raise EdgesliceError(
                "the class-incremental head trains nothing: replay, frozen sets and isolation need head='trained'"
            )
        return _learn_lda(model, meta, index, new_data, list(new_classes), cfg, groups, example, device)
    t0 = time.perf_counter()
    frozen_sets = frozen if frozen is not None else index.critical
    isolation = None
    if cfg.isolate or cfg.head == "routed":
        isolation = isolate_(model, groups, frozen_sets, old if freeze_old_rows else 0, example, seed=cfg.seed)
        frozen_sets = isolation.frozen
        if cfg.head == "routed":
            _check_router_features(model, routed_stats, isolation)  # before training: fail fast
        with eval_mode(model), torch.no_grad():
            ref_features = pre_logits(model, example)
            ref_logits = model.get_classifier()(ref_features)[:, :old]
    grow_classifier_(model, len(new_classes), seed=cfg.seed)
    plan = increment_plan(
        model,
        groups,
        frozen_sets,
        old if freeze_old_rows else 0,
        info={"frozen": "custom" if frozen is not None else "index critical channels", "old_classes": old},
    )
    train_set = new_data if replay is None else ConcatDataset([new_data, replay])
    n_train = len(train_set)

    def batches(epoch: int):
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        for x, y in iterate_batches(train_set, cfg.batch_size, shuffle=True, generator=gen):
            if len(y) > 1 or n_train == 1:  # BatchNorm cannot train on one item (a last batch of 1 is skipped)
                yield x, y

    def loss_fn(net: nn.Module, batch):
        x, y = batch
        x, y = x.to(device), y.to(device)
        return F.cross_entropy(net(prepare(x)), y)

    steps_per_epoch = -(-n_train // cfg.batch_size) - (n_train % cfg.batch_size == 1 and n_train > 1)
    stats = train_partial(model, plan, batches, loss_fn, cfg.loop(), steps_per_epoch=steps_per_epoch)
    t_train = time.perf_counter() - t0

    new_labels = list(range(old, old + len(new_classes)))
    t1 = time.perf_counter()
    if cfg.slice_new:
        per_class_new, critical_new, used = slice_new_classes(
            model, meta, index, new_data, new_labels, calib_per_class=cfg.calib_per_class, seed=cfg.seed, device=device
        )
    else:
        per_class_new, critical_new, used = None, {k: torch.zeros_like(v) for k, v in index.critical.items()}, {}
    t_slice = time.perf_counter() - t1

    model.eval()
    after_training = None
    if isolation is not None and freeze_old_rows:
        after_training = old_logit_check(
            ref_features, ref_logits, model, example, old, frozen_classifier_inputs(model, isolation)
        )
        if after_training["frozen_features_exact"] is False or not after_training["within_rounding"]:
            raise IsolationError(
                "isolation did not hold during training: the old classes' features or logits moved by "
                f"{after_training['max_old_logit_change']:.3g} "
                f"(rounding allows {after_training['max_rounding_bound']:.3g})"
            )
    info = {**meta.info, "increments": [*meta.info.get("increments", []), {"classes": list(new_classes)}]}
    merged = None
    t2 = time.perf_counter()
    if cfg.head == "routed":
        merged = _route_(model, routed_stats, isolation, new_data, list(new_classes), prior_tasks, cfg, prepare, device)
        info["head"] = routed_spec(model.get_classifier())
        info["increments"][-1]["head"] = "routed"
    t_route = time.perf_counter() - t2
    new_meta = replace(meta, classes=list(meta.classes) + list(new_classes), shapes={}, fingerprint="", info=info)
    new_index = extend_index(index, model, list(new_classes), per_class_new, critical_new, used)
    new_index.class_stats = merged
    report = {
        "old_classes": list(meta.classes),
        "new_classes": list(new_classes),
        "new_items": len(new_data),
        "replay_items": 0 if replay is None else len(replay),
        "config": cfg.to_dict(),
        "training": stats,
        "time_per_step_ms": stats["step_ms_median"],
        "peak_rss_bytes": stats["peak_rss_bytes"],
        "train_seconds": t_train,
        "slice_seconds": t_slice,
        "frozen_channels": int(sum(int(frozen_sets[g.layer].sum()) for g in groups)),
        "total_channels": int(sum(g.channels for g in groups)),
        "critical_channels_after": int(sum(int(m.sum()) for m in new_index.critical.values())),
        "new_class_slicing": used,
        "isolation": None if isolation is None else {**isolation.summary(), "after_training": after_training},
    }
    if merged is not None:
        report["head"] = "routed"
        report["router_seconds"] = t_route
        report["class_stats"] = _stats_report(merged)
        report["tasks"] = model.get_classifier().tasks()
    return IncrementResult(model=model, meta=new_meta, index=new_index, report=report)


def _index_stats(index: CriticalIndex, meta: ModelMeta, *, isolated: bool = False):
    """The index's class statistics, checked against the model's classes (and isolated when required)."""
    stats = index.class_stats
    if stats is None:
        raise EdgesliceError(
            "the index has no class statistics, so a class-incremental head cannot be made without old data "
            "(slice the model again with this edgeslice, or use the task-incremental head: --head trained)"
        )
    if list(stats.classes) != list(meta.classes):
        raise EdgesliceError("the index's class statistics are for other classes than the model")
    if isolated and not stats.isolated:
        raise EdgesliceError(
            "the index's class statistics are not over isolated features (this model could not be isolated, or the "
            "index is from an older edgeslice): use --head lda or --head trained"
        )
    return stats


def _route_(model, stats, isolation, new_data, new_classes, prior_tasks, cfg, prepare, device):
    """Install the routed head over the trained classifier; returns the statistics with the new classes added."""
    from ..classstats import class_stats
    from ..routed import install_head_, routed_head

    _check_router_features(model, stats, isolation)
    old = len(stats.classes)
    shifted = ((x, y - old) for x, y in iterate_batches(new_data, max(cfg.batch_size, 1)))
    new_stats = class_stats(
        model, shifted, new_classes, dims=stats.dims, prepare=prepare, device=device,
        shrinkage=stats.shrinkage, budget=stats.budget, isolated=True, taps=stats.taps,
    )  # fmt: skip
    merged = stats.extend(new_stats)
    tasks = [*prior_tasks, list(range(old, old + len(new_classes)))]
    install_head_(model, routed_head(model.get_classifier(), merged, tasks))
    model.eval()
    return merged


def _check_router_features(model, stats, isolation) -> None:
    """The statistics' features (classifier inputs and taps) must be among those the isolated sub-network keeps
    exactly."""
    dims_now = frozen_classifier_inputs(model, isolation)
    taps_ok = all(
        t.layer in isolation.frozen
        and isolation.frozen[t.layer].numel() == t.mask.numel()
        and not (t.mask & ~isolation.frozen[t.layer].cpu()).any()
        for t in stats.taps
    )
    if (
        not taps_ok
        or dims_now is None
        or dims_now.numel() != stats.dims.numel()
        or (stats.dims & ~dims_now.cpu()).any()
    ):
        raise EdgesliceError(
            "the index's class statistics are over features this increment does not keep frozen "
            "(the model or index changed since slicing)"
        )


def _stats_report(stats) -> dict[str, Any]:
    return {
        "bytes": stats.nbytes(),
        "budget": stats.budget,
        "rank": int(stats.basis.shape[0]),
        "features": stats.d,
        "counts": stats.counts.tolist(),
        "shrinkage": stats.shrinkage,
        "isolated": stats.isolated,
        "taps": [{"layer": t.layer, "channels": int(t.mask.sum())} for t in stats.taps],
    }


def _learn_lda(
    model: nn.Module,
    meta: ModelMeta,
    index: CriticalIndex,
    new_data: Dataset,
    new_classes: list[str],
    cfg: IncrementConfig,
    groups: list[ChannelGroup],
    example: torch.Tensor,
    device: torch.device | str,
) -> IncrementResult:
    """The class-incremental increment: new classes' statistics, pooled with the index's, written as the head.

    Statistics over isolated features (:func:`~.classil.stats_for_index` with an index) first isolate the model as
    they were made: the frozen channels lose their non-critical inputs, and the head reads the frozen features.
    """
    from ..classstats import class_stats

    stats = _index_stats(index, meta)
    old = len(meta.classes)
    prepare = _prepare(meta)
    t0 = time.perf_counter()
    before = peak_rss_bytes()
    isolation = None
    if stats.isolated:
        isolation = isolate_(model, groups, index.critical, old, example, seed=0)
        _check_router_features(model, stats, isolation)
    shifted = ((x, y - old) for x, y in iterate_batches(new_data, max(cfg.batch_size, 1)))
    new_stats = class_stats(
        model, shifted, new_classes, dims=stats.dims, prepare=prepare, device=device,
        shrinkage=stats.shrinkage, budget=stats.budget, isolated=stats.isolated, taps=stats.taps,
    )  # fmt: skip
    merged = stats.extend(new_stats)
    merged.install_(model)
    t_stats = time.perf_counter() - t0
    new_labels = list(range(old, old + len(new_classes)))
    t1 = time.perf_counter()
    if cfg.slice_new:
        per_class_new, critical_new, used = slice_new_classes(
            model, meta, index, new_data, new_labels, calib_per_class=cfg.calib_per_class, seed=cfg.seed, device=device
        )
    else:
        per_class_new, critical_new, used = None, {k: torch.zeros_like(v) for k, v in index.critical.items()}, {}
    t_slice = time.perf_counter() - t1
    model.eval()
    new_meta = replace(
        meta,
        classes=list(meta.classes) + list(new_classes),
        shapes={},
        fingerprint="",
        info={
            **meta.info,
            "increments": [*meta.info.get("increments", []), {"classes": list(new_classes), "head": "lda"}],
        },
    )
    new_index = extend_index(index, model, list(new_classes), per_class_new, critical_new, {**used, "head": "lda"})
    new_index.class_stats = merged
    training = {
        "steps": 0,
        "train_seconds": t_stats,
        "step_ms_median": 1000.0 * t_stats,  # one pass of statistics is the whole "training"
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_before_bytes": before,
        "optimizer_state_bytes": 0,
        "max_drift": 0.0,
        "plan": {"trainable_parameters": 0, "total_parameters": sum(p.numel() for p in model.parameters()), "tpr": 0.0},
    }
    report = {
        "old_classes": list(meta.classes),
        "new_classes": list(new_classes),
        "new_items": len(new_data),
        "replay_items": 0,
        "config": cfg.to_dict(),
        "head": "lda",
        "training": training,
        "time_per_step_ms": training["step_ms_median"],
        "peak_rss_bytes": training["peak_rss_bytes"],
        "train_seconds": t_stats,
        "slice_seconds": t_slice,
        "frozen_channels": int(sum(g.channels for g in groups)),
        "total_channels": int(sum(g.channels for g in groups)),
        "critical_channels_after": int(sum(int(m.sum()) for m in new_index.critical.values())),
        "new_class_slicing": used,
        "isolation": None if isolation is None else isolation.summary(),
        "class_stats": _stats_report(merged),
    }
    return IncrementResult(model=model, meta=new_meta, index=new_index, report=report)


def extend_index(
    index: CriticalIndex,
    model: nn.Module,
    new_classes: list[str],
    per_class_new: dict[str, torch.Tensor] | None,
    critical_new: dict[str, torch.Tensor],
    used: dict[str, Any],
) -> CriticalIndex:
    """The index after an increment: classes appended, new sets added (union), bound to the grown model."""
    critical = {name: index.critical[name] | critical_new[name].to(torch.bool) for name in index.critical}
    per_class = None
    if index.per_class is not None:
        # A strategy without per-class sets (or no slicing) leaves the new classes' rows empty.
        new_rows = per_class_new or {
            name: torch.zeros(len(new_classes), m.numel(), dtype=torch.bool) for name, m in index.critical.items()
        }
        per_class = {name: torch.cat([index.per_class[name], new_rows[name].to(torch.bool)]) for name in critical}
    params = dict(index.params)
    params["increments"] = [*params.get("increments", []), {"classes": list(new_classes), **used}]
    return CriticalIndex(
        model_fingerprint=fingerprint(model),
        timm_name=index.timm_name,
        layers=[dict(e) for e in index.layers],
        critical=critical,
        per_class=per_class,
        classes=list(index.classes) + list(new_classes),
        params=params,
        calibration=dict(index.calibration),
        # Statistics are over features the trained head's increment may change: the caller re-attaches them.
        class_stats=None,
    )


@torch.no_grad()
def task_accuracy(
    model: nn.Module,
    dataset: Dataset,
    task_labels: Sequence[int],
    *,
    seen: int,
    prepare=None,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
) -> dict[str, float]:
    """Accuracy on one task's items in both continual-learning settings, in percent.

    Args:
        model: the model.
        dataset: items of the task (labels in the model's label space).
        task_labels: the task's labels.
        seen: classes seen so far (the first ``seen`` outputs).
        prepare: normalisation.
        device: where to run.
        batch_size: items per forward.

    Returns:
        ``class_il`` (argmax over all ``seen`` classes) and ``task_il`` (argmax within ``task_labels``).
    """
    labels = torch.as_tensor(list(task_labels), dtype=torch.int64, device=device)
    correct_c = correct_t = total = 0
    with eval_mode(model):
        for x, y in iterate_batches(dataset, batch_size):
            x, y = x.to(device), y.to(device)
            logits = model(prepare(x) if prepare is not None else x)[:, :seen]
            correct_c += int((logits.argmax(1) == y).sum())
            correct_t += int((labels[logits[:, labels].argmax(1)] == y).sum())
            total += len(y)
    return {"class_il": 100.0 * correct_c / max(total, 1), "task_il": 100.0 * correct_t / max(total, 1)}
