"""The IDX file format of (Fashion-)MNIST: :func:`read_idx` parses one file (optionally gzipped), :func:`idx_splits`
reads the train and ``t10k`` splits of a directory into :class:`ArrayDataset` s."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .bundle import ArrayDataset, DataError

__all__ = ["idx_splits", "read_idx"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parses an IDX file (optionally gzipped): 2 zero bytes, dtype code, ndim, then big-endian uint32 dims."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"not an IDX file (bad magic number): {path}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"truncated IDX header: {path}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != count * dtype.itemsize:
        raise DataError(f"IDX size mismatch in {path}: header says {dims}, file has {len(data) - header} data bytes")
    # Copy: frombuffer over bytes is read-only, and torch tensors must own writable memory.
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    """``directory/stem``, else ``directory/stem.gz``, else None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_split(directory: Path, prefix: str) -> ArrayDataset | None:
    """Loads ``{prefix}-images-idx3-ubyte`` + labels from a directory, or None if either file is absent."""
    img_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    if img_path is None or lbl_path is None:
        return None
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"IDX shapes do not match: {img_path} {images.shape} vs {lbl_path} {labels.shape}")
    return ArrayDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels))


def idx_splits(directory: Path) -> tuple[ArrayDataset, ArrayDataset] | None:
    """(train, test) from the ``train-*`` and ``t10k-*`` IDX files in ``directory``; None if one is absent."""
    train, test = _load_idx_split(directory, "train"), _load_idx_split(directory, "t10k")
    return (train, test) if train is not None and test is not None else None
