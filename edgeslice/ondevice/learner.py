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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from ..classstats import ClassStats
from ..data import make_prepare, targets_of
from ..errors import EdgesliceError
from ..index import CriticalIndex
from ..models import ModelMeta, fingerprint
from ..routed import RoutedHead, routed_spec, unwrap_routed_
from ..torchutil import eval_mode
from ..train import iterate_batches
from .freeze import ChannelGroup, TrainPlan, channel_groups
from .grow import extend_index, grow_classifier_, increment_plan, model_layers
from .guarantees import old_logit_check, pre_logits
from .isolate import IsolationError, IsolationReport, frozen_classifier_inputs, isolate_
from .loop import LoopConfig, peak_rss_bytes, train_partial
from .new_slices import NewSlices, slice_or_skip
from .stat_heads import check_router_features, index_stats, pooled_stats, route_, stats_report

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


@dataclass(frozen=True)
class Isolated:
    """The frozen sub-network closed off before training, and the old classes' features and logits it must keep."""

    report: IsolationReport
    frozen: dict[str, torch.Tensor]
    ref_features: torch.Tensor  # (2, n_features) on the example batch
    ref_logits: torch.Tensor  # (2, old classes)


@dataclass(frozen=True)
class Routing:
    """What the routed head needs: the index's class statistics over isolated features and the earlier tasks."""

    stats: ClassStats
    prior_tasks: list[list[int]]


@dataclass(frozen=True)
class Routed:
    """The routed head installed: the statistics with the new classes pooled in, and the seconds it took."""

    stats: ClassStats
    seconds: float


def routing_for(model: nn.Module, meta: ModelMeta, index: CriticalIndex) -> Routing:
    """The index's statistics over isolated features, and the tasks of a routed model (unwrapped to its classifier
    in place) or one task of all old classes.

    Raises:
        EdgesliceError: the index has no statistics, or none over isolated features, or for other classes.
    """
    stats = index_stats(index, meta, isolated=True)
    return Routing(stats, unwrap_routed_(model) or [list(range(len(meta.classes)))])


def check_increment(
    model: nn.Module,
    meta: ModelMeta,
    index: CriticalIndex,
    new_data: Dataset,
    new_classes: Sequence[str],
    device: torch.device | str,
) -> torch.Tensor:
    """Check the index against the model and the new data against the model's classes; returns an example batch
    (two prepared new-data items on ``device``) for tracing the model.

    Raises:
        IndexFileError: the index was made for another model.
        EdgesliceError: no new items, a class the model already has, or labels outside the new classes.
    """
    old = len(meta.classes)
    if len(new_data) == 0:
        raise EdgesliceError("no new-class items to learn from")
    model.to(device)
    x0, _ = next(iterate_batches(new_data, 2))
    example = make_prepare(meta)(x0.to(device))
    index.check_model(meta.timm_name, model_layers(model, example), fingerprint(model))
    clash = sorted(set(new_classes) & set(meta.classes))
    if clash:
        raise EdgesliceError(f"the model already has class(es) {', '.join(clash)}")
    labels = targets_of(new_data)
    if int(labels.min()) < old or int(labels.max()) >= old + len(new_classes):
        raise EdgesliceError(f"new-data labels must be in {old}..{old + len(new_classes) - 1}")
    return example


def check_head(model: nn.Module, cfg: IncrementConfig, *, replay: bool, frozen: bool, freeze_old_rows: bool) -> None:
    """Refuse what the configured head cannot do: grow a routed model with another head, train the routed head on
    more than new data, or train anything with the discriminant head.

    Raises:
        EdgesliceError: the head and the options do not go together.
    """
    if isinstance(model.get_classifier(), RoutedHead) and cfg.head != "routed":
        raise EdgesliceError("this model has a routed class-incremental head: grow it with head 'routed'")
    if cfg.head == "routed" and (replay or frozen or not freeze_old_rows):
        raise EdgesliceError("the routed head trains isolated on new data only: replay and frozen sets need 'trained'")
    if cfg.head == "lda" and (replay or frozen or cfg.isolate or not freeze_old_rows):
        raise EdgesliceError(
            "the class-incremental head trains nothing: replay, frozen sets and isolation need head='trained'"
        )


def isolate_for_training(
    model: nn.Module,
    groups: list[ChannelGroup],
    frozen: dict[str, torch.Tensor],
    old: int,
    example: torch.Tensor,
    *,
    freeze_old_rows: bool,
    routing: Routing | None,
    seed: int,
) -> Isolated:
    """Close the frozen channels (and the ``old`` class rows) into a sub-network (:func:`.isolate_`) and record what
    they compute on ``example``; with routing, check first that the router's features stay frozen."""
    isolation = isolate_(model, groups, frozen, old if freeze_old_rows else 0, example, seed=seed)
    if routing is not None:
        check_router_features(model, routing.stats, isolation)  # before training: fail fast
    with eval_mode(model), torch.no_grad():
        ref_features = pre_logits(model, example)
        ref_logits = model.get_classifier()(ref_features)[:, :old]
    return Isolated(isolation, isolation.frozen, ref_features, ref_logits)


