"""timm models by name: aliases (:func:`resolve_model_name`), :func:`create_model` (optionally from pretrained
weights), the data config a model reads images with (:func:`data_config`, :func:`preprocess_of`), and the torch
device to run on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ModelError
from .weights import read_state_dict

if TYPE_CHECKING:
    from .meta import ModelMeta

__all__ = ["MODEL_ALIASES", "create_model", "data_config", "preprocess_of", "resolve_device", "resolve_model_name"]

#: Short names accepted wherever a timm model name is.
MODEL_ALIASES: dict[str, str] = {
    "mobilenetv3": "mobilenetv3_small_100",
    "mobilenetv3-small": "mobilenetv3_small_100",
    "mobilenetv3-small-050": "mobilenetv3_small_050",
    "mobilenetv3-large": "mobilenetv3_large_100",
    "mobilenetv2": "mobilenetv2_100",
    "efficientnet-b0": "efficientnet_b0",
    "resnet18": "resnet18",
    "mlp": "edgeslice_mlp",
}


def resolve_model_name(name: str) -> str:
    """Map an alias or timm name to a timm model name.

    Raises:
        ModelError: the name is neither an alias nor a timm model.
    """
    import timm

    from .. import mlp  # noqa: F401 - registers edgeslice_mlp with timm (kept lazy: timm is slow to import)

    timm_name = MODEL_ALIASES.get(name.lower(), name)
    if not timm.is_model(timm_name):
        raise ModelError(
            f"unknown model {name!r}: use a timm model name (timm.list_models()) or an alias "
            f"({', '.join(sorted(MODEL_ALIASES))})"
        )
    return timm_name


#: Models whose first layer depends on the image size (they take timm's ``img_size`` argument).
_SIZED_MODELS = {"edgeslice_mlp"}


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    input_size: int | None = None,
    pretrained_file: str | Path | None = None,
    use_ema: bool = False,
) -> nn.Module:
    """Build a timm model for ``num_classes`` outputs and ``in_chans`` input channels.

    With ``pretrained`` (timm's hub) or ``pretrained_file`` (local weights, given to timm as
    ``pretrained_cfg_overlay``), timm loads the weights, adapts the first conv to ``in_chans`` and the classifier is
    reset to ``num_classes`` (a fresh, seeded head, whatever the file's head was).

    Args:
        name: timm name or alias.
        num_classes: classifier outputs.
        in_chans: input channels (1 for grayscale).
        pretrained: fetch timm's pretrained weights (needs network access).
        input_size: image side, for models whose layers depend on it (the MLP); CNNs ignore it.
        pretrained_file: local weights to start from (any format :func:`read_state_dict` reads).
        use_ema: take ``state_dict_ema`` of a timm ``train.py`` checkpoint given as ``pretrained_file``.

    Raises:
        ModelError: unknown model, unreadable or mismatched weights, or the hub is unreachable.

    Example:
        >>> model = create_model("mobilenetv3", num_classes=10, in_chans=1)
    """
    import timm

    timm_name = resolve_model_name(name)
    extra: dict[str, Any] = {"img_size": input_size} if timm_name in _SIZED_MODELS and input_size else {}
    if pretrained_file is not None:
        state = read_state_dict(pretrained_file, use_ema=use_ema)
        head = timm.models.get_pretrained_cfg(timm_name)
        head_key = f"{getattr(head, 'classifier', None) or 'classifier'}.weight"
        # timm drops the file's head when its size differs from the cfg's num_classes: give it the file's size.
        file_classes = int(state[head_key].shape[0]) if head_key in state else num_classes
        extra["pretrained_cfg_overlay"] = {"state_dict": state, "num_classes": file_classes}
        pretrained = True
    try:
        model = timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **extra)
    except Exception as e:  # timm raises many types; the user needs one line
        msg = " ".join(str(e).split())[:300]
        if pretrained and pretrained_file is None:
            raise ModelError(
                f"cannot fetch timm's pretrained weights for {timm_name!r} ({type(e).__name__}: {msg}); offline, "
                f"download them elsewhere and pass --pretrained-file PATH"
            ) from e
        source = f" from {pretrained_file}" if pretrained_file is not None else ""
        raise ModelError(f"cannot create {timm_name!r}{source}: {msg}") from e
    if pretrained_file is not None and extra["pretrained_cfg_overlay"]["num_classes"] == num_classes:
        model.reset_classifier(num_classes)  # same size as the file's head: timm kept it, the contract is a new one
    return model


def data_config(
    timm_name: str,
    *,
    in_chans: int | None = None,
    image_size: int | None = None,
    mean: list[float] | tuple[float, ...] | None = None,
    std: list[float] | tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """timm's data config of a model (``resolve_data_config`` of its pretrained cfg), with overrides.

    Returns:
        ``input_size`` (C, H, W), ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``; mean and std
        have ``in_chans`` values (the cfg's are averaged for one channel, repeated for three from one).

    Raises:
        ModelError: ``mean``/``std`` with a length that fits no channel count.
    """
    import timm
    from timm.data import resolve_data_config

    cfg = timm.models.get_pretrained_cfg(resolve_model_name(timm_name))
    dc = dict(
        resolve_data_config({}, pretrained_cfg=cfg.to_dict() if cfg is not None else {"input_size": (3, 224, 224)})
    )
    c = int(in_chans or dc["input_size"][0])
    side = int(image_size or dc["input_size"][-1])
    dc["input_size"] = (c, side, side)
    for key, given in (("mean", mean), ("std", std)):
        values = tuple(float(v) for v in (given if given is not None else dc[key]))
        if len(values) != c:
            if len(values) == 3 and c == 1:
                values = (sum(values) / 3,)
            elif len(values) == 1:
                values = values * c
            else:
                raise ModelError(f"--{key} needs {c} values (one per input channel), got {len(values)}")
        dc[key] = values
    return dc


def preprocess_of(meta: ModelMeta) -> dict[str, Any]:
    """The data config a checkpoint's model reads images with: timm's config of ``meta.timm_name`` (interpolation,
    crop) at the checkpoint's input size, channels and normalisation. Every command that opens an image folder for
    an existing checkpoint uses it, so slice, evaluate, prune, readapt and increment read a folder exactly as the
    train and compress runs that made the checkpoint did."""
    return data_config(meta.timm_name, in_chans=meta.in_chans, image_size=meta.input_size, mean=meta.mean, std=meta.std)


def resolve_device(device_type: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device_type == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device-type cuda was asked for but no CUDA device is available")
    if device_type not in ("cpu", "cuda"):
        raise ModelError(f"unknown device type {device_type!r} (auto, cpu, cuda)")
    return torch.device(device_type)
