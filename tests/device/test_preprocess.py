"""The device reads an image exactly as the host does (timm's eval transform on the host's decoded image).

Tolerance 1e-5: both sides resize with the same Pillow filter on the same uint8 pixels and crop at the same offsets,
so the uint8 crops are identical; what remains is float32 arithmetic of /255 and (x − mean)/std in possibly other
order or fused form (a few ulps of values within ±3, ≈ 1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
from edgeslice_device.errors import BundleError
from edgeslice_device.images import list_images, read_image
from edgeslice_device.preprocess import Preprocess
from PIL import Image


def _host(path, config, gray):
    from timm.data import create_transform

    from edgeslice.data import open_image

    t = create_transform(
        input_size=config["input_size"], interpolation=config["interpolation"], crop_pct=config["crop_pct"],
        mean=config["mean"], std=config["std"],
    )  # fmt: skip
    return t(open_image(path, gray)).numpy()


@pytest.mark.parametrize(
    ("mode", "size", "config"),
    [
        ("RGB", (37, 23), {"input_size": (3, 20, 20), "interpolation": "bicubic", "crop_pct": 0.9,
                            "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}),
        ("L", (16, 16), {"input_size": (1, 16, 16), "interpolation": "bilinear", "crop_pct": 0.875,
                          "mean": (0.5,), "std": (0.25,)}),
        ("L", (19, 40), {"input_size": (1, 12, 12), "interpolation": "nearest", "crop_pct": 1.0,
                          "mean": (0.1,), "std": (0.3,)}),
    ],
)  # fmt: skip
def test_matches_timm_eval_transform(tmp_path, mode, size, config):
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    pre = Preprocess.from_data_config(config)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    ours = read_image(path, pre)
    ref = _host(path, config, gray=mode == "L")
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_exif_orientation_applied_like_the_host(tmp_path):
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (30, 18, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    path = tmp_path / "photo.jpg"
    im.save(path, exif=exif, quality=95)
    config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 0.875, "mean": (0.5,) * 3,
              "std": (0.5,) * 3}  # fmt: skip
    np.testing.assert_allclose(
        read_image(path, Preprocess.from_data_config(config)), _host(path, config, False), atol=1e-5
    )


def test_refuses_wrong_channels_corrupt_and_too_few(tmp_path):
    gray = Preprocess.from_data_config({"input_size": (1, 8, 8), "mean": (0.5,), "std": (0.5,)})
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "colour.jpg")
    with pytest.raises(BundleError, match=r"colour.jpg is colour .* reads grayscale"):
        read_image(tmp_path / "colour.jpg", gray)
    rgb = Preprocess.from_data_config({"input_size": (3, 8, 8), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    Image.new("L", (8, 8), 100).save(tmp_path / "gray.png")
    with pytest.raises(BundleError, match=r"gray.png is grayscale .* reads RGB"):
        read_image(tmp_path / "gray.png", rgb)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BundleError, match="unreadable image .*broken.png"):
        read_image(tmp_path / "broken.png", gray)
    with pytest.raises(BundleError, match="has 3 images; at least 5"):
        list_images(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="has no images"):
        list_images(tmp_path / "empty")
