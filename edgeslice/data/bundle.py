"""What a data source yields: :class:`DataBundle` (the train/test splits and what a model needs to read them), the
in-memory :class:`ArrayDataset` of the built-in sets, and :class:`DataError`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..errors import EdgesliceError

__all__ = ["ArrayDataset", "DataBundle", "DataError"]


class DataError(EdgesliceError):
    """Bad or missing data; str(e) is a one-line message fit for a CLI user."""


class ArrayDataset(Dataset):
    """In-memory images with integer labels.

    Args:
        images: uint8 tensor (n, C, H, W).
        labels: int64 tensor (n,).

    Items are ``(float32 (C, H, W) in [0, 1], int label)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (n, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be ({len(images)},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float().div_(255), int(self.labels[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        # DataLoader uses this when present: one gather + one divide per batch instead of per item.
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.images[idx].float().div_(255)
        return list(zip(x.unbind(0), self.labels[idx].tolist(), strict=True))

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, shape={tuple(self.images.shape[1:])})"


@dataclass(frozen=True)
class DataBundle:
    """A loaded dataset: train/test splits plus what a model needs to consume them.

    Attributes:
        name: Canonical dataset name, or the resolved folder path.
        train: Training split; items are (float32 (C, H, W) in [0, 1], int label).
        test: Test split, same item format.
        classes: Class names, indexed by label.
        in_chans: Number of image channels.
        image_size: Side of the square images.
        mean: Per-channel normalisation mean (len == in_chans).
        std: Per-channel normalisation std (len == in_chans).
        source: One line saying where the data came from.
        size_source: Why ``image_size`` is what it is, when a folder chose it (``images``: the median side of its
            images; ``model``: the model's data config; ``given``: asked for); empty for the built-in sets.
    """

    name: str
    train: Dataset
    test: Dataset
    classes: list[str]
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    size_source: str = ""

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean/std need {self.in_chans} values, got {len(self.mean)}/{len(self.std)}")

    def describe(self) -> dict:
        """Returns a JSON-able summary of the bundle."""
        return {
            "name": self.name,
            "source": self.source,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "classes": list(self.classes),
            "in_chans": self.in_chans,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            **({"image_size_source": self.size_source} if self.size_source else {}),
        }
