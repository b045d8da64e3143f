"""Per-channel normalisation: the batch function a model expects (:func:`normalize`, :func:`make_prepare`), a
bundle's mean/std replaced (:func:`with_normalization`), and the statistics of a set without published ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from .bundle import DataBundle, DataError

if TYPE_CHECKING:
    from ..models import ModelMeta

__all__ = ["channel_stats", "make_prepare", "normalize", "with_normalization"]


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


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalises (B, C, H, W) (or (C, H, W)) images in [0, 1] per channel, on ``x``'s device and dtype."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def make_prepare(meta_or_bundle: ModelMeta | DataBundle) -> Callable[[torch.Tensor], torch.Tensor]:
    """The normalisation a model expects, as a batch function."""
    mean, std = tuple(meta_or_bundle.mean), tuple(meta_or_bundle.std)
    return lambda x: normalize(x, mean, std)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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
