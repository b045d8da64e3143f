"""The model and data a pipeline starts from: the cached baseline, the normalisation, and the checks that refuse a
checkpoint or a data set that cannot give a meaningful run — before any work starts.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..data import DataBundle, DataError, ImageFolderStream, augment_recipe, load_data, make_prepare, targets_of
from ..errors import ModelError
from ..models import ModelMeta, create_model, load_checkpoint, preprocess_of, resolve_model_name, save_checkpoint
from ..train import TrainOptions, evaluate, train_model
from .config import CompressConfig


def edgeslice_home() -> Path:
    """``$EDGESLICE_HOME`` or ``~/.cache/edgeslice``: where trained baselines are cached."""
    return Path(os.environ.get("EDGESLICE_HOME") or Path.home() / ".cache" / "edgeslice")


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


@dataclass(frozen=True)
class BaselineRecipe:
    """How a baseline is trained, and so what its cache key names: the training options, the seed and where the
    initial weights come from. ``train_baseline`` and ``cached_baseline`` take one (or its fields as keywords)."""

    epochs: float
    seed: int
    batch_size: int = 128
    lr: float = 3e-3
    pretrained: bool = False
    pretrained_file: str | None = None
    use_ema: bool = False
    augment: str | bool = "auto"
    amp: bool = False

    def train_options(self) -> TrainOptions:
        return TrainOptions(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed,
                            augment=self.augment, amp=self.amp)  # fmt: skip


def _recipe(recipe: BaselineRecipe | None, settings: dict[str, Any]) -> BaselineRecipe:
    if recipe is not None and settings:
        raise TypeError(f"give a BaselineRecipe or its fields, not both ({', '.join(settings)})")
    return recipe if recipe is not None else BaselineRecipe(**settings)


def train_baseline(
    model_name: str, bundle: DataBundle, recipe: BaselineRecipe | None = None, *, device: torch.device, **settings: Any
) -> tuple[nn.Module, ModelMeta]:
    """Train a model on ``bundle`` (from scratch, or from timm's pretrained weights) and measure its test accuracy.

    Args:
        model_name: a timm name or alias.
        bundle: the data.
        recipe: how to train (or its fields as keywords: ``epochs=``, ``seed=``, …).
        device: where torch runs.

    Raises:
        DataError: ``bundle`` has fewer than 2 classes or a class without training images.
    """
    r = _recipe(recipe, settings)
    check_data(bundle)
    timm_name = resolve_model_name(model_name)
    torch.manual_seed(r.seed)
    model = create_model(
        timm_name,
        num_classes=len(bundle.classes),
        in_chans=bundle.in_chans,
        input_size=bundle.image_size,
        pretrained=r.pretrained,
        pretrained_file=r.pretrained_file,
        use_ema=r.use_ema,
    ).to(device)
    prepare = make_prepare(bundle)
    t0 = time.perf_counter()
    description = f"train {timm_name}"
    stats = train_model(model, bundle.train, r.train_options(), prepare=prepare, device=device, description=description)
    acc = evaluate(model, bundle.test, prepare=prepare, device=device, description="test accuracy")
    meta = meta_for(
        timm_name,
        bundle,
        data=bundle.describe(),
        seed=r.seed,
        epochs=r.epochs,
        test_accuracy=acc,
        train_seconds=round(time.perf_counter() - t0, 2),
        final_loss=stats["final_loss"],
    )
    if r.pretrained or r.pretrained_file:
        meta.info["weights"] = weights_source(r.pretrained, r.pretrained_file)
    train = bundle.train.dataset if isinstance(bundle.train, Subset) else bundle.train
    if isinstance(train, ImageFolderStream):
        meta.info["augment"] = augment_recipe(r.augment, bundle.image_size) or "none"
    return model, meta


def weights_source(pretrained: bool, pretrained_file: str | None) -> str:
    """Where a baseline's initial weights come from: ``scratch``, ``timm-hub`` or ``file:<sha256[:16]>``."""
    if pretrained_file:
        digest = hashlib.sha256(Path(pretrained_file).read_bytes()).hexdigest()[:16]
        return f"file:{digest}"
    return "timm-hub" if pretrained else "scratch"


def cached_baseline(
    model_name: str, bundle: DataBundle, recipe: BaselineRecipe | None = None, *, device: torch.device, **settings: Any
) -> tuple[nn.Module, ModelMeta, Path, bool]:
    """The baseline for (model, data, seed, epochs, batch size, lr): loaded from the cache, or trained and cached.

    The key also names the initial weights (timm hub, or a file by content hash) and, for streamed folders,
    ``noaug`` without augmentation, ``aug-small`` with the small-image recipe (``edgeslice.data.augment_recipe``)
    and ``amp`` with mixed precision; a timm-augmented fp32 baseline's key is unchanged.

    Args:
        model_name: a timm name or alias.
        bundle: the data.
        recipe: how to train (or its fields as keywords: ``epochs=``, ``seed=``, …).
        device: where torch runs.

    Returns:
        (model on ``device``, meta, checkpoint path, whether it came from the cache).
    """
    r = _recipe(recipe, settings)
    timm_name = resolve_model_name(model_name)
    key = f"{timm_name}-{_data_key(bundle)}-seed{r.seed}-ep{r.epochs:g}-bs{r.batch_size}-lr{r.lr:g}"
    path = edgeslice_home() / "baselines" / (key + _baseline_key_suffix(bundle, r)) / "model.safetensors"
    if path.is_file():
        try:
            model, meta = load_checkpoint(path, expect_model=timm_name)
            return model.to(device), meta, path, True
        except ModelError:
            pass  # a corrupt cache entry is retrained and overwritten
    model, meta = train_baseline(model_name, bundle, r, device=device)
    save_checkpoint(model, meta, path)
    return model, meta, path, False


def _baseline_key_suffix(bundle: DataBundle, r: BaselineRecipe) -> str:
    """The part of a baseline's cache key beyond today's: empty for a from-scratch fp32 baseline."""

    parts = []
    source = weights_source(r.pretrained, r.pretrained_file)
    if source != "scratch":
        parts.append(source.replace(":", "-") + ("-ema" if r.use_ema else ""))
    train = bundle.train.dataset if isinstance(bundle.train, Subset) else bundle.train
    if isinstance(train, ImageFolderStream):
        recipe = augment_recipe(r.augment, bundle.image_size)
        if recipe is None:
            parts.append("noaug")
        elif recipe == "small":
            parts.append("aug-small")
    if r.amp:
        parts.append("amp")
    return "".join(f"-{p}" for p in parts)


def load_checkpoint_data(
    meta: ModelMeta,
    data: str,
    *,
    seed: int,
    download: bool = False,
    workers: int | None = None,
    min_classes: int = 2,
) -> DataBundle:
    """``data`` read as the checkpoint's model reads images: at its input size, through its timm data config
    (:func:`~edgeslice.models.preprocess_of`), so every command that takes a checkpoint opens a folder exactly as
    the train and compress runs that made it did."""
    return load_data(
        data, image_size=meta.input_size, seed=seed, download=download, workers=workers, preprocess=preprocess_of(meta),
        min_classes=min_classes,
    )  # fmt: skip


def load_compress_data(cfg: CompressConfig, timm_name: str) -> DataBundle:
    """The data of a compress run, preprocessed for the model.

    Folders stream through timm's data config of ``timm_name`` (input size, crop, interpolation, mean/std).
    Built-in sets keep their own size and statistics, except: a plain state dict reads them at its pretrained
    cfg's input size, and pretrained weights (or a plain state dict) bring their cfg's mean/std. ``cfg.mean``,
    ``cfg.std`` and ``cfg.image_size`` override all of these.
    """
    from ..data import with_normalization
    from ..models import TORCH_SUFFIXES, data_config, has_sidecar

    preprocess = data_config(timm_name, image_size=cfg.image_size, mean=cfg.mean, std=cfg.std)
    plain = bool(cfg.checkpoint) and not has_sidecar(cfg.checkpoint)
    plain = plain and Path(cfg.checkpoint).name.lower().endswith((".safetensors", *TORCH_SUFFIXES))
    image_size = cfg.image_size or (int(preprocess["input_size"][-1]) if plain else None)
    # Trained from scratch, a model reads a folder at its images' own size (timm's ImageNet size would upscale
    # 28-px images 8×, for worse accuracy at 13× the time); pretrained weights and checkpoints keep theirs.
    from_scratch = not (cfg.checkpoint or cfg.pretrained or cfg.pretrained_file)
    bundle = load_data(
        cfg.data,
        image_size=image_size,
        seed=cfg.seed,
        download=cfg.download,
        preprocess=preprocess,
        workers=cfg.workers,
        size_from_images=from_scratch,
    )
    if bundle.size_source == "images":
        timm_side = int(preprocess["input_size"][-1])
        note = f"input size {bundle.image_size} px: the median side of the images (training from scratch"
        if timm_side != bundle.image_size:
            note += f"; --image-size to choose, --pretrained reads {timm_side} px"
        note += ")"
        sys.stderr.write(f"note: {note}\n")
    if cfg.pretrained or cfg.pretrained_file or plain:
        bundle = with_normalization(bundle, preprocess["mean"], preprocess["std"])
    elif cfg.mean is not None or cfg.std is not None:
        bundle = with_normalization(bundle, cfg.mean, cfg.std)
    return bundle


def _preview(names: list[str], n: int = 4) -> str:
    shown = ", ".join(names[:n])
    return shown + (", …" if len(names) > n else "")


def check_against_data(meta: ModelMeta, bundle: DataBundle) -> None:
    """Refuse a checkpoint whose classes (names and count), input channels or input size differ from the data's.

    Raises:
        DataError: the data cannot be sliced at all (:func:`check_data`).
        ModelError: one line saying what differs, and how to re-head the model when that is what the user wants.
    """
    check_data(bundle)
    rehead = (
        f"to re-head it for this data, train from its weights: edgeslice train {meta.timm_name} --data … "
        "--pretrained-file CHECKPOINT"
    )
    if len(meta.classes) != len(bundle.classes):
        raise ModelError(
            f"checkpoint has {len(meta.classes)} classes, the data {bundle.name!r} has {len(bundle.classes)}; {rehead}"
        )
    if meta.info.get("plain_state_dict"):  # a plain state dict's class names are placeholders: take the data's
        meta.classes = list(bundle.classes)
    if list(meta.classes) != list(bundle.classes):
        raise ModelError(
            f"checkpoint classes ({_preview(list(meta.classes))}) differ from the data's "
            f"({_preview(list(bundle.classes))}); {rehead}"
        )
    if meta.in_chans != bundle.in_chans:
        raise ModelError(f"checkpoint takes {meta.in_chans}-channel images, the data has {bundle.in_chans} channels")
    if meta.input_size != bundle.image_size:
        raise ModelError(
            f"checkpoint takes {meta.input_size}-px inputs, the data is loaded at {bundle.image_size} px "
            f"(drop --image-size, or pass --image-size {meta.input_size})"
        )


def check_data(bundle: DataBundle) -> None:
    """Refuse data that cannot be sliced: fewer than 2 classes, or a class without training (calibration) images.

    Raises:
        DataError: naming the problem (and the first empty class).
    """
    if len(bundle.classes) < 2:
        raise DataError(
            f"data {bundle.name!r} has {len(bundle.classes)} class(es); slicing and training need at least 2"
        )
    counts = torch.bincount(targets_of(bundle.train).long(), minlength=len(bundle.classes))
    empty = [bundle.classes[i] for i in range(len(bundle.classes)) if int(counts[i]) == 0]
    if empty:
        raise DataError(f"class {empty[0]!r} of {bundle.name!r} has no training images (nothing to calibrate on)")


#: A baseline within this share of the way from chance to perfect accuracy is reported as "near chance".
NEAR_CHANCE_MARGIN = 0.1


def near_chance_warning(accuracy: float, num_classes: int) -> str | None:
    """A warning when ``accuracy`` (percent) is within :data:`NEAR_CHANCE_MARGIN` of chance (100 / classes)."""
    chance = 100.0 / max(1, num_classes)
    if accuracy <= chance + NEAR_CHANCE_MARGIN * (100.0 - chance):
        return (
            f"the baseline's test accuracy {accuracy:.2f}% is near chance ({chance:.2f}% for {num_classes} classes): "
            "slicing a model that has not learned its classes gives meaningless critical neurons"
        )
    return None
