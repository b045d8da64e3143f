"""One entry point for every input: :func:`load_data` opens a registered data source by name, or an ImageFolder tree
by path.

Example:
    >>> bundle = load_data("digits", seed=0)
    >>> x, y = bundle.train[0]
    >>> x.shape, bundle.in_chans, len(bundle.classes)
    (torch.Size([1, 32, 32]), 1, 10)
"""

from __future__ import annotations

import os
from pathlib import Path

from .bundle import DataBundle, DataError
from .folders import load_folder
from .registry import get_dataset, list_datasets

__all__ = ["load_data"]


def load_data(
    name_or_path: str,
    *,
    image_size: int | None = None,
    seed: int = 0,
    download: bool = False,
    root: str | Path | None = None,
    preprocess: dict | None = None,
    workers: int | None = None,
    min_classes: int = 2,
    size_from_images: bool = False,
) -> DataBundle:
    """Loads a named dataset into memory, or opens an ImageFolder tree for streaming.

    Args:
        name_or_path: A name from ``list_datasets()`` (case-insensitive; "fmnist" is an alias) or a folder
            laid out as ``DIR/train/<class>/*.png`` with optional ``DIR/val/`` (or ``DIR/test/``).
        image_size: Resize every split once to this square side; None keeps the dataset's default (folders:
            ``preprocess``'s input size, else the images' own, :func:`size_of_images`).
        seed: Seed for the train/test split of datasets that have none (digits, folders without val/).
        download: Let torchvision download missing datasets.
        root: Torchvision data root; defaults to ``$EDGESLICE_DATA`` or ``~/.cache/edgeslice/data``.
        preprocess: Folders only: timm's data config of the model (``edgeslice.models.data_config``: input
            size, interpolation, crop, mean/std); None uses timm's defaults with ImageNet mean/std.
        workers: Folders only: ``DataLoader`` worker processes that decode images (None: :func:`default_workers`).
        min_classes: Folders only: fewest class folders accepted (2 for slicing; 1 for a class-incremental step).
        size_from_images: Folders only, with ``image_size`` None: the images' own size (:func:`size_of_images`)
            instead of ``preprocess``'s (a model trained from scratch reads the data as it is).

    Returns:
        The loaded ``DataBundle``.

    Raises:
        DataError: The dataset is unknown, missing or unreadable.

    Example:
        >>> load_data("digits", image_size=16).describe()["image_size"]
        16
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    try:
        loader = get_dataset(name_or_path)
    except ValueError:  # not a registered name: a folder, or a DataError below
        loader = None
    if loader is not None:
        return loader(image_size=image_size, seed=seed, download=download, root=_data_root(root))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return load_folder(
            path, image_size=image_size, seed=seed, preprocess=preprocess, workers=workers, min_classes=min_classes,
            size_from_images=size_from_images,
        )  # fmt: skip
    if os.sep in name_or_path or "/" in name_or_path or name_or_path.startswith((".", "~")):
        raise DataError(f"data folder not found: {name_or_path}")
    raise DataError(
        f"unknown dataset '{name_or_path}': use one of {', '.join(list_datasets())}, or a folder with train/<class>/"
    )


def _data_root(root: str | Path | None) -> Path:
    """The data directory: ``root``, else ``$EDGESLICE_DATA``, else ``~/.cache/edgeslice/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("EDGESLICE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeslice" / "data"
