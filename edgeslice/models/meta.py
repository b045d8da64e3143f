"""What a checkpoint's weights mean (:class:`ModelMeta`, the JSON sidecar's contents), and the numbers read off a
model: its layer shapes, its weight fingerprint and its parameter count."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["CHECKPOINT_VERSION", "ModelMeta", "count_parameters", "fingerprint", "module_shapes"]

CHECKPOINT_VERSION = 1


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
