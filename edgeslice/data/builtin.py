"""The built-in data sources, registered by name: Fashion-MNIST (torchvision root, Debian package or download),
scikit-learn's digits, MNIST and CIFAR-10 (torchvision). They are held in memory as uint8 so that ``__getitem__`` is
a slice and a divide, never a PIL decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .bundle import ArrayDataset, DataBundle, DataError
from .idx import idx_splits
from .normalize import channel_stats
from .registry import register_dataset
from .sampling import stratified_split

__all__ = ["DEBIAN_FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES"]

# Module-level so tests (and unusual installs) can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _bundle_from_splits(
    name: str,
    train: ArrayDataset,
    test: ArrayDataset,
    classes: list[str],
    image_size: int | None,
    source: str,
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None,
) -> DataBundle:
    """Resizes both splits once if asked, and computes train statistics when the dataset has no published ones."""
    if image_size is not None:
        train = ArrayDataset(_resize(train.images, image_size), train.labels)
        test = ArrayDataset(_resize(test.images, image_size), test.labels)
    mean, std = stats if stats is not None else channel_stats(train.images)
    c, h = train.images.shape[1], train.images.shape[2]
    return DataBundle(name, train, test, classes, c, h, mean, std, source)


# ---------------------------------------------------------------------------------------------------------------------
# loaders


@register_dataset("fashion-mnist")
def _load_fashion_mnist(*, image_size: int | None, seed: int, download: bool, root: Path) -> DataBundle:
    del seed  # Fashion-MNIST ships its own split
    stats = ((0.2860,), (0.3530,))
    raw = root / "FashionMNIST" / "raw"
    found, source = idx_splits(raw), f"torchvision root: {raw}"
    if found is None:
        found, source = (
            idx_splits(DEBIAN_FASHION_MNIST_DIR),
            f"Debian dataset-fashion-mnist: {DEBIAN_FASHION_MNIST_DIR}",
        )
    if found is None and download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(root), train=True, download=True)
        except (OSError, RuntimeError) as e:
            raise DataError(f"Fashion-MNIST download into {root} failed: {e}") from e
        found, source = idx_splits(raw), f"torchvision download: {raw}"
    if found is None:
        raise DataError(
            "Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "pass --download where the network allows, or use --data digits (offline, from scikit-learn)"
        )
    return _bundle_from_splits("fashion-mnist", *found, FASHION_MNIST_CLASSES, image_size, source, stats)


@register_dataset("digits")
def _load_digits(*, image_size: int | None, seed: int, download: bool, root: Path) -> DataBundle:
    del download, root  # bundled with scikit-learn
    from sklearn.datasets import load_digits

    d = load_digits()
    # 8x8 values 0..16 -> 0..255 so digits share the uint8 path of every other dataset.
    images = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    tr, te = stratified_split(labels, seed)
    train, test = ArrayDataset(images[tr], labels[tr]), ArrayDataset(images[te], labels[te])
    # 32 px by default: timm CNNs downsample by 32, so 8 px inputs would vanish.
    size = 32 if image_size is None else image_size
    classes = [str(i) for i in range(10)]
    return _bundle_from_splits(
        "digits", train, test, classes, size, f"scikit-learn load_digits (80/20 split, seed {seed})", None
    )


def _torchvision_split(cls_name: str, root: Path, train: bool, download: bool) -> Dataset:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    try:
        return cls(str(root), train=train, download=download)
    except (OSError, RuntimeError) as e:
        if download:
            raise DataError(f"{cls_name} download into {root} failed: {e}") from e
        raise DataError(f"{cls_name} not found under {root}: pass --download (or --root DIR holding it)") from e


@register_dataset("mnist")
def _load_mnist(*, image_size: int | None, seed: int, download: bool, root: Path) -> DataBundle:
    del seed
    splits = [_torchvision_split("MNIST", root, t, download) for t in (True, False)]
    train, test = (ArrayDataset(s.data.unsqueeze(1).contiguous(), s.targets) for s in splits)
    classes = [str(i) for i in range(10)]
    return _bundle_from_splits(
        "mnist", train, test, classes, image_size, f"torchvision MNIST: {root}", ((0.1307,), (0.3081,))
    )


@register_dataset("cifar10")
def _load_cifar10(*, image_size: int | None, seed: int, download: bool, root: Path) -> DataBundle:
    del seed
    splits = [_torchvision_split("CIFAR10", root, t, download) for t in (True, False)]
    train, test = (
        ArrayDataset(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(s.targets))
        for s in splits
    )
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return _bundle_from_splits(
        "cifar10", train, test, list(splits[0].classes), image_size, f"torchvision CIFAR10: {root}", stats
    )


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resizes uint8 (n, C, H, W) to (n, C, size, size) with antialiased bilinear; a no-op at the same size."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    # Chunked so float copies of large sets (70k images) stay a few hundred MB at most.
    for start in range(0, len(images), 8192):
        x = images[start : start + 8192].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 8192] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
