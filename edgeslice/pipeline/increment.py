"""``edgeslice increment``: learn new classes without forgetting, as the device would (paper §4.3, Eq. 8–9).

The learning itself is :func:`edgeslice.ondevice.learn_increment` (torch, timm, safetensors only); this host-side
command adds what a device cannot: the ONNX export with its onnxruntime parity check, and (when the new data also
holds old classes' test items) an evaluation of forgetting that the device itself never sees.

config = IncrementConfig(bundle_dir=Path("out/compress"), new_data="new-classes/", out=Path("out/increment"))
report = run(config, torch.device("cpu"))
print(report.evaluation, report.onnx_parity_max_abs)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.files import atomic_write_json
from ..artifacts.staging import claim_output, staging_dir
from ..classes import parse_classes
from ..data import ArrayDataset, DataBundle, make_prepare, relabel, targets_of
from ..deploy.bundle import (
    bundle_inputs,
    check_new_class_sizes,
    grown_statistics,
    index_stats_from_bundle,
    meta_feature_dim,
    read_bundle_stats,
    write_bundle,
)
from ..deploy.export import check_parity, export_onnx
from ..errors import EdgesliceError
from ..index import CriticalIndex
from ..models import ModelMeta, load_checkpoint, read_meta, save_checkpoint
from ..ondevice import HEADS, IncrementResult, learn_increment, sample_fraction, stored_bytes, task_accuracy
from ..ondevice import IncrementConfig as LearnSettings
from ..routed import RoutedHead
from ..train import iterate_batches
from .baseline import load_checkpoint_data
from .report import HIDDEN, optional, report_json


@dataclass(frozen=True)
class IncrementConfig:
    """What ``edgeslice increment`` does, as one validated value (the command's options, same names).

    Raises:
        EdgesliceError: no ``new_data``, or a ``head`` that is unknown or cannot go with ``isolate``/``replay``.
    """

    new_data: str = ""
    bundle_dir: Path | None = None
    checkpoint: Path | None = None
    index: Path | None = None
    classes: str | None = None
    out: Path = Path("edgeslice-out/increment")
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    optimizer: str = "adamw"
    calib_per_class: int = 50
    replay: str | None = None
    replay_fraction: float = 0.1
    isolate: bool = False
    head: str = "auto"
    download: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.new_data:
            raise EdgesliceError("--new-data is required (a data-set name or an ImageFolder directory)")
        check_head(self.head, self.isolate, self.replay)
        if min(self.epochs, self.batch_size, self.calib_per_class) < 1:
            raise ValueError("epochs, batch-size and calib-per-class must be >= 1")
        if self.lr <= 0 or not 0.0 < self.replay_fraction <= 1.0:
            raise ValueError(f"lr must be > 0 and replay-fraction in (0, 1], got {self.lr}, {self.replay_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class IncrementReport:
    """What ``edgeslice increment`` learned, measured and wrote (``--json`` prints these fields; report.json all but
    ``out``). The learner's part comes first (:func:`edgeslice.ondevice.learn_increment`); ``head``,
    ``router_seconds``, ``class_stats`` and ``tasks`` are there only for the heads that have them."""

    old_classes: list[str]
    new_classes: list[str]
    new_items: int
    replay_items: int
    config: dict[str, Any]
    training: dict[str, Any]
    time_per_step_ms: float
    peak_rss_bytes: int
    train_seconds: float
    slice_seconds: float
    frozen_channels: int
    total_channels: int
    critical_channels_after: int
    new_class_slicing: dict[str, Any]
    isolation: dict[str, Any] | None
    checkpoint: str
    index: str
    new_data: dict[str, Any]
    evaluation: dict[str, Any]
    bytes_kept: dict[str, Any]
    onnx_parity_max_abs: float
    index_bytes_after: int
    bundle: dict[str, Any] | None
    out: str | None = optional()  # set once report.json is written: not part of it
    head: str | None = optional()
    router_seconds: float | None = optional()
    class_stats: dict[str, Any] | None = optional()
    tasks: list[list[int]] | None = optional()
    model: str = field(default="", metadata=HIDDEN)  # the timm name, for the human table


@dataclass(frozen=True)
class Located:
    """Where the model and index to grow are, and (for a device bundle) the bundle's class statistics."""

    checkpoint: Path
    index: Path
    old_stats: Any  # edgeslice_device's statistics of a bundle, or None


@dataclass(frozen=True)
class Shipped:
    """What the device holds: the model and its index."""

    net: nn.Module
    meta: ModelMeta
    index: CriticalIndex


@dataclass(frozen=True)
class NewClasses:
    """The new data, relabelled to the grown model's outputs ``old``, ``old + 1``, …"""

    bundle: DataBundle
    names: list[str]
    old: int
    train: ArrayDataset
    test: ArrayDataset


@dataclass(frozen=True)
class Written:
    """What writing the output added to the report."""

    onnx_parity_max_abs: float
    index_bytes_after: int
    bundle: dict[str, Any] | None


def check_head(head: str, isolate: bool, replay: str | None) -> None:
    """Refuse a ``--head`` that is unknown or that cannot go with ``--isolate``/``--replay`` (``auto`` always can)."""
    if head == "auto":
        return
    if head not in HEADS:
        raise EdgesliceError(f"--head must be one of {', '.join(HEADS)}, not {head!r}")
    if head == "lda" and (isolate or replay is not None):
        raise EdgesliceError("--isolate and --replay train the network: use them with --head trained")
    if head == "routed" and replay is not None:
        raise EdgesliceError(
            "the routed head learns from new data only (it is always isolated): --replay needs --head trained"
        )


def auto_head(model: nn.Module, index: CriticalIndex, isolate: bool, replay: str | None) -> str:
    """The head ``--head auto`` picks: the routed head where the index supports it (or the model already has one),
    the discriminant where the statistics are not over isolated features, the trained head where there are none
    or where the network must train (--replay, --isolate)."""
    if isinstance(model.get_classifier(), RoutedHead):
        return "routed"
    if replay is not None or isolate:
        return "trained"
    stats = index.class_stats
    if stats is None:
        return "trained"
    return "routed" if stats.isolated else "lda"


def locate_inputs(config: IncrementConfig) -> Located:
    """The checkpoint and index to grow (a bundle folder's own, or the files given); a bundle is verified here,
    before any work.

    Raises:
        EdgesliceError: neither a bundle nor both files given, or a bundle that does not verify.
    """
    checkpoint, index = bundle_inputs(config.bundle_dir, config.checkpoint, config.index)
    return Located(checkpoint, index, read_bundle_stats(checkpoint.parent))


def load_shipped(located: Located) -> Shipped:
    """Load the model and index. A bundle grown on a device has an index without the host's class statistics: the
    bundle's exact ones stand in."""
    net, meta = load_checkpoint(located.checkpoint)
    index = CriticalIndex.load(located.index)
    old_stats = located.old_stats
    if index.class_stats is None and old_stats is not None and list(old_stats.classes) == list(meta.classes):
        index.class_stats = index_stats_from_bundle(old_stats, meta_feature_dim(net))
        index.params["class_stats"] = "from the bundle's class_stats.safetensors (grown on a device)"
    return Shipped(net, meta, index)


def learn_settings(config: IncrementConfig, shipped: Shipped) -> LearnSettings:
    """How the learner runs: the command's options, ``--head auto`` resolved against the model and index."""
    head = config.head
    if head == "auto":
        head = auto_head(shipped.net, shipped.index, config.isolate, config.replay)
    return LearnSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        calib_per_class=config.calib_per_class,
        isolate=config.isolate,
        seed=config.seed,
        head=head,
    )


