"""Channel bitsets as hex strings: how the index and the class statistics store (N,) bool masks."""

from __future__ import annotations

import numpy as np
import torch

from .errors import IndexFileError


def pack_bits(mask: torch.Tensor) -> str:
    """(N,) bool → hex of the little-endian bitset."""
    return np.packbits(mask.to(torch.bool).cpu().numpy().astype(np.uint8), bitorder="little").tobytes().hex()


def unpack_bits(hex_bits: str, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`; raises IndexFileError if the length does not fit ``n`` channels."""
    try:
        raw = bytes.fromhex(hex_bits)
    except (ValueError, TypeError) as e:
        raise IndexFileError(f"index bitset is not hex: {e}") from e
    if len(raw) != (n + 7) // 8:
        raise IndexFileError(f"index bitset has {len(raw)} bytes for {n} channels")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise IndexFileError("index bitset has bits set past the channel count")
    return torch.from_numpy(bits[:n].astype(bool))
