"""``preprocess.json``: how the device turns an image file into the model's input, exactly as the host does.

The host reads images with timm's eval transform: ``Resize(floor(size / crop_pct))`` of the shorter side,
``CenterCrop(size)``, ``ToTensor`` (/255) and ``Normalize(mean, std)``. The same steps are done here with Pillow and
numpy, with the same resampling filter and the same rounding of sizes and crop offsets as torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BundleError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_DEFAULT_CROP_PCT = 0.875  # timm's, when a data config has none


@dataclass(frozen=True)
class Preprocess:
    """The eval transform of a bundle's model.

    Attributes:
        channels: 1 (grayscale) or 3 (RGB).
        input_size: (H, W) of the model input.
        resize: the shorter side is resized to this (aspect kept).
        crop: (H, W) of the centre crop.
        interpolation: ``bilinear``, ``bicubic`` or ``nearest``.
        mean: per-channel mean, on the 0–1 scale.
        std: per-channel standard deviation.
    """

    channels: int
    input_size: tuple[int, int]
    resize: int
    crop: tuple[int, int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("input_size", "crop"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2 or min(value) <= 0:
                raise BundleError(f"preprocess: {name} must be two positive sizes")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.channels not in (1, 3):
            raise BundleError(f"preprocess: channels must be 1 or 3, not {self.channels!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            raise BundleError(f"preprocess: mean and std need {self.channels} values (std > 0)")
        if self.interpolation not in INTERPOLATIONS:
            raise BundleError(f"preprocess: interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if int(self.resize) < min(self.crop):
            raise BundleError("preprocess: resize is smaller than the crop")
        if self.crop != self.input_size:
            raise BundleError("preprocess: the crop must be the model's input size")

    @property
    def color(self) -> str:
        """The Pillow mode images are converted to."""
        return "L" if self.channels == 1 else "RGB"

    @classmethod
    def from_data_config(cls, config: Mapping[str, Any]) -> Preprocess:
        """From a timm data config (``input_size`` (C, H, W), ``interpolation``, ``crop_pct``, ``mean``, ``std``).

        Only timm's ``center`` crop mode is expressible here (resize the shorter side, then crop).

        Example:
            >>> Preprocess.from_data_config({"input_size": (1, 32, 32), "mean": (0.5,), "std": (0.5,)}).resize
            36
        """
        c, h, w = (int(v) for v in config["input_size"])
        if config.get("crop_mode") not in (None, "center"):
            raise BundleError(f"crop mode {config['crop_mode']!r} cannot be described by preprocess.json")
        if h != w:
            raise BundleError("preprocess.json describes square inputs only (timm resizes non-square ones otherwise)")
        crop_pct = float(config.get("crop_pct") or _DEFAULT_CROP_PCT)
        interpolation = str(config.get("interpolation") or "bilinear")
        return cls(c, (h, w), math.floor(h / crop_pct), (h, w), interpolation, config["mean"], config["std"])

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocess.json`` object."""
        return {
            "channels": self.channels,
            "color": self.color,
            "input_size": list(self.input_size),
            "resize": int(self.resize),
            "crop": list(self.crop),
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Preprocess:
        """Parse and validate a ``preprocess.json`` object."""
        try:
            p = cls(
                int(d["channels"]),
                d["input_size"],
                int(d["resize"]),
                d["crop"],
                str(d["interpolation"]),
                d["mean"],
                d["std"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"preprocess.json is malformed: {e!r}") from e
        if d.get("color") != p.color:
            raise BundleError(f"preprocess.json: color {d.get('color')!r} does not fit {p.channels} channel(s)")
        return p

    def __call__(self, image: Any) -> np.ndarray:
        """A Pillow image already in :attr:`color` mode → float32 (C, H, W), normalised."""
        return self.normalize(self.pixels(image))

    def pixels(self, image: Any) -> np.ndarray:
        """A Pillow image already in :attr:`color` mode → uint8 (C, H, W): resized and cropped, not normalised (a
        quarter of the float32 image's memory, for holding many images)."""
        from PIL import Image

        resample = {
            "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST,
        }[self.interpolation]
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        # torchvision's Resize(int): the shorter side becomes `resize`, the longer int(resize * long / short)
        new_short, new_long = self.resize, int(self.resize * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != (w, h):
            image = image.resize(size, resample=resample)
        arr = _center_crop(np.asarray(image, dtype=np.uint8), self.crop)
        return np.ascontiguousarray(arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1))

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., C, H, W) from :meth:`pixels` → float32, scaled to [0, 1] and normalised by mean and std
        (element-wise, so a batch gives exactly the values of its images one by one)."""
        x = pixels.astype(np.float32) / np.float32(255)
        mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _center_crop(arr: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """torchvision's CenterCrop on an (H, W[, C]) array: zero padding when smaller, offsets rounded like it."""
    ch, cw = crop
    h, w = arr.shape[:2]
    if h < ch or w < cw:
        top, left = (ch - h) // 2 if h < ch else 0, (cw - w) // 2 if w < cw else 0
        pad = [(top, max(ch - h - top, 0)), (left, max(cw - w - left, 0))] + [(0, 0)] * (arr.ndim - 2)
        arr = np.pad(arr, pad)
        h, w = arr.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return arr[top : top + ch, left : left + cw]
