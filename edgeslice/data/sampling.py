"""Choosing and relabelling items by class: the labels of any dataset (:func:`targets_of`), the seeded calibration
sample (:func:`calibration_indices`), per-class splits and subsets, and in-memory relabelled copies."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from .bundle import ArrayDataset

__all__ = ["calibration_indices", "class_subset", "relabel", "stratified_split", "targets_of", "uint8_images"]

_TEST_FRACTION = 0.2


def targets_of(dataset: Dataset) -> torch.Tensor:
    """Returns the int64 labels of every item, without decoding images where the dataset allows it."""
    if isinstance(dataset, ArrayDataset):
        return dataset.labels
    if isinstance(dataset, Subset):
        return targets_of(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    if isinstance(dataset, ConcatDataset):
        return torch.cat([targets_of(d) for d in dataset.datasets])
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.int64)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)


def calibration_indices(dataset: Dataset, per_class: int, seed: int) -> list[int]:
    """Picks a fixed, seeded sample of ``per_class`` items for each class.

    Args:
        dataset: Any dataset ``targets_of`` understands.
        per_class: Items to take per class; classes with fewer items give all they have.
        seed: Seed of the private ``torch.Generator``; the global RNG is never touched.

    Returns:
        Dataset indices sorted by (class, index).
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    targets = targets_of(dataset)
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for c in torch.unique(targets).tolist():  # ascending
        idx = (targets == c).nonzero().flatten()
        chosen = idx[torch.randperm(len(idx), generator=gen)[:per_class]]
        out.extend(chosen.sort().values.tolist())
    return out


def class_subset(dataset: Dataset, classes: Sequence[int]) -> Subset:
    """Returns the items whose label is in ``classes``; labels keep their original values."""
    targets = targets_of(dataset)
    keep = torch.isin(targets, torch.as_tensor(list(classes), dtype=torch.int64))
    return Subset(dataset, keep.nonzero().flatten().tolist())


def stratified_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class 80/20 split; returns sorted (train_idx, test_idx)."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = round(len(idx) * _TEST_FRACTION)
        if len(idx) >= 2:  # every class with two items gets one of each, however small the fraction
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def relabel(dataset: Dataset, mapping: dict[int, int]) -> ArrayDataset:
    """The items whose label is a key of ``mapping``, with labels mapped (an in-memory uint8 copy)."""
    targets = targets_of(dataset)
    keep = torch.isin(targets, torch.as_tensor(sorted(mapping), dtype=torch.int64)).nonzero().flatten()
    images = uint8_images(dataset, keep)
    lut = torch.full((int(targets.max()) + 1,), -1, dtype=torch.int64)
    for k, v in mapping.items():
        if k <= int(targets.max()):
            lut[k] = v
    return ArrayDataset(images, lut[targets[keep]])


def uint8_images(dataset: Dataset, idx: torch.Tensor) -> torch.Tensor:
    """The images ``idx`` of ``dataset`` as (len(idx), C, H, W) uint8: copied from the base data set's uint8 images
    through any ``Subset`` chain when it has them, else the items scaled back from [0, 1]."""
    base, sub = dataset, idx
    while hasattr(base, "indices") and hasattr(base, "dataset"):  # Subset chains
        sub = torch.as_tensor(base.indices, dtype=torch.int64)[sub]
        base = base.dataset
    images = getattr(base, "images", None)
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        return images[sub].clone()
    return torch.stack([(dataset[int(i)][0] * 255).round().clamp(0, 255).to(torch.uint8) for i in idx])


# ---------------------------------------------------------------------------------------------------------------------
