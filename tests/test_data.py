"""Tests for edgeslice.data: built-in datasets, IDX parsing, ImageFolder trees and class-split helpers."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from edgeslice import data
from edgeslice.data import (
    ArrayDataset,
    DataError,
    builtin,
    calibration_indices,
    class_subset,
    list_datasets,
    load_data,
    normalize,
    registry,
    targets_of,
)


@pytest.fixture(scope="module")
def digits() -> data.DataBundle:
    return load_data("digits", seed=0)


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Writes a uint8 IDX file: magic 0x00 0x00 0x08 ndim, big-endian uint32 dims, raw bytes."""
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def _fake_fashion_root(root: Path, compress: bool = True) -> dict[str, np.ndarray]:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([9, 0, 0, 3, 1, 2], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 8, 9], dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        _write_idx(raw / (stem + ".gz" if compress else stem), arr, compress)
    return arrays


def _write_png(path: Path, value: int, mode: str, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color).save(path)


# --- registry and errors ---------------------------------------------------------------------------------------------


def test_list_datasets() -> None:
    assert list_datasets() == ["cifar10", "digits", "fashion-mnist", "mnist"]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError) as err:
        load_data("imagenet-xxl")
    msg = str(err.value)
    assert "imagenet-xxl" in msg and "\n" not in msg
    for name in list_datasets():
        assert name in msg


def test_missing_fashion_mnist_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        load_data("fashion-mnist", root=tmp_path)
    assert "--data digits" in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_torchvision_dataset_says_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError, match="--download"):
        load_data(name, root=tmp_path)


# --- digits ----------------------------------------------------------------------------------------------------------


def test_digits_shapes_and_labels(digits: data.DataBundle) -> None:
    assert digits.name == "digits"
    assert (digits.in_chans, digits.image_size) == (1, 32)
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.test) == pytest.approx(0.2 * 1797, abs=10)
    x, y = digits.train[0]
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32)
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert isinstance(y, int)
    for split in (digits.train, digits.test):
        labels = targets_of(split)
        assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))
    assert digits.classes == [str(i) for i in range(10)]
    assert len(digits.mean) == len(digits.std) == 1 and 0.1 < digits.mean[0] < 0.5
    summary = json.loads(json.dumps(digits.describe()))
    assert summary["n_train"] == len(digits.train) and summary["image_size"] == 32


def test_digits_split_is_seeded(digits: data.DataBundle) -> None:
    again = load_data("DIGITS", seed=0)
    other = load_data("digits", seed=1)
    assert torch.equal(again.train.images, digits.train.images)
    assert torch.equal(again.test.labels, digits.test.labels)
    assert not torch.equal(other.test.images, digits.test.images)


def test_digits_image_size() -> None:
    small = load_data("digits", image_size=16)
    assert small.image_size == 16 and small.train[0][0].shape == (1, 16, 16)


# --- helpers ---------------------------------------------------------------------------------------------------------


def _toy(labels: list[int]) -> ArrayDataset:
    n = len(labels)
    return ArrayDataset(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.tensor(labels))