def pick_classes(spec: str | None, available: list[str], known: list[str]) -> list[int]:
    """Labels (in the new data) of the classes to learn: ``parse_classes``, or the classes the model lacks."""
    if spec is None:
        picked = [i for i, c in enumerate(available) if c not in known]
        if not picked:
            raise EdgesliceError("the new data has no class the model lacks (pass --classes)")
        return picked
    return parse_classes(spec, available)


def load_new_classes(config: IncrementConfig, meta: ModelMeta) -> NewClasses:
    """Load ``--new-data`` and check it: the model's channels, classes the model lacks, enough images each.

    Raises:
        EdgesliceError: the data does not fit the model, names a class the model has, or has too few images.
    """
    bundle = load_checkpoint_data(meta, config.new_data, seed=config.seed, download=config.download, min_classes=1)
    if bundle.in_chans != meta.in_chans:
        raise EdgesliceError(f"the new data has {bundle.in_chans} channels, the model takes {meta.in_chans}")
    picked = pick_classes(config.classes, list(bundle.classes), list(meta.classes))
    names = [bundle.classes[i] for i in picked]
    clash = sorted(set(names) & set(meta.classes))
    if clash:
        raise EdgesliceError(f"the model already has class(es) {', '.join(clash)}")
    counts = torch.bincount(
        torch.cat([targets_of(bundle.train), targets_of(bundle.test)]), minlength=len(bundle.classes)
    )
    check_new_class_sizes(names, [int(counts[i]) for i in picked])
    old = len(meta.classes)
    mapping = {src: old + j for j, src in enumerate(picked)}
    return NewClasses(bundle, names, old, relabel(bundle.train, mapping), relabel(bundle.test, mapping))


