"""Datasets for edgeslice: Fashion-MNIST, digits, MNIST, CIFAR-10 and ImageFolder trees, plus class-split helpers.

The built-in sets (:mod:`.builtin`) are held in memory as uint8 so that ``__getitem__`` is a slice and a divide, never
a PIL decode. ImageFolder trees (:mod:`.folders`) are streamed instead (:class:`ImageFolderStream`, :mod:`.stream`):
only the file list is in memory, images are decoded per batch by ``DataLoader`` workers with timm's transforms.
A new source registers itself with :func:`register_dataset` (:mod:`.registry`).

Example:
    >>> bundle = load_data("digits", seed=0)
    >>> x, y = bundle.train[0]
    >>> x.shape, bundle.in_chans, len(bundle.classes)
    (torch.Size([1, 32, 32]), 1, 10)
"""

from __future__ import annotations

from .builtin import DEBIAN_FASHION_MNIST_DIR
from .bundle import ArrayDataset, DataBundle, DataError
from .folders import size_of_images
from .load import load_data
from .normalize import make_prepare, normalize, with_normalization
from .registry import get_dataset, list_datasets, register_dataset
from .sampling import calibration_indices, class_subset, relabel, targets_of, uint8_images
from .stream import AUGMENT_MODES, ImageFolderStream, augment_recipe, default_workers, open_image, training_view

__all__ = [
    "AUGMENT_MODES",
    "DEBIAN_FASHION_MNIST_DIR",
    "ArrayDataset",
    "DataBundle",
    "DataError",
    "ImageFolderStream",
    "augment_recipe",
    "calibration_indices",
    "class_subset",
    "default_workers",
    "get_dataset",
    "list_datasets",
    "load_data",
    "make_prepare",
    "normalize",
    "open_image",
    "register_dataset",
    "relabel",
    "size_of_images",
    "targets_of",
    "training_view",
    "uint8_images",
    "with_normalization",
]