def test_calibration_indices() -> None:
    labels = [0] * 10 + [1] * 10 + [2] * 2 + [1] * 5
    ds = _toy(labels)
    torch.manual_seed(123)
    rng_state = torch.get_rng_state()
    picked = calibration_indices(ds, per_class=4, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    assert [labels[i] for i in picked] == [0] * 4 + [1] * 4 + [2] * 2
    assert sorted(picked, key=lambda i: (labels[i], i)) == picked
    assert len(set(picked)) == len(picked)
    assert calibration_indices(ds, per_class=4, seed=0) == picked
    assert calibration_indices(ds, per_class=4, seed=1) != picked
    assert calibration_indices(ds, per_class=100, seed=0) == sorted(range(len(labels)), key=lambda i: (labels[i], i))
    with pytest.raises(ValueError):
        calibration_indices(ds, per_class=-1, seed=0)


def test_targets_of_variants() -> None:
    ds = _toy([3, 1, 4, 1, 5])
    assert targets_of(Subset(ds, [4, 0])).tolist() == [5, 3]

    class WithTargets(Dataset):
        targets = [2, 7]

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            raise AssertionError("targets_of must not load items when .targets exists")

    class Plain(Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.zeros(1), 10 + i

    assert targets_of(WithTargets()).tolist() == [2, 7]
    assert targets_of(Plain()).tolist() == [10, 11, 12]


def test_class_subset() -> None:
    ds = _toy([0, 1, 2, 1, 0, 2])
    sub = class_subset(ds, [1, 2])
    assert list(sub.indices) == [1, 2, 3, 5]
    assert targets_of(sub).tolist() == [1, 2, 1, 2]
    assert calibration_indices(sub, per_class=1, seed=0) in ([0, 1], [0, 3], [2, 1], [2, 3])


def test_normalize_and_array_dataset() -> None:
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.uint8).view(2, 3, 2, 2) * 10
    ds = ArrayDataset(images, torch.tensor([1, 0]))
    x, y = ds[1]
    assert y == 0 and torch.allclose(x, images[1].float() / 255)
    batch_x, batch_y = next(iter(DataLoader(ds, batch_size=2)))
    assert torch.allclose(batch_x, images.float() / 255) and batch_y.tolist() == [1, 0]
    out = normalize(batch_x.double(), (0.5, 0.25, 0.0), (0.5, 0.5, 2.0))
    assert out.dtype == torch.float64
    assert torch.allclose(out[:, 0], (batch_x[:, 0].double() - 0.5) / 0.5)
    assert torch.allclose(out[:, 2], batch_x[:, 2].double() / 2.0)
    with pytest.raises(ValueError):
        ArrayDataset(images.float(), torch.tensor([1, 0]))


# --- Fashion-MNIST ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_from_idx_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: bool) -> None:
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    arrays = _fake_fashion_root(tmp_path, compress)
    bundle = load_data("FMNIST", root=tmp_path)
    assert bundle.name == "fashion-mnist" and str(tmp_path) in bundle.source
    assert (len(bundle.train), len(bundle.test), bundle.image_size, bundle.in_chans) == (6, 3, 28, 1)
    assert torch.equal(bundle.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert bundle.train.labels.tolist() == [9, 0, 0, 3, 1, 2]
    assert bundle.test.labels.tolist() == [7, 8, 9]
    assert bundle.classes[0] == "T-shirt/top" and bundle.classes[9] == "Ankle boot"
    assert bundle.mean == (0.2860,) and bundle.std == (0.3530,)


def test_fashion_mnist_env_root_and_resize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("EDGESLICE_DATA", str(tmp_path))
    _fake_fashion_root(tmp_path)
    bundle = load_data("fashion_mnist", image_size=14)
    assert bundle.image_size == 14 and bundle.train.images.shape == (6, 1, 14, 14)
    assert bundle.train.images.dtype == torch.uint8


def test_bad_idx_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    _fake_fashion_root(tmp_path)
    bad = tmp_path / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x12\x34\x08\x01" + struct.pack(">I", 6) + bytes(6)))
    with pytest.raises(DataError, match="bad magic") as err:
        load_data("fashion-mnist", root=tmp_path)
    assert str(bad) in str(err.value)
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 60) + bytes(6)))
    with pytest.raises(DataError, match="size mismatch"):
        load_data("fashion-mnist", root=tmp_path)


def test_fashion_mnist_debian(tmp_path: Path) -> None:
    debian = data.DEBIAN_FASHION_MNIST_DIR
    if not debian.is_dir():
        pytest.skip(f"{debian} missing (apt-get install dataset-fashion-mnist)")
    with gzip.open(debian / "train-labels-idx1-ubyte.gz") as f:
        first_label = f.read(9)[8]  # 8-byte header: magic + count
    bundle = load_data("fashion-mnist", root=tmp_path)
    assert bundle.source.startswith("Debian") and str(debian) in bundle.source
    assert (len(bundle.train), len(bundle.test), bundle.image_size) == (60000, 10000, 28)
    assert bundle.train.images.shape == (60000, 1, 28, 28)
    assert bundle.train[0][1] == first_label
    assert set(bundle.test.labels.tolist()) == set(range(10))


# --- ImageFolder -----------------------------------------------------------------------------------------------------


def test_image_folder_grayscale_with_val(tmp_path: Path) -> None:
    for i in range(3):
        _write_png(tmp_path / "train" / "cat" / f"{i}.png", 10 * i, "L")
        _write_png(tmp_path / "train" / "dog" / f"{i}.png", 200, "L")
    _write_png(tmp_path / "val" / "dog" / "v.png", 255, "L")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    bundle = load_data(str(tmp_path), workers=0)
    assert bundle.name == str(tmp_path.resolve())
    assert bundle.classes == ["cat", "dog"]
    assert (bundle.in_chans, bundle.image_size) == (1, 10)  # the images' median side
    assert (len(bundle.train), len(bundle.test)) == (6, 1)
    assert bundle.train.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert targets_of(bundle.test).tolist() == [1]
    assert bundle.train[1][0].unique().tolist() == [10]  # streamed items are uint8 (C, H, W)
    assert bundle.test[0][0].shape == (1, 10, 10) and bundle.test[0][0].min() == 255
    x, _ = next(iter_batches(bundle.test))
    assert x.dtype == torch.float32 and x.min() == 1.0  # batches are scaled to [0, 1]
    # Streamed folders take timm's normalisation (the model's data config), not a pass over every image.
    assert bundle.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))


def iter_batches(dataset):
    from edgeslice.train import iterate_batches

    return iterate_batches(dataset, 4)