def replay_buffer(config: IncrementConfig, meta: ModelMeta, new: NewClasses) -> ArrayDataset | None:
    """The old-class items ``--replay`` keeps (``--replay-fraction`` per class, old labels), or None.

    Raises:
        EdgesliceError: the replay data holds none of the model's classes.
    """
    if config.replay is None:
        return None
    rb = new.bundle
    if config.replay != config.new_data:
        rb = load_checkpoint_data(meta, config.replay, seed=config.seed)
    old_map = {i: meta.classes.index(c) for i, c in enumerate(rb.classes) if c in meta.classes}
    if not old_map:
        raise EdgesliceError(f"--replay {config.replay} holds none of the model's classes ({', '.join(meta.classes)})")
    return sample_fraction(relabel(rb.train, old_map), config.replay_fraction, config.seed)


def class_accuracies(model: nn.Module, meta: ModelMeta, new: NewClasses, device: torch.device) -> dict[str, Any]:
    """New-class accuracy, and old-class accuracy when the new data's test split also has old classes."""
    prepare, old = make_prepare(meta), new.old
    seen = old + len(new.names)
    out: dict[str, Any] = {}
    if len(new.test):
        out["new_classes"] = task_accuracy(model, new.test, range(old, seen), seen=seen, prepare=prepare, device=device)
    old_map = {i: meta.classes.index(c) for i, c in enumerate(new.bundle.classes) if c in meta.classes}
    if old_map:
        old_test = relabel(new.bundle.test, old_map)
        if len(old_test):
            out["old_classes"] = task_accuracy(model, old_test, range(old), seen=seen, prepare=prepare, device=device)
            out["note"] = "old-class accuracy is a host-side check: the device learns from new-class data only"
    return out


def label_onnx(path: Path, classes: list[str], head: str, tasks: list[list[int]] | None = None) -> None:
    """Write the class order into the ONNX metadata: output j is ``classes[j]`` (also in model.json and the index);
    for the routed head also the tasks (labels of each increment), whose outputs are log-probabilities."""
    import onnx

    proto = onnx.load(str(path))
    meta = [("edgeslice.classes", json.dumps(classes)), ("edgeslice.head", head)]
    if tasks is not None:
        meta.append(("edgeslice.tasks", json.dumps(tasks)))
    for key, value in meta:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def export_checked_onnx(staging: Path, result: IncrementResult, head: str, x_check: torch.Tensor) -> float:
    """Export ``staging``/model.onnx, labelled with the classes, and check it against the model with onnxruntime;
    returns the largest output difference."""
    export_onnx(result.model, x_check, staging / "model.onnx")
    label_onnx(staging / "model.onnx", result.meta.classes, head, result.report.get("tasks"))
    # The routed head outputs log-probabilities: unlikely classes get large negative values, in which the
    # features' float32 rounding (onnxruntime folds BatchNorm) is amplified by the router; 1e-3 of the largest.
    atol = 1e-3 if head == "routed" else 1e-4
    return check_parity(result.model, staging / "model.onnx", x_check, atol=atol)


