"""The critical-neuron index file: round trip, determinism, validation."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from edgeslice.errors import IndexFileError
from edgeslice.index import CriticalIndex, pack_bits, unpack_bits


def _index(seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = [{"name": "a", "observe": "a.bn", "channels": 13}, {"name": "b", "observe": "b", "channels": 8}]
    per_class = {la["name"]: torch.rand(3, la["channels"], generator=g) < 0.4 for la in layers}
    return CriticalIndex(
        model_fingerprint="f" * 64,
        timm_name="toy",
        layers=layers,
        critical={k: v.any(0) for k, v in per_class.items()},
        per_class=per_class,
        classes=["x", "y", "z"],
        params={"strategy": "semantic", "metric": "taylor", "theta": 0.95, "similarity": "cka"},
        calibration={"dataset": "digits", "per_class": 10, "seed": 0},
    )


def test_bits_roundtrip():
    m = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    assert pack_bits(m) == "5901"  # little-endian: bits 0,3,4,6 → 0x59; bit 8 → 0x01
    assert torch.equal(unpack_bits("5901", 9), m)
    with pytest.raises(IndexFileError):
        unpack_bits("5903", 9)  # bit past the channel count
    with pytest.raises(IndexFileError):
        unpack_bits("59", 9)


def test_roundtrip_and_deterministic_bytes(tmp_path):
    idx = _index()
    p = idx.save(tmp_path / "critical_index")
    assert p.read_bytes() == _index().to_bytes()  # same inputs, same bytes
    assert p.read_bytes() != _index(seed=1).to_bytes()
    back = CriticalIndex.load(p)
    for name in ("a", "b"):
        assert torch.equal(back.critical[name], idx.critical[name])
        assert torch.equal(back.per_class[name], idx.per_class[name])
    assert back.params == idx.params and back.classes == idx.classes


def test_rejects_other_model():
    idx = _index()
    idx.check_model("toy", [{"name": "a", "channels": 13}, {"name": "b", "channels": 8}], "f" * 64)
    with pytest.raises(IndexFileError, match="index is for 'toy'"):
        idx.check_model("resnet18", [{"name": "a", "channels": 13}, {"name": "b", "channels": 8}])
    with pytest.raises(IndexFileError, match="first difference"):
        idx.check_model("toy", [{"name": "a", "channels": 12}, {"name": "b", "channels": 8}])
    with pytest.raises(IndexFileError, match="other weights"):
        idx.check_model("toy", [{"name": "a", "channels": 13}, {"name": "b", "channels": 8}], "0" * 64)


def test_rejects_malformed(tmp_path):
    p = tmp_path / "idx"
    p.write_bytes(b"garbage")
    with pytest.raises(IndexFileError, match="cannot read index"):
        CriticalIndex.load(p)
    d = _index().to_dict()
    d["layers"][0]["per_class"][0] = d["layers"][0]["per_class"][1]  # union no longer matches
    d["layers"][0]["critical"] = "0000"
    p.write_bytes(gzip.compress(json.dumps(d).encode()))
    with pytest.raises(IndexFileError):
        CriticalIndex.load(p)
    with pytest.raises(IndexFileError, match="not found"):
        CriticalIndex.load(tmp_path / "missing")
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(IndexFileError, match="not an edgeslice"):
        CriticalIndex.load(p)


def _hand_index(version=2):
    crit = torch.zeros(8, dtype=torch.bool)
    crit[[1, 3, 6]] = True
    per = torch.zeros(2, 8, dtype=torch.bool)
    per[0, [1, 6]] = True
    per[1, 3] = True
    return CriticalIndex(
        model_fingerprint="f" * 64,
        timm_name="toy",
        layers=[{"name": "b", "observe": "b", "channels": 8}],
        critical={"b": crit},
        per_class={"b": per},
        classes=["x", "y"],
        params={"strategy": "semantic", "metric": "taylor", "theta": 0.9, "similarity": "cka"},
        version=version,
    )


def test_v2_stores_class_sets_over_critical_channels_only():
    d = _hand_index().to_dict()
    assert d["version"] == 2
    layer = d["layers"][0]
    assert layer["critical"] == "4a"  # channels 1, 3, 6
    # Class x has critical channels #0 and #2 (channels 1 and 6) → 0b101; class y has #1 (channel 3) → 0b010.
    assert layer["per_class"] == ["05", "02"]
    back = CriticalIndex.from_dict(d)
    assert torch.equal(back.per_class["b"], _hand_index().per_class["b"])
    # A critical channel that serves no class breaks the union rule.
    d["layers"][0]["per_class"] = ["05", "00"]
    with pytest.raises(IndexFileError, match="union"):
        CriticalIndex.from_dict(d)


def test_reads_version_1_files():
    d = _hand_index(version=1).to_dict()
    assert d["version"] == 1 and d["layers"][0]["per_class"] == ["42", "08"]  # full-width bitsets
    back = CriticalIndex.from_dict(json.loads(json.dumps(d)))
    assert back.version == 1 and torch.equal(back.per_class["b"], _hand_index().per_class["b"])
    d["version"] = 3
    with pytest.raises(IndexFileError, match="unsupported index version 3"):
        CriticalIndex.from_dict(d)
