"""Streamed images: :class:`ImageFolderStream` keeps only the file list in memory; images are decoded per batch by
``DataLoader`` workers with timm's transforms (the deterministic eval transform for calibration and evaluation,
a train-time augmentation for training, :func:`augment_recipe`), so memory does not grow with the number of images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from .bundle import DataError

__all__ = [
    "AUGMENT_MODES",
    "AUGMENT_RECIPES",
    "SMALL_IMAGE_MAX",
    "ImageFolderStream",
    "augment_recipe",
    "default_workers",
    "open_image",
    "training_view",
]


def default_workers() -> int:
    """Image-decoding worker processes: the usable CPUs minus one for the training process, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


#: Train-time augmentation recipes of streamed folders (:class:`ImageFolderStream`).
AUGMENT_RECIPES = ("timm", "small")
#: ``--augment`` values: ``auto`` picks a recipe by input size (:func:`augment_recipe`); ``none`` switches it off.
AUGMENT_MODES = ("auto", *AUGMENT_RECIPES, "none")
#: Inputs up to this side (px) train without augmentation under ``auto``; larger ones with timm's recipe. Measured
#: (README, "Defaults from the data"): Fashion-MNIST at 28 px, 1,000 images per class, no augmentation beats the
#: padded-crop + flip recipe by 20.8 / 8.8 / 1.8 points after 3 / 5 / 15 epochs, and ties it at 64 px (+0.3).
SMALL_IMAGE_MAX = 64


def augment_recipe(mode: str | bool, image_size: int) -> str | None:
    """The recipe ``mode`` means at ``image_size``: ``auto`` (or True) is None (no augmentation) up to
    :data:`SMALL_IMAGE_MAX` px and ``timm`` above; ``none`` (or False) is None; ``timm`` and ``small`` are themselves.

    Example:
        >>> augment_recipe("auto", 28), augment_recipe("auto", 224), augment_recipe("small", 28)
        (None, 'timm', 'small')
    """
    if mode is False or mode == "none":
        return None
    if mode is True or mode == "auto":
        return None if int(image_size) <= SMALL_IMAGE_MAX else "timm"
    if mode not in AUGMENT_RECIPES:
        raise ValueError(f"unknown augment mode {mode!r}; valid: {', '.join(AUGMENT_MODES)}")
    return str(mode)


def training_view(dataset: Dataset, augment: str | bool = "auto") -> Dataset:
    """``dataset`` as training sees it: streamed folders switch to a train-time transform
    (:func:`augment_recipe` of ``augment`` at their input size; ``none``/False keeps the eval transform).

    Subsets keep their indices; in-memory datasets come back unchanged (they have no augmentation).
    """
    if augment is False or augment == "none":
        return dataset
    if isinstance(dataset, Subset):
        inner = training_view(dataset.dataset, augment)
        return dataset if inner is dataset.dataset else Subset(inner, dataset.indices)
    if isinstance(dataset, ImageFolderStream):
        recipe = augment_recipe(augment, int(dataset.preprocess["input_size"][-1]))
        return dataset.augmented(recipe) if recipe else dataset
    return dataset


def open_image(path: str | Path, gray: bool):
    """Decode one image as an 8-bit PIL image in ``L`` (``gray``) or ``RGB``, upright (EXIF orientation applied).

    16/32-bit grayscale is scaled to 8 bits (PIL would clip at 255); palette images with transparency go through
    RGBA so the palette is applied; mixed sizes are left to the transforms.

    Raises:
        DataError: the file is not a readable image (the message names it).
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.rint(arr * (255.0 / max(float(arr.max()), 255.0))).astype(np.uint8))
            elif im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            im = im.convert("L" if gray else "RGB")
            im.load()
            return im
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"unreadable image {path}: {' '.join(str(e).split())}") from e


class ImageFolderStream(Dataset):
    """Images of an ImageFolder tree, decoded on access; items are ``(uint8 (C, H, W), int label)``.

    Only the file list and labels are in memory. ``transform`` is timm's eval transform (deterministic: resize,
    centre crop) unless this is the :meth:`augmented` view; normalisation is left to the model's ``prepare``.

    Args:
        files: image paths.
        targets: int64 labels, one per file.
        gray: decode as one channel (``L``) instead of RGB.
        preprocess: timm data config (``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``).
        workers: ``DataLoader`` worker processes for batches of this dataset (0 decodes in the calling process).
        train: a train-time transform, by ``recipe``.
        recipe: ``timm``: timm's train transform (random resized crop, flip, colour jitter), for photo-sized
            inputs; ``small``: the CIFAR recipe (the eval resize and crop, then a random crop from a zero border of
            an eighth of the side, and a horizontal flip), for small images that a resized crop down to 8% of the
            area would destroy. See :func:`augment_recipe`.
    """

    def __init__(
        self,
        files: Sequence[str],
        targets: torch.Tensor,
        *,
        gray: bool,
        preprocess: dict,
        workers: int,
        train: bool = False,
        recipe: str = "timm",
    ) -> None:
        from timm.data import create_transform

        if recipe not in AUGMENT_RECIPES:
            raise ValueError(f"unknown augmentation recipe {recipe!r}; valid: {', '.join(AUGMENT_RECIPES)}")
        self.files = list(files)
        self.targets = targets.to(torch.int64)
        self.gray, self.preprocess, self.num_workers, self.train = gray, dict(preprocess), int(workers), train
        self.recipe = recipe
        common = dict(
            input_size=self.preprocess["input_size"],
            interpolation=self.preprocess.get("interpolation", "bilinear"),
            crop_pct=self.preprocess.get("crop_pct"),
            crop_mode=self.preprocess.get("crop_mode"),
            normalize=False,  # uint8 tensors out: workers send a quarter of the bytes; prepare() normalises
        )
        if train and recipe == "small":
            from torchvision import transforms as T

            ev = create_transform(is_training=False, **common)  # Resize, CenterCrop, to uint8 tensor
            side = int(self.preprocess["input_size"][-1])
            jitter = [T.RandomCrop(side, padding=max(1, side // 8)), T.RandomHorizontalFlip()]
            self.transform = T.Compose([*ev.transforms[:-1], *jitter, ev.transforms[-1]])
        else:
            self.transform = create_transform(is_training=train, **common)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.transform(open_image(self.files[i], self.gray))
        return x, int(self.targets[i])

    def subset(self, indices: torch.Tensor) -> ImageFolderStream:
        """The items at ``indices``, as a stream of the same kind."""
        return ImageFolderStream(
            [self.files[i] for i in indices.tolist()],
            self.targets[indices],
            gray=self.gray,
            preprocess=self.preprocess,
            workers=self.num_workers,
            train=self.train,
            recipe=self.recipe,
        )

    def augmented(self, recipe: str = "timm") -> ImageFolderStream:
        """The same files through a train-time transform (``recipe``: ``timm`` or ``small``)."""
        return ImageFolderStream(
            self.files, self.targets, gray=self.gray, preprocess=self.preprocess, workers=self.num_workers, train=True,
            recipe=recipe,
        )  # fmt: skip

    def __repr__(self) -> str:
        kind = f"train={self.train}" + (f", recipe={self.recipe}" if self.train else "")
        return f"ImageFolderStream(n={len(self)}, input_size={self.preprocess['input_size']}, {kind})"
