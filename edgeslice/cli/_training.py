"""Options of the commands that train (``train``, ``compress``): initial weights, data loading, fine-tuning."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class AugmentMode(str, Enum):
    """Train-time augmentation of streamed image folders (the built-in in-memory sets have none)."""

    auto = "auto"
    timm = "timm"
    small = "small"
    none = "none"


def parse_floats(value: str | None) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` → ``(0.5, 0.5, 0.5)``; None stays None."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise typer.BadParameter(f"expected numbers separated by commas, got {value!r}") from None
    if not out:
        raise typer.BadParameter("expected at least one number")
    return out


PretrainedOpt = Annotated[
    bool,
    typer.Option(
        "--pretrained",
        help="Start the baseline from timm's pretrained weights (Hugging Face hub; offline: --pretrained-file). "
        "The classifier is reset to the data's classes and the first conv adapted to its channels.",
    ),
]
PretrainedFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--pretrained-file",
        exists=True,
        dir_okay=False,
        help="Start the baseline from these local weights (.safetensors, or .pth/.pt/.pth.tar/.bin read with "
        "torch.load(weights_only=True)); as --pretrained otherwise.",
    ),
]
UseEmaOpt = Annotated[
    bool, typer.Option("--use-ema", help="timm train.py checkpoints: take state_dict_ema instead of state_dict.")
]
MeanOpt = Annotated[
    str | None,
    typer.Option("--mean", help="Normalisation mean, one value per channel (e.g. 0.485,0.456,0.406)."),
]
StdOpt = Annotated[str | None, typer.Option("--std", help="Normalisation std, one value per channel.")]
AugmentOpt = Annotated[
    AugmentMode,
    typer.Option(
        "--augment",
        help="Train-time augmentation of image folders. auto: none up to 64 px, timm above; small: padded random "
        "crop + horizontal flip (the CIFAR recipe); timm: timm's train transform (random resized crop, for photos); "
        "none: off.",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=0, help="Processes decoding image folders [default: CPU count - 1, at most 8]."),
]
AmpOpt = Annotated[bool, typer.Option("--amp", help="Mixed precision (float16 autocast) training, CUDA only.")]
DistillOpt = Annotated[
    bool,
    typer.Option("--distill/--no-distill", help="Distil from the dense model while fine-tuning the restructured one."),
]
DistillTemperatureOpt = Annotated[
    float, typer.Option("--distill-temperature", min=0.01, help="Softmax temperature of the distillation loss.")
]
DistillAlphaOpt = Annotated[
    float,
    typer.Option("--distill-alpha", min=0.0, max=1.0, help="Weight of the distillation term (1-α on the labels)."),
]
DenseControlOpt = Annotated[
    bool,
    typer.Option(
        "--dense-control/--no-dense-control",
        help="With edgeslice's own baseline: also fine-tune the dense model the same way and report its accuracy.",
    ),
]
