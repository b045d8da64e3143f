"""Checkpoints: ``model.safetensors`` (weights and buffers) and ``model.json`` (:class:`ModelMeta`) side by side.
Channel-pruned models load from those two files alone: the model is rebuilt with ``timm.create_model`` and each layer
is resized to the shapes recorded in the JSON, so nothing is ever unpickled. A plain state dict loads as the model
it is named for (:func:`load_plain_checkpoint`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.files import atomic_write_bytes, canonical_json
from ..errors import ModelError
from .create import create_model, data_config, resolve_model_name
from .meta import ModelMeta, fingerprint, module_shapes
from .weights import TORCH_SUFFIXES, read_state_dict, weights_suffix

__all__ = [
    "checkpoint_paths",
    "has_sidecar",
    "load_checkpoint",
    "load_plain_checkpoint",
    "read_meta",
    "save_checkpoint",
]


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """The (safetensors, json) pair for a checkpoint given as either file or as the folder holding model.*."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if p.suffix == ".json":
        return p.with_suffix(".safetensors"), p
    return p, p.with_suffix(".json")


def has_sidecar(path: str | Path) -> bool:
    """Whether ``path`` is an edgeslice checkpoint (its ``model.json`` is there)."""
    return checkpoint_paths(path)[1].is_file()


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
    if (
        not has_sidecar(path)
        and Path(path).is_file()
        and weights_suffix(Path(path)) in (".safetensors", *TORCH_SUFFIXES)
    ):
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
        from ..routed import install_routed_  # a class-incremental model (edgeslice increment)

        install_routed_(model, head)
    _resize_(model, meta.shapes)
    _load_tensors_(model, state)
    model.eval()
    if meta.fingerprint and fingerprint(model) != meta.fingerprint:
        raise ModelError(f"checkpoint {st_path} does not match the fingerprint in its sidecar (modified or corrupt)")
    return model, meta


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
