"""The device bundle, host side: what ``compress`` and ``increment`` add to their output folder so that a device can
run and grow it without PyTorch.

The format itself (``bundle.json``, ``preprocess.json``, ``class_stats.safetensors``, their hashes and bindings) is
read and written by the torch-free package ``edgeslice_device`` (``device/`` in this repository): one implementation
for host and device. This module computes, with torch, what only the host can: the preprocessing a device must
repeat, and the class statistics over the shipped model's classifier inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..data import calibration_indices
from ..models import ModelMeta, preprocess_of
from ..train import iterate_batches

#: Images per class the shipped class statistics are computed on (the training split, seeded).
STATS_PER_CLASS = 500


def device_preprocess(meta: ModelMeta) -> dict[str, Any]:
    """How a device reads an image exactly as the host's eval transform does (timm's ``create_transform``):
    shorter side resized to ``floor(size / crop_pct)``, centre crop to ``size``, /255, then mean/std."""
    cfg = preprocess_of(meta)
    size = int(meta.input_size)
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    interpolation = str(cfg.get("interpolation") or "bilinear")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bilinear"
    return {
        "channels": int(meta.in_chans),
        "color": "L" if meta.in_chans == 1 else "RGB",
        "input_size": [size, size],
        "resize": int(math.floor(size / crop_pct)),
        "crop": [size, size],
        "interpolation": interpolation,
        "mean": [float(v) for v in meta.mean],
        "std": [float(v) for v in meta.std],
    }


def classifier_names(model: nn.Module) -> dict[str, str]:
    """State-dict names of the Linear classifier's weight and bias (what a device rewrites)."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) and isinstance(getattr(head, "linear", None), nn.Linear):
        head = head.linear  # a routed head wraps the Linear rows
    name = next(n for n, m in model.named_modules() if m is head)
    return {"weight": f"{name}.weight", "bias": f"{name}.bias"}


