"""The critical-neuron index file: which channels of which layers are critical, overall and per class.

The file is canonical JSON compressed with gzip (mtime 0, so equal content gives equal bytes). Channel sets are
little-endian bitsets (bit i of byte i//8 is channel i) in hex; see docs/index-format.md. Reading validates every
field, and :meth:`CriticalIndex.check_model` binds the index to the model it was sliced from.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts.files import atomic_write_bytes, canonical_json
from .bitsets import pack_bits as pack_bits
from .bitsets import unpack_bits as unpack_bits
from .errors import IndexFileError

INDEX_FORMAT = "edgeslice-critical-index"
INDEX_VERSION = 2
#: Versions this reader understands. Version 1 stored each class's set over all N channels of a layer; version 2
#: stores it only over the layer's critical channels (about half the bytes at θ = 0.95).
READABLE_VERSIONS = (1, 2)


@dataclass
class CriticalIndex:
    """Critical neurons of one model.

    Attributes:
        model_fingerprint: sha256 of the sliced model's weights (see :func:`edgeslice.models.fingerprint`).
        timm_name: the model architecture.
        layers: [{"name", "observe", "channels"}] in forward order.
        critical: layer → (N,) bool, union over classes.
        per_class: layer → (C, N) bool, or None when the strategy has no per-class sets.
        classes: class names, in label order.
        params: strategy, metric, similarity, θ or ratio.
        calibration: how the calibration set was drawn (dataset, per class, seed, samples).
        class_stats: optional :class:`~edgeslice.ondevice.classil.ClassStats` (per-class feature means and a
            pooled covariance for the class-incremental head), a self-versioned, checksummed, size-bounded block;
            readers before it ignore it.
    """

    model_fingerprint: str
    timm_name: str
    layers: list[dict[str, Any]]
    critical: dict[str, torch.Tensor]
    per_class: dict[str, torch.Tensor] | None
    classes: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    version: int = INDEX_VERSION
    class_stats: Any = None

    def to_dict(self) -> dict[str, Any]:
        layers = []
        for spec in self.layers:
            entry = dict(spec)
            entry["critical"] = pack_bits(self.critical[spec["name"]])
            if self.per_class is not None:
                rows = self.per_class[spec["name"]]
                if self.version >= 2:
                    # A class's set is a subset of the union: store bit j = the j-th critical channel only.
                    rows = rows[:, self.critical[spec["name"]].to(torch.bool)]
                entry["per_class"] = [pack_bits(row) for row in rows]
            layers.append(entry)
        out = {
            "format": INDEX_FORMAT,
            "version": self.version,
            "model_fingerprint": self.model_fingerprint,
            "timm_name": self.timm_name,
            "classes": list(self.classes),
            "params": self.params,
            "calibration": self.calibration,
            "layers": layers,
            "summary": {
                "critical_channels": int(sum(int(m.sum()) for m in self.critical.values())),
                "total_channels": int(sum(m.numel() for m in self.critical.values())),
            },
        }
        if self.class_stats is not None:
            out["class_stats"] = self.class_stats.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Any) -> CriticalIndex:
        if not isinstance(d, dict) or d.get("format") != INDEX_FORMAT:
            raise IndexFileError("not an edgeslice critical-neuron index")
        version = d.get("version")
        if version not in READABLE_VERSIONS:
            raise IndexFileError(
                f"unsupported index version {version!r} (this edgeslice reads {', '.join(map(str, READABLE_VERSIONS))})"
            )
        try:
            classes = [str(c) for c in d["classes"]]
            layers, critical, per_class = [], {}, {}
            has_per_class = all("per_class" in e for e in d["layers"])
            for e in d["layers"]:
                name, n = str(e["name"]), int(e["channels"])
                if n <= 0 or name in critical:
                    raise IndexFileError(f"index layer {name!r} is duplicated or has no channels")
                layers.append({"name": name, "observe": str(e["observe"]), "channels": n})
                critical[name] = unpack_bits(e["critical"], n)
                if has_per_class:
                    if len(e["per_class"]) != len(classes):
                        raise IndexFileError(f"index layer {name!r} has per-class sets for another class count")
                    if version == 1:
                        per_class[name] = torch.stack([unpack_bits(h, n) for h in e["per_class"]])
                    else:
                        where = critical[name].nonzero().flatten()
                        rows = torch.zeros(len(classes), n, dtype=torch.bool)
                        for c, h in enumerate(e["per_class"]):
                            rows[c, where] = unpack_bits(h, len(where))
                        per_class[name] = rows
                    if not torch.equal(per_class[name].any(0), critical[name]) and d["params"].get("strategy") in (
                        "semantic",
                        "category",
                    ):
                        raise IndexFileError(f"index layer {name!r}: union of per-class sets differs from its set")
            stats = None
            if d.get("class_stats") is not None:
                from .classstats import ClassStats

                known = {la["name"]: la["channels"] for la in layers}
                stats = ClassStats.from_dict(d["class_stats"], classes=classes, layers=known)
            return cls(
                model_fingerprint=str(d["model_fingerprint"]),
                timm_name=str(d["timm_name"]),
                layers=layers,
                critical=critical,
                per_class=per_class if has_per_class else None,
                classes=classes,
                params=dict(d.get("params", {})),
                calibration=dict(d.get("calibration", {})),
                version=int(version),
                class_stats=stats,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFileError(f"malformed index: {e!r}") from e

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
            gz.write(canonical_json(self.to_dict()))
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write atomically; returns the path."""
        return atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> CriticalIndex:
        """Read and validate an index file (gzip'd or plain JSON)."""
        p = Path(path)
        if not p.is_file():
            raise IndexFileError(f"index file {p} not found")
        raw = p.read_bytes()
        try:
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            d = json.loads(raw.decode("utf-8"))
        except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexFileError(f"cannot read index {p}: {e}") from e
        return cls.from_dict(d)

    def check_model(self, timm_name: str, layers: list[dict[str, Any]], fingerprint: str | None = None) -> None:
        """Refuse an index that was made for another model.

        Args:
            timm_name: the model's architecture.
            layers: the model's sliceable layers (name, channels).
            fingerprint: the model's weight fingerprint; checked when given.
        """
        if timm_name != self.timm_name:
            raise IndexFileError(f"index is for {self.timm_name!r}, not {timm_name!r}")
        mine = [(e["name"], e["channels"]) for e in self.layers]
        theirs = [(e["name"], int(e["channels"])) for e in layers]
        if mine != theirs:
            diff = next(((a, b) for a, b in zip(mine, theirs, strict=False) if a != b), None)
            raise IndexFileError(
                f"index layers do not match the model ({len(mine)} vs {len(theirs)} layers"
                + (f"; first difference {diff[0]} vs {diff[1]}" if diff else "")
                + ")"
            )
        if fingerprint is not None and fingerprint != self.model_fingerprint:
            raise IndexFileError(
                f"index was sliced from model {self.model_fingerprint[:12]}…, not {fingerprint[:12]}… (other weights)"
            )
