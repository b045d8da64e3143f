"""Plain weights files as users have them: :func:`read_state_dict` reads ``.safetensors`` and, with
``torch.load(weights_only=True)`` only, ``.pth/.pt/.pth.tar/.bin``; timm ``train.py`` checkpoints are unwrapped and
``module.`` prefixes (DDP) removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

__all__ = ["TORCH_SUFFIXES", "read_state_dict", "weights_suffix"]

#: Suffixes of plain state dicts read with ``torch.load(weights_only=True)``.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar", ".tar")


def weights_suffix(path: Path) -> str:
    """The format suffix of a weights file, lower-case (``.pth.tar`` counts as one)."""
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
    suffix = weights_suffix(p)
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
