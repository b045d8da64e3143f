"""safetensors written and read by hand, the host fingerprint without torch, the critical index grown by a class."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from edgeslice_device import safetensors_io
from edgeslice_device.checkpoint import fingerprint
from edgeslice_device.errors import BundleError
from edgeslice_device.index_file import grow_index, index_bytes, read_index


def test_safetensors_round_trip_and_byte_compat_with_the_library(tmp_path):
    from safetensors.numpy import load, save

    tensors = {
        "zeta": np.arange(6, dtype=np.int64).reshape(2, 3),
        "alpha": np.linspace(-1, 1, 10, dtype=np.float32),
        "mid": np.eye(3),
        "half": np.ones(3, np.float16),
        "flags": np.array([True, False]),
        "scalar": np.array(2.5, np.float32),
    }
    meta = {"z": "last", "a": "first"}
    data = safetensors_io.write(tmp_path / "t.safetensors", tensors, meta)
    # Same bytes as the reference writer (with one metadata key: it orders several keys by a hash map, we sort).
    assert safetensors_io.dumps(tensors, {"k": "v"}) == save(tensors, metadata={"k": "v"})
    assert safetensors_io.dumps(tensors) == save(tensors)
    assert data == safetensors_io.dumps(tensors, dict(reversed(meta.items())))  # deterministic
    back, back_meta = safetensors_io.read(tmp_path / "t.safetensors")
    assert back_meta == meta and set(back) == set(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name], value)
    assert all(np.array_equal(load(data)[k], v) for k, v in tensors.items())  # the library reads ours
    assert len(struct_header(data)) % 8 == 0


def struct_header(data: bytes) -> bytes:
    return data[8 : 8 + int.from_bytes(data[:8], "little")]


def test_safetensors_bf16_kept_as_stored_and_same_bytes_as_torch_writer():
    from safetensors.torch import save

    state = {"w": torch.randn(3, 2).to(torch.bfloat16), "b": torch.randn(3), "n": torch.tensor(7)}
    data = save(state)
    raw, _ = safetensors_io.loads_raw(data)
    assert raw["w"].dtype == "BF16" and raw["n"].shape == ()
    assert safetensors_io.dumps(raw) == data


@pytest.mark.parametrize("cut", [3, 20, -1])
def test_safetensors_refuses_truncated_data(cut):
    data = safetensors_io.dumps({"a": np.ones(4, np.float32)})
    with pytest.raises(BundleError):
        safetensors_io.loads_raw(data[:cut])


def test_numpy_fingerprint_equals_the_hosts():
    from safetensors.torch import save

    from edgeslice.models import fingerprint as host_fingerprint

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 5)
    )
    model.register_buffer("h16", torch.randn(2, 2).half())
    model.register_buffer("bf", torch.randn(3).to(torch.bfloat16))
    model.register_buffer("scalar", torch.tensor(1.5, dtype=torch.float64))
    raw, _ = safetensors_io.loads_raw(save(model.state_dict()))
    assert fingerprint(raw) == host_fingerprint(model)


def test_grown_index_is_read_by_the_host(base_bundle, tmp_path):
    from edgeslice.index import CriticalIndex

    doc = read_index(base_bundle / "critical_index")
    grown = grow_index(doc, "new", "f" * 64)
    (tmp_path / "idx").write_bytes(index_bytes(grown))
    host = CriticalIndex.load(tmp_path / "idx")
    assert host.classes == [*doc["classes"], "new"] and host.model_fingerprint == "f" * 64
    for name, rows in host.per_class.items():
        assert not rows[-1].any()  # the new class owns no critical channel
        assert torch.equal(rows[:-1], CriticalIndex.load(base_bundle / "critical_index").per_class[name])
    assert index_bytes(doc) == (base_bundle / "critical_index").read_bytes()  # same bytes as the host writes
    assert json.loads(gzip.decompress(index_bytes(grown)))["summary"] == doc["summary"]