def test_image_folder_rgb_split(tmp_path: Path) -> None:
    for i in range(5):
        _write_png(tmp_path / "train" / "a" / f"{i}.png", 0, "RGB", size=(20, 16))
        _write_png(tmp_path / "train" / "b" / f"{i}.jpg", 250, "L", size=(20, 16))  # mixed modes -> RGB
    bundle = load_data(str(tmp_path), image_size=8, seed=3, workers=0)
    assert (bundle.in_chans, bundle.image_size, len(bundle.mean)) == (3, 8, 3)
    assert (len(bundle.train), len(bundle.test)) == (8, 2)
    assert sorted(targets_of(bundle.test).tolist()) == [0, 1]  # stratified: one per class
    x, _ = bundle.train[0]
    assert x.shape == (3, 8, 8) and x[1].min() == 255  # class a is (0, 255, 0)
    assert "seed 3" in bundle.source
    again = load_data(str(tmp_path), image_size=8, seed=3, workers=0)
    assert again.test.files == bundle.test.files


def test_image_folder_of_class_folders_without_train(tmp_path: Path) -> None:
    """NEW/<class>/*.png (what a user has of one new thing) reads as the train split, held-out images split off;
    a val/ folder without train/ stays an error, not a class named "val"."""
    for i in range(6):
        _write_png(tmp_path / "new" / "fox" / f"{i}.png", 20 * i, "L")
    one = load_data(str(tmp_path / "new"), workers=0, min_classes=1)
    assert one.classes == ["fox"] and (len(one.train), len(one.test)) == (5, 1)
    assert "class folders split" in one.source
    with pytest.raises(DataError, match="at least 2 classes"):
        load_data(str(tmp_path / "new"), workers=0)
    _write_png(tmp_path / "odd" / "val" / "fox" / "0.png", 0, "L")
    with pytest.raises(DataError, match="no train/"):
        load_data(str(tmp_path / "odd"), workers=0, min_classes=1)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        load_data(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(err.value)
    with pytest.raises(DataError, match="no train/"):
        load_data(str(tmp_path))
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_data(str(tmp_path))
    (tmp_path / "train" / "empty").rmdir()
    _write_png(tmp_path / "train" / "a" / "0.png", 0, "L")
    _write_png(tmp_path / "train" / "b" / "0.png", 0, "L")
    _write_png(tmp_path / "val" / "zebra" / "0.png", 0, "L")
    with pytest.raises(DataError, match="zebra"):
        load_data(str(tmp_path))
    (tmp_path / "val" / "zebra" / "0.png").unlink()
    (tmp_path / "val" / "zebra").rename(tmp_path / "val" / "a")
    with pytest.raises(DataError, match="no images in"):  # an empty val/ would give an empty test split
        load_data(str(tmp_path))
    (tmp_path / "val" / "a").rmdir()
    (tmp_path / "val").rmdir()
    broken = tmp_path / "train" / "a" / "1.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image") as err:
        load_data(str(tmp_path))
    assert str(broken) in str(err.value)


def test_a_registered_data_source_loads_by_name_and_names_are_unique():
    from edgeslice import data as data_mod

    calls = []

    @data_mod.register_dataset("test-only-source")
    def _loader(*, image_size, seed, download, root):
        calls.append((image_size, seed, download))
        return data_mod.load_data("digits", image_size=image_size, seed=seed)

    try:
        assert "test-only-source" in data_mod.list_datasets()
        bundle = data_mod.load_data("test-only-source", image_size=16, seed=3)
        assert bundle.image_size == 16 and calls == [(16, 3, False)]
        with pytest.raises(ValueError, match="registered already"):
            data_mod.register_dataset("digits")
    finally:
        registry._LOADERS.pop("test-only-source", None)


def test_get_dataset_finds_a_registered_source_and_lists_the_names_of_an_unknown_one():
    calls = []

    @data.register_dataset("test-only-getter")
    def _loader(*, image_size, seed, download, root):
        calls.append(root)
        return data.load_data("digits", image_size=image_size, seed=seed)

    try:
        assert data.get_dataset(" Test-Only-Getter ") is _loader
        assert data.get_dataset("FMNIST") is data.get_dataset("fashion-mnist")  # the alias
        bundle = data.load_data("test-only-getter", image_size=8, root="/tmp/somewhere")
        assert bundle.image_size == 8 and calls == [Path("/tmp/somewhere")]
        with pytest.raises(ValueError, match="unknown data source 'imagenet-xxl'") as err:
            data.get_dataset("imagenet-xxl")
        for name in ["cifar10", "digits", "fashion-mnist", "mnist", "test-only-getter"]:
            assert name in str(err.value)
    finally:
        registry._LOADERS.pop("test-only-getter", None)
    assert "test-only-getter" not in data.list_datasets()
