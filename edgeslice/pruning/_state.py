"""Resume state of an iterative pruning run: the masked model after the last finished iteration, without pickle.

A state folder holds ``iter-<k>.safetensors`` (the reparametrized state dict: ``weight_orig``, ``weight_mask`` and
every other tensor) and ``state.json`` (the run's identity, its records so far, and which tensor file is current,
with its sha256). The tensors are written first and ``state.json`` is then replaced atomically, so a run killed at
any moment leaves either the previous iteration's state or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..artifacts.files import atomic_write_bytes, atomic_write_json, sha256_file
from ..errors import EdgesliceError

STATE_VERSION = 1
_STATE_FILE = "state.json"


def state_dir_for(out: str | Path) -> Path:
    """The hidden folder beside ``out`` where ``edgeslice prune --out OUT`` keeps its resume state."""
    out = Path(out).resolve()  # so that "." or "out/" still name a sibling folder
    return out.parent / f".{out.name}.prune-state"


def save_state(folder: Path, *, identity: dict[str, Any], progress: dict[str, Any], model: nn.Module) -> None:
    """Writes the model's (masked) state dict and ``progress`` as the current resume point."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    done = len(progress.get("history", []))
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    name = f"iter-{done}.safetensors"
    data = save(tensors)
    atomic_write_bytes(folder / name, data)
    doc = {
        "version": STATE_VERSION,
        "identity": identity,
        "progress": progress,
        "tensors": name,
        "sha256": hashlib.sha256(data).hexdigest(),  # of the bytes written (torchrun: only rank 0 writes them)
    }
    atomic_write_json(folder / _STATE_FILE, doc)
    for stale in folder.glob("iter-*.safetensors"):
        if stale.name != name:
            stale.unlink(missing_ok=True)


def load_state(folder: Path, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """Reads the current resume point, or returns None when ``folder`` holds none.

    Raises:
        EdgesliceError: If the state is unreadable or was made by a run with other settings.
    """
    from safetensors.torch import load_file

    path = folder / _STATE_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        tensors_path = folder / doc["tensors"]
        if doc.get("version") != STATE_VERSION or sha256_file(tensors_path) != doc["sha256"]:
            raise ValueError("version or checksum mismatch")
        tensors = load_file(str(tensors_path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EdgesliceError(f"cannot resume from {folder}: unreadable state ({e}); run without --resume") from e
    if doc["identity"] != identity:
        changed = sorted(k for k in set(identity) | set(doc["identity"]) if identity.get(k) != doc["identity"].get(k))
        raise EdgesliceError(
            f"cannot resume from {folder}: it was made with other settings ({', '.join(changed)}); "
            "run without --resume to start over"
        )
    return doc["progress"], tensors


def clear_state(folder: Path) -> None:
    """Removes the state folder (after a successful run)."""
    shutil.rmtree(folder, ignore_errors=True)


def restore_masked_(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Loads a saved reparametrized state dict into a plain model of the same architecture."""
    from .masks import _refresh_weight, apply_masks_, prunable_weights

    masks = {}
    for name, _ in prunable_weights(model):
        key = f"{name}.weight_mask" if name else "weight_mask"
        if key not in tensors:
            raise EdgesliceError(f"resume state lacks {key}; run without --resume")
        masks[name] = tensors[key].bool()
    apply_masks_(model, masks)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise EdgesliceError(f"resume state does not fit the model ({str(e).splitlines()[0]})") from e
    for _, module in prunable_weights(model):
        _refresh_weight(module)
