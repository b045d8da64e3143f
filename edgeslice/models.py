"""timm model creation, checkpoints (safetensors + JSON sidecar) and model fingerprints.

A checkpoint is two files side by side: ``model.safetensors`` (weights and buffers) and ``model.json`` (what the
weights mean: timm name, classes, input format, normalisation and the shape of every layer). Channel-pruned models
load from those two files alone: the model is rebuilt with ``timm.create_model`` and each layer is resized to the
shapes recorded in the JSON, so nothing is ever unpickled.

Models also come in as users have them: plain state dicts (``.safetensors``, or ``.pth/.pt/.pth.tar/.bin`` read
with ``torch.load(weights_only=True)`` only), timm ``train.py`` checkpoints (``state_dict`` / ``state_dict_ema``),
``module.`` prefixes left by DDP, and timm's pretrained weights (the hub, or a local file).
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


#: Suffixes of plain state dicts read with ``torch.load(weights_only=True)``.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar", ".tar")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".pth.tar" if name.endswith(".pth.tar") else path.suffix.lower()


def read_state_dict(path: str | Path, *, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a plain weights file, as a flat ``name → tensor`` dict on the CPU.

    Reads ``.safetensors``, and ``.pth/.pt/.pth.tar/.bin`` with ``torch.load(weights_only=True)`` only: a file that
    needs code to unpickle is refused. timm ``train.py`` checkpoints are unwrapped (``state_dict``, or
    ``state_dict_ema`` with ``use_ema``; their ``args`` Namespace is the one non-tensor class allowed), and a
    ``module.`` prefix on every key (DDP) is removed.

    Raises:
        ModelError: missing or unreadable file, code in the pickle, no tensors, or ``use_ema`` without EMA weights.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {p} not found")
    suffix = _suffix(p)
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"cannot read {p}: {' '.join(str(e).split())}") from e
    elif suffix in TORCH_SUFFIXES:
        import argparse
        import pickle

        try:
            # timm's train.py stores its argparse.Namespace next to the weights; a Namespace holds plain values only.
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            import re

            found = re.search(r"GLOBAL (\S+)", str(e))
            what = f" (it references {found.group(1)})" if found else ""
            raise ModelError(
                f"refused {p}: it needs code to unpickle{what}, and edgeslice loads weights only "
                "(torch.load(weights_only=True)); save a plain state dict or .safetensors"
            ) from e
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise ModelError(f"cannot read {p}: {' '.join(str(e).split())[:300]}") from e
    else:
        formats = "/".join(TORCH_SUFFIXES)
        raise ModelError(f"unknown weights format {p.name!r}: use .safetensors, or a state dict saved as {formats}")
    if isinstance(obj, dict) and ("state_dict" in obj or "state_dict_ema" in obj):
        key = "state_dict_ema" if use_ema else "state_dict"
        if key not in obj:
            raise ModelError(f"{p} has no {key!r} ({'drop --use-ema' if use_ema else 'pass --use-ema'})")
        obj = obj[key]
    elif use_ema:
        raise ModelError(f"--use-ema: {p} is a plain state dict without 'state_dict_ema'")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # {"model": state_dict, "optimizer": ...}, the other common layout
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{p} is not a state dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def has_sidecar(path: str | Path) -> bool:
    """Whether ``path`` is an edgeslice checkpoint (its ``model.json`` is there)."""
    return checkpoint_paths(path)[1].is_file()


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


def load_plain_checkpoint(
    path: str | Path,
    *,
    expect_model: str,
    use_ema: bool = False,
    image_size: int | None = None,
    mean: list[float] | tuple[float, ...] | None = None,
    std: list[float] | tuple[float, ...] | None = None,
) -> tuple[nn.Module, ModelMeta]:
    """Build ``expect_model`` from a plain state dict: classes and input channels from the tensors.

    The meta's classes are placeholders (``"0"``, ``"1"``, …) until the data names them (the pipeline's
    ``check_against_data``); normalisation and input size come from timm's pretrained cfg unless given.

    Raises:
        ModelError: unreadable file, or weights that do not fit the model.
    """
    import timm

    timm_name = resolve_model_name(expect_model)
    state = read_state_dict(path, use_ema=use_ema)
    cfg = timm.models.get_pretrained_cfg(timm_name)
    first = f"{getattr(cfg, 'first_conv', None) or 'conv_stem'}.weight"
    head = f"{getattr(cfg, 'classifier', None) or 'classifier'}.weight"
    if first not in state or head not in state:
        missing = first if first not in state else head
        raise ModelError(f"{path} is not a {timm_name!r} state dict: it has no {missing!r}")
    num_classes, in_chans = int(state[head].shape[0]), int(state[first].shape[1])
    dc = data_config(timm_name, in_chans=in_chans, image_size=image_size, mean=mean, std=std)
    model = create_model(timm_name, num_classes=num_classes, in_chans=in_chans, input_size=dc["input_size"][-1])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        text = " ".join(str(e).split())
        raise ModelError(f"{path} does not fit {timm_name!r}: {text[:300]}") from e
    model.eval()
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    meta = ModelMeta(
        timm_name=timm_name,
        classes=[str(i) for i in range(num_classes)],
        in_chans=in_chans,
        input_size=int(dc["input_size"][-1]),
        mean=list(dc["mean"]),
        std=list(dc["std"]),
        fingerprint=fingerprint(model),
        info={"weights": {"file": str(path), "sha256": digest, "ema": use_ema}, "plain_state_dict": True},
    )
    return model, meta


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


def load_checkpoint(
    path: str | Path,
    *,
    expect_model: str | None = None,
    use_ema: bool = False,
    image_size: int | None = None,
    mean: list[float] | tuple[float, ...] | None = None,
    std: list[float] | tuple[float, ...] | None = None,
) -> tuple[nn.Module, ModelMeta]:
    """Rebuild a model (dense or channel-pruned) from ``model.safetensors`` + ``model.json``, or a plain state dict.

    A file without a sidecar (``.safetensors`` alone, ``.pth``, ``.pt``, ``.pth.tar``, ``.bin``) is read as a
    plain state dict of ``expect_model`` (:func:`load_plain_checkpoint`; ``use_ema``, ``image_size``, ``mean``
    and ``std`` apply to it only).

    Args:
        path: the ``.safetensors`` file, its ``.json``, or their folder; or a plain weights file.
        expect_model: a timm name or alias the checkpoint must be for.
        use_ema: plain timm ``train.py`` checkpoints: take ``state_dict_ema``.
        image_size: plain state dicts: input side instead of the pretrained cfg's.
        mean: plain state dicts: normalisation mean instead of the pretrained cfg's.
        std: plain state dicts: normalisation std instead of the pretrained cfg's.

    Returns:
        The model in eval mode on the CPU, and its meta.

    Raises:
        ModelError: missing, truncated or inconsistent files, or a checkpoint for another model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, _ = checkpoint_paths(path)
    if not has_sidecar(path) and Path(path).is_file() and _suffix(Path(path)) in (".safetensors", *TORCH_SUFFIXES):
        if expect_model is None:
            raise ModelError(f"{path} is a plain state dict: name its model")
        return load_plain_checkpoint(
            path, expect_model=expect_model, use_ema=use_ema, image_size=image_size, mean=mean, std=std
        )
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
    head = meta.info.get("head") if isinstance(meta.info, dict) else None
    if isinstance(head, dict) and head.get("kind") == "routed":
        from .routed import install_routed_  # a class-incremental model (edgeslice increment)

        install_routed_(model, head)
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
