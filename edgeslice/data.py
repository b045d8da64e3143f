"""Datasets for edgeslice: Fashion-MNIST, digits, MNIST, CIFAR-10 and ImageFolder trees, plus class-split helpers.

The built-in sets are held in memory as uint8 so that ``__getitem__`` is a slice and a divide, never a PIL decode.
ImageFolder trees are streamed instead (:class:`ImageFolderStream`): only the file list is in memory, images are
decoded per batch by ``DataLoader`` workers with timm's transforms (the deterministic eval transform for
calibration and evaluation, timm's train-time augmentation for training), so memory does not grow with the
number of images.

Example:
    >>> bundle = load_data("digits", seed=0)
    >>> x, y = bundle.train[0]
    >>> x.shape, bundle.in_chans, len(bundle.classes)
    (torch.Size([1, 32, 32]), 1, 10)
"""

from __future__ import annotations

import gzip
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset

from .errors import EdgesliceError

if TYPE_CHECKING:
    from .models import ModelMeta

__all__ = [
    "ArrayDataset",
    "DataBundle",
    "DataError",
    "ImageFolderStream",
    "default_workers",
    "training_view",
    "augment_recipe",
    "size_of_images",
    "with_normalization",
    "calibration_indices",
    "class_subset",
    "list_datasets",
    "load_data",
    "make_prepare",
    "normalize",
    "relabel",
    "targets_of",
    "uint8_images",
]

# Module-level so tests (and unusual installs) can point it elsewhere.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
_GRAY_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
_TEST_FRACTION = 0.2
_MAX_DEFAULT_SIZE = 224
#: timm's ImageNet normalisation, for folders read without a model's data config.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


