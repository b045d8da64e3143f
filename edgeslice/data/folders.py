"""ImageFolder trees as data: :func:`load_folder` checks the layout (``DIR/train/<class>/*.png`` with an optional
``val/`` or ``test/``, or class folders straight under ``DIR``), reads the image headers once for the channels and
the default size (:func:`size_of_images`), and returns a :class:`DataBundle` of streamed splits
(:class:`edgeslice.data.ImageFolderStream`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from .bundle import DataBundle, DataError
from .sampling import stratified_split
from .stream import ImageFolderStream, default_workers

__all__ = ["IMAGE_EXTENSIONS", "load_folder", "size_of_images"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
_GRAY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N")
_MAX_DEFAULT_SIZE = 224
#: timm's ImageNet normalisation, for folders read without a model's data config.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

Items = list[tuple[Path, int]]


def size_of_images(sides: Sequence[int]) -> int:
    """The input size a folder's images suggest: the median of their shorter sides (the lower median: a side one of
    them has), at most 224 (photos are read at timm's ImageNet size, not at camera resolution). timm's CNNs take any
    side, so it is not rounded: 28-px images are read at 28 px.

    Example:
        >>> size_of_images([28, 28, 30]), size_of_images([3000, 4000]), size_of_images([10, 64, 65, 70])
        (28, 224, 64)
    """
    if not sides:
        raise ValueError("no image sizes")
    return int(min(statistics.median_low(sides), _MAX_DEFAULT_SIZE))


def load_folder(
    path: Path,
    *,
    image_size: int | None,
    seed: int,
    preprocess: dict | None = None,
    workers: int | None = None,
    min_classes: int = 2,
    size_from_images: bool = False,
) -> DataBundle:
    """Opens an ImageFolder tree for streaming (the folder branch of :func:`edgeslice.data.load_data`, whose
    arguments these are).

    Raises:
        DataError: the layout is wrong, a class has no images, or an image is unreadable (the message names it).
    """
    path = path.resolve()
    if not path.is_dir():
        raise DataError(f"not a data folder: {path}")
    train_root, held_out, classes, train_items, test_items = _layout(path, min_classes)
    gray, sides = _scan_headers(train_items + test_items)
    in_chans = 1 if gray else 3
    if image_size is not None:
        size, size_source = image_size, "given"
    elif preprocess is not None and not size_from_images:
        size, size_source = int(preprocess["input_size"][-1]), "model"
    else:
        size, size_source = size_of_images(sides[: len(train_items)]), "images"
    cfg, mean, std = _data_config(preprocess, in_chans, size)
    n_workers = default_workers() if workers is None else int(workers)

    def stream(items: Items) -> ImageFolderStream:
        targets = torch.tensor([y for _, y in items], dtype=torch.int64)
        return ImageFolderStream([str(p) for p, _ in items], targets, gray=gray, preprocess=cfg, workers=n_workers)

    train = stream(train_items)
    if held_out is not None:
        test, source = stream(test_items), f"ImageFolder: {path} (train/ + {held_out.name}/)"
    else:
        tr, te = stratified_split(train.targets, seed)
        train, test = train.subset(tr), train.subset(te)
        source = f"ImageFolder: {path} ({'train/' if train_root != path else 'class folders'} split 80/20, seed {seed})"
    crop = f"crop_pct {cfg.get('crop_pct')}, {cfg.get('interpolation')}"
    source = f"{source}, streamed ({crop})"
    return DataBundle(str(path), train, test, classes, in_chans, size, mean, std, source, size_source)


def _list_images(split_dir: Path) -> dict[str, list[Path]]:
    """Image files of each class folder of ``split_dir`` (hidden folders skipped), sorted by name."""
    return {
        d.name: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for d in sorted(split_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def _layout(path: Path, min_classes: int) -> tuple[Path, Path | None, list[str], Items, Items]:
    """(train root, held-out split or None, class names, train items, held-out items) of the tree at ``path``."""
    train_root = path / "train"
    splits = [path / s for s in ("val", "test") if (path / s).is_dir()]
    if not train_root.is_dir():
        # Class folders straight under the path (NEW/<class>/*.png: what a user has of a new thing) are the train
        # split, held-out images split off it; a val/ or test/ folder without train/ is a layout mistake.
        direct = {} if splits else _list_images(path)
        if not any(direct.values()):
            raise DataError(f"no train/ folder in {path} (expected {path}/train/<class>/*.png or {path}/<class>/*.png)")
        train_root, splits = path, []
    train_files = _list_images(train_root)
    classes = sorted(train_files)
    held_out = splits[0] if splits else None
    test_files = _list_images(held_out) if held_out is not None else {}
    extra = sorted(set(test_files) - set(classes))
    if extra:
        raise DataError(f"{held_out} has classes missing from train/: {', '.join(extra)}")
    train_items = [(p, classes.index(c)) for c in classes for p in train_files[c]]
    test_items = [(p, classes.index(c)) for c in sorted(test_files) for p in test_files[c]]
    if not train_items:
        raise DataError(f"no images in {train_root} (expected {path}/train/<class>/*.png)")
    if held_out is not None and not test_items:
        raise DataError(f"no images in {held_out} (expected {held_out}/<class>/*.png, or remove it to split train/)")
    if len(classes) < min_classes:
        need = "slicing needs at least 2 classes" if min_classes == 2 else f"at least {min_classes} are needed"
        raise DataError(f"{train_root} has {len(classes)} class folder(s): {need}")
    empty = [c for c in classes if not train_files[c]]
    if empty:
        # Calibration samples the train split per class: a class without images would have no neurons to find.
        raise DataError(f"class {empty[0]!r} has no images in {train_root} (calibration needs every class)")
    return train_root, held_out, classes, train_items, test_items


def _scan_headers(items: Items) -> tuple[bool, list[int]]:
    """(all grayscale, shorter side of each image) from one pass over the headers only (PIL opens lazily), which
    also finds an unreadable file before training does."""
    from PIL import Image

    gray, sides = True, []
    for p, _ in items:
        try:
            with Image.open(p) as im:
                gray = gray and im.mode in _GRAY_MODES
                sides.append(min(im.size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"unreadable image {p}: {' '.join(str(e).split())}") from e
    return gray, sides


def _data_config(preprocess: dict | None, in_chans: int, size: int) -> tuple[dict, tuple, tuple]:
    """(timm data config at ``size``, mean, std) for reading the folder: the model's ``preprocess`` or timm's
    defaults, its mean/std averaged over channels for a grayscale folder."""
    if preprocess is None:
        from timm.data import DEFAULT_CROP_PCT

        # timm's defaults (bicubic, crop_pct 0.875, ImageNet mean/std): the data config of every CNN edgeslice
        # names, so a command that does not know the model reads a folder as compress and train did.
        preprocess = {"interpolation": "bicubic", "crop_pct": DEFAULT_CROP_PCT, "crop_mode": "center"}
    cfg = dict(preprocess)
    cfg["input_size"] = (in_chans, size, size)
    mean = tuple(cfg.get("mean") or _IMAGENET_MEAN)
    std = tuple(cfg.get("std") or _IMAGENET_STD)
    if len(mean) != in_chans:  # a 3-channel cfg on a grayscale folder: the channel average, as timm adapts conv weights
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return cfg, mean, std