def keep_bundle(
    staging: Path, result: IncrementResult, old_stats: Any, new: NewClasses, seed: int, device: torch.device
) -> dict[str, Any] | None:
    """Keep a device bundle a bundle: statistics restricted to the classifier inputs that stayed frozen, plus the
    new classes'; None (a plain output folder) when the input was no bundle or no input stayed frozen."""
    model, stats_block = result.model, result.index.class_stats
    dims = None if stats_block is None else stats_block.dims
    meta = read_meta(staging / "model.json")
    stats = grown_statistics(old_stats, model, dims, new.train, new.names, make_prepare(meta), first_label=new.old,
                             seed=seed, device=device)  # fmt: skip
    model.cpu()
    if stats is None:
        return None
    head = result.report.get("head") or "trained"
    history = [{"op": "increment", "path": "host", "classes": list(new.names)}]
    write_bundle(staging, model, meta, stats, history=history, head=head)
    return {"head": head, "stats_features": int(stats.means.shape[1]), "classes": len(meta.classes)}


def write_increment(
    staging: Path,
    result: IncrementResult,
    located: Located,
    new: NewClasses,
    settings: LearnSettings,
    device: torch.device,
) -> Written:
    """Write the grown checkpoint, its index, the parity-checked ONNX model and (from a bundle) the bundle files."""
    model = result.model.cpu()
    x_check = make_prepare(result.meta)(next(iterate_batches(new.test if len(new.test) else new.train, 64))[0])
    saved = save_checkpoint(model, result.meta, staging / "model.safetensors")
    result.index.model_fingerprint = saved.fingerprint
    result.index.save(staging / "critical_index")
    parity = export_checked_onnx(staging, result, settings.head, x_check)
    index_bytes = (staging / "critical_index").stat().st_size
    bundle = keep_bundle(staging, result, located.old_stats, new, settings.seed, device)
    return Written(onnx_parity_max_abs=parity, index_bytes_after=index_bytes, bundle=bundle)


def run(config: IncrementConfig, device: torch.device) -> IncrementReport:
    """Learn the new classes of ``config.new_data`` and write ``config.out``: model.safetensors + model.json,
    critical_index, model.onnx (parity-checked with onnxruntime), report.json and manifest.json; from a bundle, a
    bundle again.

    Raises:
        EdgesliceError: the inputs are missing or do not verify, or the new data is unusable (all before any work).
        OutputError: ``config.out`` cannot be written or holds files edgeslice did not write.
    """
    located = locate_inputs(config)
    with claim_output(config.out):
        shipped = load_shipped(located)
        settings = learn_settings(config, shipped)
        meta = shipped.meta
        new = load_new_classes(config, meta)
        replay = replay_buffer(config, meta, new)
        index_bytes = located.index.stat().st_size
        result = learn_increment(shipped.net, meta, shipped.index, new.train, new.names, settings, device=device,
                                 replay=replay)  # fmt: skip
        learned = {
            **result.report,
            "checkpoint": str(located.checkpoint),
            "index": str(located.index),
            "new_data": new.bundle.describe(),
            "evaluation": class_accuracies(result.model, meta, new, device),
            "bytes_kept": {
                "index": index_bytes,
                "replay_buffer": 0 if replay is None else stored_bytes(replay),
                "replay_fraction": None if replay is None else config.replay_fraction,
            },
        }
        with staging_dir(config.out, config=settings.to_dict(), seed=config.seed) as staging:
            written = write_increment(staging, result, located, new, settings, device)
            report = IncrementReport(**learned, **asdict(written), model=meta.timm_name)
            atomic_write_json(staging / "report.json", report_json(report))  # out is still None: not in the file
    return replace(report, out=str(config.out))


__all__ = ["IncrementConfig", "IncrementReport", "run"]
