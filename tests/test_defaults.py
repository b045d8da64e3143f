"""Defaults that fit the user's data: the input size and the train-time augmentation follow a folder's images when a
model is trained from scratch, and stay timm's where pretrained weights set them (issue 35)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from edgeslice.data import ImageFolderStream, augment_recipe, training_view
from edgeslice.pipeline import CompressConfig, load_compress_data

TIMM = "mobilenetv3_small_100"


def _folder(root: Path, side: int, n: int = 6, mode: str = "L") -> Path:
    """``root/train/{a,b}/*.png`` of ``side``-px images (one 2×-larger outlier, which the median ignores)."""
    for c, value in (("a", 40), ("b", 200)):
        for i in range(n):
            s = side * 2 if i == 0 else side
            img = Image.new(mode, (s, s), value if mode == "L" else (value, 255 - value, 0))
            path = root / "train" / c / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
    return root


def test_from_scratch_default_size_is_the_images_median_side(tmp_path: Path) -> None:
    bundle = load_compress_data(
        CompressConfig(model="mobilenetv3", data=str(_folder(tmp_path, 28))), "mobilenetv3_small_100"
    )
    assert (bundle.image_size, bundle.size_source) == (28, "images")
    assert bundle.describe()["image_size_source"] == "images"
    assert bundle.train[0][0].shape == (1, 28, 28)


def test_image_size_flag_wins(tmp_path: Path) -> None:
    cfg = CompressConfig(model="mobilenetv3", data=str(_folder(tmp_path, 28)), image_size=40)
    bundle = load_compress_data(cfg, TIMM)
    assert (bundle.image_size, bundle.size_source) == (40, "given")


def test_pretrained_file_keeps_timms_input_size(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not read by the data loader")
    cfg = CompressConfig(model="mobilenetv3", data=str(_folder(tmp_path / "d", 28)), pretrained_file=str(weights))
    bundle = load_compress_data(cfg, TIMM)
    assert (bundle.image_size, bundle.size_source) == (224, "model")


def test_augment_auto_is_off_up_to_64_px_and_timm_above(tmp_path: Path) -> None:
    assert [augment_recipe("auto", s) for s in (28, 64, 65, 224)] == [None, None, "timm", "timm"]
    assert augment_recipe(True, 32) is None and augment_recipe("none", 32) is None
    assert augment_recipe("timm", 28) == "timm" and augment_recipe("small", 224) == "small"
    with pytest.raises(ValueError, match="unknown augment mode"):
        augment_recipe("cutmix", 28)
    small = load_compress_data(CompressConfig(model="mobilenetv3", data=str(_folder(tmp_path / "s", 28))), TIMM)
    assert training_view(small.train, "auto") is small.train  # the eval transform: nothing random
    view = training_view(small.train, "small")
    assert isinstance(view, ImageFolderStream) and view.train and view.recipe == "small"
    names = [type(t).__name__ for t in view.transform.transforms]
    assert "RandomCrop" in names and "RandomHorizontalFlip" in names and "RandomResizedCrop" not in names
    x = torch.stack([view[i][0] for i in range(len(view))])
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28)
    big = load_compress_data(CompressConfig(model="mobilenetv3", data=str(_folder(tmp_path / "b", 80, 3, "RGB"))), TIMM)
    assert big.image_size == 80 and training_view(big.train, "auto").recipe == "timm"


def test_small_recipe_pads_and_crops_randomly_within_the_border(tmp_path: Path) -> None:
    """A uniform 32-px image: every augmented view is the image shifted by at most 32 // 8 = 4 px, the rest zero
    padding; across draws some views are shifted (the crop is random) and none loses more than a 4-px border."""
    bundle = load_compress_data(CompressConfig(model="mobilenetv3", data=str(_folder(tmp_path, 32))), TIMM)
    view = training_view(bundle.train, "small")
    views = [view[1][0] for _ in range(40)]
    nonzero = [int((v > 0).sum()) for v in views]
    assert max(nonzero) <= 32 * 32 and min(nonzero) >= 28 * 28
    assert min(nonzero) < 32 * 32


def test_train_cli_records_the_size_and_recipe_it_chose(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data", 24, n=8)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeslice", "train", "resnet10t", "--data", str(data), "--epochs", "0.2",
         "--batch-size", "8", "--device-type", "cpu", "--out", str(out), "--quiet", "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("input size 24 px: the median side of the images") == 1
    meta = json.loads((out / "model.json").read_text())
    assert meta["input_size"] == 24
    assert meta["info"]["augment"] == "none"
    assert meta["info"]["data"]["image_size_source"] == "images"
