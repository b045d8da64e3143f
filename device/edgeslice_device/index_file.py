"""``critical_index``: the host's critical-neuron index (gzip'd canonical JSON), read and grown by one class.

Channel sets are little-endian hex bitsets (channel i is bit i % 8 of byte i // 8). In version 2 a class's set
is stored over the layer's critical channels only, so a new class with no critical channels of its own is a zero
bitset of ceil(K / 8) bytes, K the layer's number of critical channels.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

from ._files import canonical_json
from .errors import BundleError

INDEX_FORMAT = "edgeslice-critical-index"


def read_index(path: str | Path) -> dict[str, Any]:
    """Read and check the index's structure (format, classes, fingerprint, layers and their bitsets).

    Raises:
        BundleError: missing, unreadable or malformed index.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = json.loads((gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8"))
    except FileNotFoundError as e:
        raise BundleError("critical_index is missing") from e
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read critical_index: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise BundleError("critical_index is not an edgeslice critical-neuron index")
    classes, layers = doc.get("classes"), doc.get("layers")
    if (
        not isinstance(classes, list)
        or not isinstance(layers, list)
        or not isinstance(doc.get("model_fingerprint"), str)
    ):
        raise BundleError("critical_index lacks classes, layers or model_fingerprint")
    for layer in layers:
        _critical_count(layer)
        if "per_class" in layer and len(layer["per_class"]) != len(classes):
            raise BundleError(f"critical_index layer {layer.get('name')!r} has per-class sets for another class count")
    return doc


def _critical_count(layer: Any) -> int:
    """K, the number of set bits of a layer's ``critical`` bitset (validated against its channel count)."""
    try:
        n, raw = int(layer["channels"]), bytes.fromhex(layer["critical"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"critical_index has a malformed layer: {e!r}") from e
    if len(raw) != (n + 7) // 8:
        raise BundleError(f"critical_index layer {layer.get('name')!r}: bitset of {len(raw)} bytes for {n} channels")
    return sum(bin(byte).count("1") for byte in raw)


def grow_index(doc: dict[str, Any], name: str, fingerprint: str) -> dict[str, Any]:
    """The index with one more class that has no critical channels of its own, bound to ``fingerprint``.

    The host's own class statistics (``class_stats``, over features this device does not measure) are dropped.
    """
    new = json.loads(json.dumps(doc))
    new["classes"] = [*doc["classes"], name]
    for layer in new["layers"]:
        if "per_class" in layer:
            k = _critical_count(layer)
            layer["per_class"].append("00" * ((k + 7) // 8))
    new["model_fingerprint"] = fingerprint
    if "class_stats" in new:
        del new["class_stats"]
        new.setdefault("params", {})["class_stats"] = "dropped by edgeslice-device add-class"
    return new


def index_bytes(doc: dict[str, Any]) -> bytes:
    """The file bytes: canonical JSON, gzip level 9, mtime 0, no file name (equal content, equal bytes)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(canonical_json(doc))
    return buf.getvalue()
