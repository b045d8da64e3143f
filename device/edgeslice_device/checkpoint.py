"""The host checkpoint in a bundle (``model.safetensors`` + ``model.json``), kept in step with a device-grown head.

The fingerprint is the host's (``edgeslice.models.fingerprint``), computed from the stored bytes without torch:
sha256 over the state dict in sorted name order, for each tensor its name, ``str(tensor.dtype)`` (``torch.float32``),
``str(tuple(shape))`` and raw little-endian bytes (BF16 as stored, which is the host's int16 view).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._files import read_json
from .errors import BundleError
from .safetensors_io import RawTensor, read_raw

#: safetensors dtype → the string torch prints for the dtype it loads as.
TORCH_DTYPE_NAMES: dict[str, str] = {
    "F64": "torch.float64",
    "F32": "torch.float32",
    "F16": "torch.float16",
    "BF16": "torch.bfloat16",
    "I64": "torch.int64",
    "I32": "torch.int32",
    "I16": "torch.int16",
    "I8": "torch.int8",
    "U8": "torch.uint8",
    "U16": "torch.uint16",
    "U32": "torch.uint32",
    "U64": "torch.uint64",
    "BOOL": "torch.bool",
}


def fingerprint(tensors: Mapping[str, RawTensor]) -> str:
    """The host's model fingerprint of a state dict read with :func:`~edgeslice_device.safetensors_io.read_raw`."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(name.encode())
        h.update(TORCH_DTYPE_NAMES[t.dtype].encode())
        h.update(str(tuple(int(s) for s in t.shape)).encode())
        h.update(t.data)
    return h.hexdigest()


def read_checkpoint(folder: str | Path) -> tuple[dict[str, RawTensor], dict[str, str], dict[str, Any]]:
    """(state dict, safetensors metadata, ``model.json``) of the checkpoint in ``folder``.

    Raises:
        BundleError: a file is missing or invalid, or the weights do not match the sidecar's fingerprint.
    """
    folder = Path(folder)
    meta = read_json(folder / "model.json", "checkpoint sidecar")
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list):
        raise BundleError("model.json is not an edgeslice checkpoint sidecar (no classes)")
    if not (folder / "model.safetensors").is_file():
        raise BundleError("model.safetensors is missing")
    tensors, st_meta = read_raw(folder / "model.safetensors")
    if fingerprint(tensors) != meta.get("fingerprint"):
        raise BundleError("model.safetensors does not match the fingerprint in model.json (modified or corrupt)")
    return tensors, st_meta, meta


def grow_checkpoint(
    tensors: Mapping[str, RawTensor],
    st_meta: Mapping[str, str],
    meta: Mapping[str, Any],
    *,
    classifier: Mapping[str, str],
    weight: np.ndarray,
    bias: np.ndarray,
    classes: list[str],
) -> tuple[dict[str, RawTensor], dict[str, str], dict[str, Any]]:
    """The checkpoint with a new classifier: weight/bias replaced (float32), fingerprint and sidecar updated.

    Args:
        tensors: the state dict as stored.
        st_meta: the safetensors metadata (its ``fingerprint`` is replaced, the rest kept).
        meta: ``model.json``.
        classifier: ``{"weight": name, "bias": name}`` of the classifier's tensors.
        weight: (C, d) new weights.
        bias: (C,) new bias.
        classes: the new class list (C names).

    Returns:
        (tensors, safetensors metadata, model.json), new objects.
    """
    w_name, b_name = classifier["weight"], classifier["bias"]
    for name in (w_name, b_name):
        if name not in tensors:
            raise BundleError(f"model.safetensors has no classifier tensor {name!r}")
    old_w = tensors[w_name]
    if len(old_w.shape) != 2 or old_w.shape[1] != weight.shape[1]:
        raise BundleError(
            f"classifier {w_name!r} has shape {old_w.shape}; the new head reads {weight.shape[1]} features"
        )
    new = dict(tensors)
    new[w_name] = RawTensor.from_numpy(np.asarray(weight, dtype=np.float32))
    new[b_name] = RawTensor.from_numpy(np.asarray(bias, dtype=np.float32))
    fp = fingerprint(new)
    new_meta = dict(meta)
    new_meta["fingerprint"] = fp
    new_meta["classes"] = list(classes)
    module = w_name.rsplit(".", 1)[0]
    shapes = {k: dict(v) for k, v in (meta.get("shapes") or {}).items()}
    if module in shapes:
        shapes[module]["out_features"] = len(classes)
        new_meta["shapes"] = shapes
    return new, {**dict(st_meta), "fingerprint": fp}, new_meta
