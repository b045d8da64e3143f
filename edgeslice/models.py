"""timm model creation, checkpoints (safetensors + JSON sidecar) and model fingerprints.

A checkpoint is two files side by side: ``model.safetensors`` (weights and buffers) and ``model.json`` (what the
weights mean: timm name, classes, input format, normalisation and the shape of every layer). Channel-pruned models
load from those two files alone: the model is rebuilt with ``timm.create_model`` and each layer is resized to the
shapes recorded in the JSON, so nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifacts.files import atomic_write_bytes, canonical_json
from .errors import ModelError

CHECKPOINT_VERSION = 1

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

    from . import mlp  # noqa: F401 - registers edgeslice_mlp with timm (kept lazy: timm is slow to import)

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
    name: str, *, num_classes: int, in_chans: int, pretrained: bool = False, input_size: int | None = None
) -> nn.Module:
    """Build a timm model for ``num_classes`` outputs and ``in_chans`` input channels.

    Args:
        name: timm name or alias.
        num_classes: classifier outputs.
        in_chans: input channels (1 for grayscale).
        pretrained: fetch timm's pretrained weights (needs network access).
        input_size: image side, for models whose layers depend on it (the MLP); CNNs ignore it.

    Example:
        >>> model = create_model("mobilenetv3", num_classes=10, in_chans=1)
    """
    import timm

    timm_name = resolve_model_name(name)
    try:
        extra = {"img_size": input_size} if timm_name in _SIZED_MODELS and input_size else {}
        return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **extra)
    except Exception as e:  # timm raises many types; the user needs one line
        raise ModelError(f"cannot create {timm_name!r}: {e}") from e


@dataclass
class ModelMeta:
    """What a checkpoint's weights mean; serialised as the JSON sidecar."""

    timm_name: str
    classes: list[str]
    in_chans: int
    input_size: int
    mean: list[float]
    std: list[float]
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)
    fingerprint: str = ""
    restructured: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    version: int = CHECKPOINT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        if not isinstance(d, dict):
            raise ModelError("checkpoint sidecar is not a JSON object")
        if d.get("version") != CHECKPOINT_VERSION:
            raise ModelError(f"unsupported checkpoint version {d.get('version')!r} (expected {CHECKPOINT_VERSION})")
        required = ("timm_name", "classes", "in_chans", "input_size", "mean", "std")
        missing = [k for k in required if k not in d]
        if missing:
            raise ModelError(f"checkpoint sidecar lacks {', '.join(missing)}")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


# Attributes that define a layer's shape; enough to rebuild a channel-pruned Conv2d/Linear/BatchNorm.
_SHAPE_ATTRS: dict[type, tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
}


def module_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shape attributes of every conv, linear and batch-norm layer, keyed by module name."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        for kind, attrs in _SHAPE_ATTRS.items():
            if isinstance(module, kind):
                shapes[name] = {a: int(getattr(module, a)) for a in attrs}
    return shapes


def fingerprint(model: nn.Module) -> str:
    """sha256 over every tensor of the state dict (name, dtype, shape, bytes), in sorted name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def count_parameters(model: nn.Module, *, nonzero: bool = False) -> int:
    """Number of parameters (or of non-zero parameters)."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """The (safetensors, json) pair for a checkpoint given as either file or as the folder holding model.*."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    return p, p.with_suffix(".json")


def save_checkpoint(model: nn.Module, meta: ModelMeta, path: str | Path) -> ModelMeta:
    """Write ``model.safetensors`` + ``model.json`` (atomically); returns the meta with shapes and fingerprint set.

    Args:
        model: the model to save (any device).
        meta: description of the model; ``shapes`` and ``fingerprint`` are filled in here.
        path: the ``.safetensors`` file, or a folder (then ``model.safetensors`` inside it).
    """
    from safetensors.torch import save

    st_path, json_path = checkpoint_paths(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta.shapes = module_shapes(model)
    meta.fingerprint = fingerprint(model)
    atomic_write_bytes(st_path, save(state, metadata={"fingerprint": meta.fingerprint}))
    atomic_write_bytes(json_path, canonical_json(meta.to_dict()))
    return meta


def read_meta(path: str | Path) -> ModelMeta:
    """Read and validate only the JSON sidecar of a checkpoint."""
    _, json_path = checkpoint_paths(path)
    if not json_path.is_file():
        raise ModelError(f"checkpoint sidecar {json_path} not found (a checkpoint is model.safetensors + model.json)")
    try:
        return ModelMeta.from_dict(json.loads(json_path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise ModelError(f"cannot read checkpoint sidecar {json_path}: {e}") from e


def _resize_(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> None:
    """Set the shape attributes recorded in ``shapes`` on the model's layers (weights are replaced on load)."""
    modules = dict(model.named_modules())
    for name, attrs in shapes.items():
        module = modules.get(name)
        if module is None:
            raise ModelError(f"checkpoint names a layer {name!r} that the model does not have")
        for attr, value in attrs.items():
            setattr(module, attr, int(value))


def _load_tensors_(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model, replacing tensors whose shape changed (channel-pruned layers)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    modules = dict(model.named_modules())
    for key, value in state.items():
        module_name, _, attr = key.rpartition(".")
        module = modules[module_name]
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(value.clone(), requires_grad=module._parameters[attr].requires_grad)
        else:
            module._buffers[attr] = value.clone()


def load_checkpoint(path: str | Path, *, expect_model: str | None = None) -> tuple[nn.Module, ModelMeta]:
    """Rebuild a model (dense or channel-pruned) from ``model.safetensors`` + ``model.json``.

    Args:
        path: the ``.safetensors`` file, its ``.json``, or their folder.
        expect_model: a timm name or alias the checkpoint must be for.

    Returns:
        The model in eval mode on the CPU, and its meta.

    Raises:
        ModelError: missing, truncated or inconsistent files, or a checkpoint for another model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, _ = checkpoint_paths(path)
    meta = read_meta(path)
    if expect_model is not None:
        wanted = resolve_model_name(expect_model)
        if wanted != meta.timm_name:
            raise ModelError(f"checkpoint {st_path} is a {meta.timm_name!r}, not {wanted!r}")
    if not st_path.is_file():
        raise ModelError(f"checkpoint weights {st_path} not found")
    try:
        state = load_file(str(st_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot read checkpoint {st_path}: {e}") from e
    model = create_model(
        meta.timm_name, num_classes=meta.num_classes, in_chans=meta.in_chans, input_size=meta.input_size
    )
    _resize_(model, meta.shapes)
    _load_tensors_(model, state)
    model.eval()
    if meta.fingerprint and fingerprint(model) != meta.fingerprint:
        raise ModelError(f"checkpoint {st_path} does not match the fingerprint in its sidecar (modified or corrupt)")
    return model, meta


def resolve_device(device_type: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if device_type == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device-type cuda was asked for but no CUDA device is available")
    if device_type not in ("cpu", "cuda"):
        raise ModelError(f"unknown device type {device_type!r} (auto, cpu, cuda)")
    return torch.device(device_type)