def train_new_rows(
    model: nn.Module,
    train_set: Dataset,
    cfg: IncrementConfig,
    meta: ModelMeta,
    device: torch.device | str,
    plan: TrainPlan,
) -> dict[str, Any]:
    """Train ``plan``'s rows on ``train_set`` with cross-entropy (Eq. 8); returns the loop's statistics."""
    n_train, prepare = len(train_set), make_prepare(meta)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        for x, y in iterate_batches(train_set, cfg.batch_size, shuffle=True, generator=gen):
            if len(y) > 1 or n_train == 1:  # BatchNorm cannot train on one item (a last batch of 1 is skipped)
                yield x, y

    def loss_fn(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        x, y = x.to(device), y.to(device)
        return F.cross_entropy(net(prepare(x)), y)

    steps_per_epoch = -(-n_train // cfg.batch_size) - (n_train % cfg.batch_size == 1 and n_train > 1)
    return train_partial(model, plan, batches, loss_fn, cfg.loop(), steps_per_epoch=steps_per_epoch)


def check_isolation_held(isolated: Isolated, model: nn.Module, example: torch.Tensor, old: int) -> dict[str, Any]:
    """The old classes' features and logits after training against those before (:func:`.old_logit_check`).

    Raises:
        IsolationError: they moved beyond float rounding.
    """
    after = old_logit_check(
        isolated.ref_features,
        isolated.ref_logits,
        model,
        example,
        old,
        frozen_classifier_inputs(model, isolated.report),
    )
    if after["frozen_features_exact"] is False or not after["within_rounding"]:
        raise IsolationError(
            "isolation did not hold during training: the old classes' features or logits moved by "
            f"{after['max_old_logit_change']:.3g} (rounding allows {after['max_rounding_bound']:.3g})"
        )
    return after


def grown_meta(meta: ModelMeta, new_classes: Sequence[str], info: dict[str, Any] | None = None) -> ModelMeta:
    """The checkpoint meta after an increment: classes appended, ``info`` (default: the increment recorded) set,
    shapes and fingerprint left for the next save."""
    if info is None:
        info = {**meta.info, "increments": [*meta.info.get("increments", []), {"classes": list(new_classes)}]}
    return replace(meta, classes=list(meta.classes) + list(new_classes), shapes={}, fingerprint="", info=info)


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
    example = check_increment(model, meta, index, new_data, new_classes, device)
    check_head(model, cfg, replay=replay is not None, frozen=frozen is not None, freeze_old_rows=freeze_old_rows)
    old, new_classes = len(meta.classes), list(new_classes)
    routing = routing_for(model, meta, index) if cfg.head == "routed" else None
    groups = channel_groups(model, index.layers, example)
    if cfg.head == "lda":
        return learn_lda(model, meta, index, new_data, new_classes, cfg, groups, example, device)
    t0 = time.perf_counter()
    frozen_sets = frozen if frozen is not None else index.critical
    isolated = None
    if cfg.isolate or routing is not None:
        isolated = isolate_for_training(model, groups, frozen_sets, old, example, freeze_old_rows=freeze_old_rows,
                                        routing=routing, seed=cfg.seed)  # fmt: skip
        frozen_sets = isolated.frozen
    grow_classifier_(model, len(new_classes), seed=cfg.seed)
    info = {"frozen": "custom" if frozen is not None else "index critical channels", "old_classes": old}
    plan = increment_plan(model, groups, frozen_sets, old if freeze_old_rows else 0, info=info)
    train_set = new_data if replay is None else ConcatDataset([new_data, replay])
    stats = train_new_rows(model, train_set, cfg, meta, device, plan)
    t_train = time.perf_counter() - t0
    sliced = _slice_new(model, meta, index, new_data, new_classes, cfg, device)
    model.eval()
    after_training = None
    if isolated is not None and freeze_old_rows:
        after_training = check_isolation_held(isolated, model, example, old)
    new_meta = grown_meta(meta, new_classes)
    routed = None
    if routing is not None and isolated is not None:
        routed = _install_router(model, routing, isolated, new_data, new_classes, cfg, make_prepare(meta), device)
        new_meta.info["head"] = routed_spec(model.get_classifier())
        new_meta.info["increments"][-1]["head"] = "routed"
    new_index = extend_index(index, model, new_classes, sliced.per_class, sliced.critical, sliced.used)
    new_index.class_stats = None if routed is None else routed.stats
    frozen_count = int(sum(int(frozen_sets[g.layer].sum()) for g in groups))
    report = {
        **_common_report(meta, new_classes, new_data, replay, cfg, stats, t_train, sliced),
        **_channels_report(groups, frozen_count, new_index, sliced),
        "isolation": None if isolated is None else {**isolated.report.summary(), "after_training": after_training},
    }
    if routed is not None:
        report.update(head="routed", router_seconds=routed.seconds, class_stats=stats_report(routed.stats),
                      tasks=model.get_classifier().tasks())  # fmt: skip
    return IncrementResult(model=model, meta=new_meta, index=new_index, report=report)


def _slice_new(model, meta, index, new_data, new_classes, cfg, device) -> NewSlices:
    old = len(meta.classes)
    new_labels = list(range(old, old + len(new_classes)))
    return slice_or_skip(model, meta, index, new_data, new_labels, enabled=cfg.slice_new,
                         calib_per_class=cfg.calib_per_class, seed=cfg.seed, device=device)  # fmt: skip


def _install_router(model, routing, isolated, new_data, new_classes, cfg, prepare, device) -> Routed:
    """:func:`.route_`, timed."""
    t = time.perf_counter()
    merged = route_(model, routing.stats, isolated.report, new_data, new_classes, routing.prior_tasks,
                    batch_size=cfg.batch_size, prepare=prepare, device=device)  # fmt: skip
    return Routed(merged, time.perf_counter() - t)


def _channels_report(groups: list[ChannelGroup], frozen: int, new_index: CriticalIndex, sliced: NewSlices):
    return {
        "frozen_channels": frozen,
        "total_channels": int(sum(g.channels for g in groups)),
        "critical_channels_after": int(sum(int(m.sum()) for m in new_index.critical.values())),
        "new_class_slicing": sliced.used,
    }


def _common_report(meta, new_classes, new_data, replay, cfg, training, train_seconds, sliced):
    """The report's keys every head has, up to the channel counts (in the order the report lists them)."""
    return {
        "old_classes": list(meta.classes),
        "new_classes": list(new_classes),
        "new_items": len(new_data),
        "replay_items": 0 if replay is None else len(replay),
        "config": cfg.to_dict(),
        "training": training,
        "time_per_step_ms": training["step_ms_median"],
        "peak_rss_bytes": training["peak_rss_bytes"],
        "train_seconds": train_seconds,
        "slice_seconds": sliced.seconds,
    }


def learn_lda(
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
    stats = index_stats(index, meta)
    old = len(meta.classes)
    t0 = time.perf_counter()
    before = peak_rss_bytes()
    isolation = None
    if stats.isolated:
        isolation = isolate_(model, groups, index.critical, old, example, seed=0)
        check_router_features(model, stats, isolation)
    merged = pooled_stats(model, stats, new_data, new_classes, batch_size=cfg.batch_size, prepare=make_prepare(meta),
                          device=device, isolated=stats.isolated)  # fmt: skip
    merged.install_(model)
    t_stats = time.perf_counter() - t0
    sliced = _slice_new(model, meta, index, new_data, new_classes, cfg, device)
    model.eval()
    increment = {"classes": list(new_classes), "head": "lda"}
    new_meta = grown_meta(meta, new_classes, {**meta.info, "increments": [*meta.info.get("increments", []), increment]})
    new_index = extend_index(
        index, model, new_classes, sliced.per_class, sliced.critical, {**sliced.used, "head": "lda"}
    )
    new_index.class_stats = merged
    training = _lda_training(model, t_stats, before)
    report = {
        **_common_report(meta, new_classes, new_data, None, cfg, training, t_stats, sliced),
        "head": "lda",
        **_channels_report(groups, int(sum(g.channels for g in groups)), new_index, sliced),
        "isolation": None if isolation is None else isolation.summary(),
        "class_stats": stats_report(merged),
    }
    return IncrementResult(model=model, meta=new_meta, index=new_index, report=report)


def _lda_training(model: nn.Module, seconds: float, rss_before: int) -> dict[str, Any]:
    """The training statistics of an increment that trains nothing (in the training loop's keys)."""
    return {
        "steps": 0,
        "train_seconds": seconds,
        "step_ms_median": 1000.0 * seconds,  # one pass of statistics is the whole "training"
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_before_bytes": rss_before,
        "optimizer_state_bytes": 0,
        "max_drift": 0.0,
        "plan": {"trainable_parameters": 0, "total_parameters": sum(p.numel() for p in model.parameters()), "tpr": 0.0},
    }


__all__ = [
    "HEADS",
    "INCREMENT_VERSION",
    "IncrementConfig",
    "IncrementResult",
    "check_head",
    "check_increment",
    "check_isolation_held",
    "grown_meta",
    "isolate_for_training",
    "learn_increment",
    "learn_lda",
    "train_new_rows",
]