@torch.no_grad()
def classifier_inputs(
    model: nn.Module,
    dataset: Dataset,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float64 features the classifier reads, and (n,) labels, over ``dataset`` in order."""
    from ..torchutil import pre_logits

    model.eval().to(device)
    feats, labels = [], []
    for x, y in iterate_batches(dataset, batch_size):
        feats.append(pre_logits(model, prepare(x.to(device))).double().cpu())
        labels.append(y)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def class_statistics(
    model: nn.Module,
    dataset: Dataset,
    classes: Sequence[str],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    seed: int,
    device: torch.device,
    per_class: int = STATS_PER_CLASS,
    labels: Sequence[int] | None = None,
):
    """The device's class statistics (``edgeslice_device.stats.ClassStatistics``) over a seeded per-class sample.

    Args:
        labels: which labels of ``dataset`` are ``classes`` (in order); default ``range(len(classes))``.
    """
    from edgeslice_device.stats import ClassStatistics

    sample = Subset(dataset, calibration_indices(dataset, per_class, seed))
    feats, y = classifier_inputs(model, sample, prepare, device)
    wanted = list(range(len(classes))) if labels is None else list(labels)
    keep = np.isin(y, wanted)
    lut = {lab: i for i, lab in enumerate(wanted)}
    return ClassStatistics.from_features(feats[keep], np.array([lut[int(v)] for v in y[keep]]), list(classes))


def write_bundle(
    folder: Path,
    model: nn.Module,
    meta: ModelMeta,
    stats,
    *,
    history: list[dict[str, Any]],
    head: str = "trained",
) -> None:
    """Write ``preprocess.json``, ``class_stats.safetensors`` and ``bundle.json`` into ``folder``, binding the files
    already there (``model.onnx``, ``model.safetensors``, ``model.json``, ``critical_index``)."""
    from edgeslice_device.bundle import write_bundle_meta
    from edgeslice_device.errors import BundleError

    from ..errors import EdgesliceError

    try:
        _write(write_bundle_meta, folder, model, meta, stats, history, head)
    except BundleError as e:
        raise EdgesliceError(str(e)) from e


def _write(write_bundle_meta, folder, model, meta, stats, history, head) -> None:
    write_bundle_meta(
        folder,
        classes=list(meta.classes),
        preprocess=device_preprocess(meta),
        stats=stats,
        classifier=classifier_names(model),
        fingerprint=meta.fingerprint,
        history=history,
        head=head,
        feature_dim=int(meta_feature_dim(model)),
    )


def meta_feature_dim(model: nn.Module) -> int:
    """Width of the classifier's input (a routed head keeps the Linear it wraps)."""
    head = model.get_classifier()
    linear = head if isinstance(head, nn.Linear) else getattr(head, "linear", None)
    if isinstance(linear, nn.Linear):
        return linear.in_features
    return int(head.in_features)


#: Fewest images of a new class an increment accepts (host and device alike).
MIN_IMAGES = 5


def bundle_inputs(bundle: Path | None, checkpoint: Path | None, index: Path | None) -> tuple[Path, Path]:
    """The checkpoint and index an increment reads: a bundle folder's own, or the ones given.

    Raises:
        EdgesliceError: neither a bundle nor both files were given, or the bundle lacks them.
    """
    from ..errors import EdgesliceError

    if bundle is not None:
        if checkpoint is not None or index is not None:
            raise EdgesliceError("give a BUNDLE folder or --checkpoint and --index, not both")
        if not bundle.is_dir():
            raise EdgesliceError(f"bundle {bundle} is not a folder")
        checkpoint, index = bundle / "model.safetensors", bundle / "critical_index"
        for p in (checkpoint, index):
            if not p.is_file():
                raise EdgesliceError(f"{bundle} is not an edgeslice output folder: {p.name} is missing")
        return checkpoint, index
    if checkpoint is None or index is None:
        raise EdgesliceError("give a BUNDLE folder (what compress wrote), or --checkpoint and --index")
    return checkpoint, index


def read_bundle_stats(folder: Path):
    """The bundle's class statistics when ``folder`` is a device bundle (``bundle.json`` present), else None.

    Raises:
        EdgesliceError: the bundle is there but does not verify (hashes, bindings).
    """
    from edgeslice_device.bundle import BundleError, open_bundle

    from ..errors import EdgesliceError

    if not (folder / "bundle.json").is_file():
        return None
    try:
        return open_bundle(folder).stats
    except BundleError as e:
        raise EdgesliceError(str(e)) from e


def index_stats_from_bundle(stats, feature_dim: int):
    """The host index's class statistics (``edgeslice.ondevice.classil.ClassStats``, not isolated) from a bundle's
    exact ones — what ``edgeslice-device add-class`` keeps up to date when it drops the index's own."""
    from ..classstats import stats_from_moments

    dims = torch.zeros(feature_dim, dtype=torch.bool)
    dims[torch.from_numpy(np.asarray(stats.dims, dtype=np.int64))] = True
    return stats_from_moments(
        list(stats.classes),
        dims,
        torch.from_numpy(np.asarray(stats.counts)).round().to(torch.int64),
        torch.from_numpy(np.asarray(stats.means)),
        torch.from_numpy(np.asarray(stats.scatter)),
    )


def check_new_class_sizes(classes: Sequence[str], counts: Sequence[int], minimum: int = MIN_IMAGES) -> None:
    """Refuse a new class with fewer than ``minimum`` images (train and held-out together)."""
    from ..errors import EdgesliceError

    few = [f"{c} ({n})" for c, n in zip(classes, counts, strict=True) if n < minimum]
    if few:
        raise EdgesliceError(f"new class(es) with fewer than {minimum} images: {', '.join(few)}")


def grown_statistics(old, model: nn.Module, dims: torch.Tensor | None, new_data: Dataset, new_classes, prepare, *,
                     first_label: int, seed: int, device: torch.device):  # fmt: skip
    """The bundle statistics after a host increment: the old classes' restricted to the classifier inputs that
    stayed frozen (``dims``, a bool mask; marginalising a Gaussian is exact), plus the new classes' over the grown
    model's features. None when no input stayed frozen (old statistics cannot be kept without old data)."""
    if old is None or dims is None or not bool(dims.any()):
        return None
    keep = np.intersect1d(old.dims, dims.nonzero().flatten().cpu().numpy())
    if len(keep) == 0:
        return None
    labels = list(range(first_label, first_label + len(new_classes)))
    new = class_statistics(model, new_data, new_classes, prepare, seed=seed, device=device, labels=labels)
    return old.restrict(keep).merge(new.restrict(keep))
