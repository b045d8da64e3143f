"""The safetensors format read and written with numpy alone (no ``safetensors`` package on the device).

Layout (https://huggingface.co/docs/safetensors): an 8-byte little-endian u64 ``N``, ``N`` bytes of UTF-8 JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` padded with spaces to a
multiple of 8, then the tensors' raw little-endian bytes, offsets relative to the end of the header.

Writing follows the reference implementation byte for byte: compact JSON with ``__metadata__`` first, tensors
ordered by dtype (widest alignment first) then by name, data in the header's order. Metadata keys are sorted, so
equal content gives equal bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._files import write_durable
from .errors import BundleError

#: safetensors dtype → numpy dtype (little-endian). BF16 has no numpy dtype: it is kept as raw bytes.
NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
#: Bytes per element of every dtype this module handles.
ITEM_SIZES: dict[str, int] = {**{k: np.dtype(v).itemsize for k, v in NUMPY_DTYPES.items()}, "BF16": 2}
# The reference writer's dtype order (its enum order); tensors are written widest-first, as it does.
_DTYPE_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"]
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class RawTensor:
    """A tensor as stored: safetensors dtype name, shape and little-endian bytes (any dtype, BF16 included)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> RawTensor:
        """Wrap a numpy array (its dtype must be one of :data:`NUMPY_DTYPES`)."""
        arr = np.asarray(array)
        for name, np_dtype in NUMPY_DTYPES.items():
            if arr.dtype == np.dtype(np_dtype).newbyteorder("=") or arr.dtype == np.dtype(np_dtype):
                data = np.ascontiguousarray(arr, dtype=np.dtype(np_dtype)).tobytes()
                return cls(name, tuple(int(s) for s in arr.shape), data)
        raise BundleError(f"safetensors cannot store numpy dtype {arr.dtype}")

    def numpy(self) -> np.ndarray:
        """The tensor as a numpy array (a copy, native byte order)."""
        if self.dtype not in NUMPY_DTYPES:
            raise BundleError(f"safetensors dtype {self.dtype} has no numpy equivalent")
        arr = np.frombuffer(self.data, dtype=NUMPY_DTYPES[self.dtype]).reshape(self.shape)
        return arr.astype(arr.dtype.newbyteorder("="))


def dumps(tensors: Mapping[str, np.ndarray | RawTensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise tensors (numpy arrays or :class:`RawTensor`) and string metadata to safetensors bytes."""
    raw = {name: t if isinstance(t, RawTensor) else RawTensor.from_numpy(t) for name, t in tensors.items()}
    order = sorted(raw, key=lambda n: (-_DTYPE_ORDER.index(raw[n].dtype), n))
    header: dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise BundleError("safetensors metadata must map strings to strings")
        header["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    offset, chunks = 0, []
    for name in order:
        t = raw[name]
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
        chunks.append(t.data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def loads_raw(data: bytes, what: str = "safetensors data") -> tuple[dict[str, RawTensor], dict[str, str]]:
    """Parse safetensors bytes, validating the header, dtypes, shapes and offsets.

    Raises:
        BundleError: the bytes are not a valid safetensors file.
    """
    if len(data) < 8:
        raise BundleError(f"{what} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise BundleError(f"{what} is not a safetensors file (header length {n})")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{what} has an unreadable safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise BundleError(f"{what} has a safetensors header that is not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BundleError(f"{what} has invalid safetensors metadata")
    body = data[8 + n :]
    tensors, spans = {}, []
    for name, entry in header.items():
        tensors[name] = _tensor(name, entry, body, what)
        spans.append(tuple(entry["data_offsets"]))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise BundleError(f"{what}: tensor data overlaps or leaves gaps")
        end = stop
    if end != len(body):
        raise BundleError(f"{what}: {len(body) - end} bytes after the last tensor (truncated or padded file)")
    return tensors, dict(metadata)


def _tensor(name: str, entry: object, body: bytes, what: str) -> RawTensor:
    if not isinstance(entry, dict) or entry.get("dtype") not in ITEM_SIZES:
        raise BundleError(f"{what}: tensor {name!r} has an unknown dtype")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise BundleError(f"{what}: tensor {name!r} has an invalid shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise BundleError(f"{what}: tensor {name!r} has invalid data offsets")
    begin, stop = offsets
    size = int(np.prod(shape, dtype=np.int64)) * ITEM_SIZES[entry["dtype"]]
    if not 0 <= begin <= stop <= len(body) or stop - begin != size:
        raise BundleError(f"{what}: tensor {name!r} has data offsets that do not fit its shape")
    return RawTensor(entry["dtype"], tuple(shape), bytes(body[begin:stop]))


def read_raw(path: str | Path) -> tuple[dict[str, RawTensor], dict[str, str]]:
    """Read a safetensors file keeping every tensor's bytes as stored.

    Raises:
        BundleError: unreadable or invalid file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"cannot read {path.name}: {e.strerror or e}") from e
    return loads_raw(data, path.name)


def read(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into numpy arrays.

    Returns:
        (tensors, metadata).

    Raises:
        BundleError: unreadable or invalid file, or a dtype numpy has not (BF16: use :func:`read_raw`).

    Example:
        >>> tensors, meta = read("class_stats.safetensors")  # doctest: +SKIP
    """
    raw, metadata = read_raw(path)
    return {name: t.numpy() for name, t in raw.items()}, metadata


def write(
    path: str | Path, tensors: Mapping[str, np.ndarray | RawTensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Write a safetensors file durably (temporary file, fsync, rename); returns the bytes written."""
    data = dumps(tensors, metadata)
    write_durable(path, data)
    return data