_LOADERS: dict[str, Callable[..., DataBundle]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., DataBundle]], Callable[..., DataBundle]]:
    """Decorator: ``--data name`` (and :func:`load_data`) calls the decorated loader with the keyword arguments
    ``image_size`` (int or None: the loader's own size), ``seed`` (for any split it draws), ``download`` (bool) and
    ``root`` (the data directory, a Path); it returns a :class:`DataBundle`.

    Example:
        >>> @register_dataset("my-set")  # doctest: +SKIP
        ... def my_set(*, image_size, seed, download, root):
        ...     return DataBundle(...)
    """
    if name in _LOADERS:
        raise ValueError(f"data source {name!r} is registered already")

    def deco(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        _LOADERS[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    """Returns the names ``load_data`` accepts besides folder paths, sorted."""
    return sorted(_LOADERS)


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
    key = name_or_path.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _LOADERS:
        return _LOADERS[key](image_size=image_size, seed=seed, download=download, root=_data_root(root))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _load_folder(
            path, image_size=image_size, seed=seed, preprocess=preprocess, workers=workers, min_classes=min_classes,
            size_from_images=size_from_images,
        )  # fmt: skip
    if os.sep in name_or_path or "/" in name_or_path or name_or_path.startswith((".", "~")):
        raise DataError(f"data folder not found: {name_or_path}")
    raise DataError(
        f"unknown dataset '{name_or_path}': use one of {', '.join(list_datasets())}, or a folder with train/<class>/"
    )


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


def with_normalization(bundle: DataBundle, mean: Sequence[float] | None, std: Sequence[float] | None) -> DataBundle:
    """The bundle with another normalisation (a model's pretrained cfg, ``--mean``/``--std``); None keeps it.

    Three values are averaged for a one-channel bundle, one value is repeated for three channels.

    Raises:
        DataError: a length that fits neither.
    """
    from dataclasses import replace

    new = {}
    for key, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        v = tuple(float(x) for x in values)
        if len(v) == 3 and bundle.in_chans == 1:
            v = (sum(v) / 3,)
        elif len(v) == 1 and bundle.in_chans != 1:
            v = v * bundle.in_chans
        if len(v) != bundle.in_chans:
            raise DataError(f"--{key} needs {bundle.in_chans} values (one per channel of the data), got {len(v)}")
        new[key] = v
    return replace(bundle, **new) if new else bundle


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


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalises (B, C, H, W) (or (C, H, W)) images in [0, 1] per channel, on ``x``'s device and dtype."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def make_prepare(meta_or_bundle: ModelMeta | DataBundle) -> Callable[[torch.Tensor], torch.Tensor]:
    """The normalisation a model expects, as a batch function."""
    mean, std = tuple(meta_or_bundle.mean), tuple(meta_or_bundle.std)
    return lambda x: normalize(x, mean, std)


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
# helpers


def _data_root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("EDGESLICE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeslice" / "data"


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


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 (n, C, H, W) scaled to [0, 1]."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    sq = torch.zeros_like(total)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).div_(255)  # float64: sum of squares over millions of pixels loses digits in fp32
        total += x.sum((0, 2, 3))
        sq += x.square().sum((0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    # A floor keeps normalize finite on constant images (a one-colour toy folder).
    std = (sq / n - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _stratified_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def _read_idx(path: Path) -> np.ndarray:
    """Parses an IDX file (optionally gzipped): 2 zero bytes, dtype code, ndim, then big-endian uint32 dims."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"not an IDX file (bad magic number): {path}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"truncated IDX header: {path}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != count * dtype.itemsize:
        raise DataError(f"IDX size mismatch in {path}: header says {dims}, file has {len(data) - header} data bytes")
    # Copy: frombuffer over bytes is read-only, and torch tensors must own writable memory.
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_split(directory: Path, prefix: str) -> ArrayDataset | None:
    """Loads ``{prefix}-images-idx3-ubyte`` + labels from a directory, or None if either file is absent."""
    img_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        return None
    images, labels = _read_idx(img_path), _read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"IDX shapes do not match: {img_path} {images.shape} vs {lbl_path} {labels.shape}")
    return ArrayDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels))


def _idx_bundle(directory: Path) -> tuple[ArrayDataset, ArrayDataset] | None:
    train, test = _load_idx_split(directory, "train"), _load_idx_split(directory, "t10k")
    return (train, test) if train is not None and test is not None else None


def _finish(
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
    mean, std = stats if stats is not None else _channel_stats(train.images)
    c, h = train.images.shape[1], train.images.shape[2]
    return DataBundle(name, train, test, classes, c, h, mean, std, source)


# ---------------------------------------------------------------------------------------------------------------------
# loaders


@register_dataset("fashion-mnist")
def _load_fashion_mnist(*, image_size: int | None, seed: int, download: bool, root: Path) -> DataBundle:
    del seed  # Fashion-MNIST ships its own split
    stats = ((0.2860,), (0.3530,))
    raw = root / "FashionMNIST" / "raw"
    found, source = _idx_bundle(raw), f"torchvision root: {raw}"
    if found is None:
        found, source = (
            _idx_bundle(DEBIAN_FASHION_MNIST_DIR),
            f"Debian dataset-fashion-mnist: {DEBIAN_FASHION_MNIST_DIR}",
        )
    if found is None and download:
        from torchvision.datasets import FashionMNIST

        try:
            FashionMNIST(str(root), train=True, download=True)
        except (OSError, RuntimeError) as e:
            raise DataError(f"Fashion-MNIST download into {root} failed: {e}") from e
        found, source = _idx_bundle(raw), f"torchvision download: {raw}"
    if found is None:
        raise DataError(
            "Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "pass --download where the network allows, or use --data digits (offline, from scikit-learn)"
        )
    return _finish("fashion-mnist", *found, FASHION_MNIST_CLASSES, image_size, source, stats)


@register_dataset("digits")
def _load_digits(*, image_size: int | None, seed: int, download: bool, root: Path) -> DataBundle:
    del download, root  # bundled with scikit-learn
    from sklearn.datasets import load_digits

    d = load_digits()
    # 8x8 values 0..16 -> 0..255 so digits share the uint8 path of every other dataset.
    images = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    tr, te = _stratified_split(labels, seed)
    train, test = ArrayDataset(images[tr], labels[tr]), ArrayDataset(images[te], labels[te])
    # 32 px by default: timm CNNs downsample by 32, so 8 px inputs would vanish.
    size = 32 if image_size is None else image_size
    classes = [str(i) for i in range(10)]
    return _finish("digits", train, test, classes, size, f"scikit-learn load_digits (80/20 split, seed {seed})", None)


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
    return _finish("mnist", train, test, classes, image_size, f"torchvision MNIST: {root}", ((0.1307,), (0.3081,)))


@register_dataset("cifar10")
def _load_cifar10(*, image_size: int | None, seed: int, download: bool, root: Path) -> DataBundle:
    del seed
    splits = [_torchvision_split("CIFAR10", root, t, download) for t in (True, False)]
    train, test = (
        ArrayDataset(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(s.targets))
        for s in splits
    )
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    return _finish("cifar10", train, test, list(splits[0].classes), image_size, f"torchvision CIFAR10: {root}", stats)


def _list_images(split_dir: Path) -> dict[str, list[Path]]:
    return {
        d.name: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        for d in sorted(split_dir.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


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


def _load_folder(
    path: Path,
    *,
    image_size: int | None,
    seed: int,
    preprocess: dict | None = None,
    workers: int | None = None,
    min_classes: int = 2,
    size_from_images: bool = False,
) -> DataBundle:
    from PIL import Image

    path = path.resolve()
    if not path.is_dir():
        raise DataError(f"not a data folder: {path}")
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

    # One pass over the headers only (PIL opens lazily): channels and the default size, and a readable file each.
    gray, sides = True, []
    for p, _ in train_items + test_items:
        try:
            with Image.open(p) as im:
                gray = gray and im.mode in _GRAY_MODES
                sides.append(min(im.size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"unreadable image {p}: {' '.join(str(e).split())}") from e
    in_chans = 1 if gray else 3
    if image_size is not None:
        size, size_source = image_size, "given"
    elif preprocess is not None and not size_from_images:
        size, size_source = int(preprocess["input_size"][-1]), "model"
    else:
        size, size_source = size_of_images(sides[: len(train_items)]), "images"
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
    n_workers = default_workers() if workers is None else int(workers)

    def stream(items: list[tuple[Path, int]]) -> ImageFolderStream:
        targets = torch.tensor([y for _, y in items], dtype=torch.int64)
        return ImageFolderStream([str(p) for p, _ in items], targets, gray=gray, preprocess=cfg, workers=n_workers)

    train = stream(train_items)
    if held_out is not None:
        test, source = stream(test_items), f"ImageFolder: {path} (train/ + {held_out.name}/)"
    else:
        tr, te = _stratified_split(train.targets, seed)
        train, test = train.subset(tr), train.subset(te)
        source = f"ImageFolder: {path} ({'train/' if train_root != path else 'class folders'} split 80/20, seed {seed})"
    crop = f"crop_pct {cfg.get('crop_pct')}, {cfg.get('interpolation')}"
    source = f"{source}, streamed ({crop})"
    return DataBundle(str(path), train, test, classes, in_chans, size, mean, std, source, size_source)
