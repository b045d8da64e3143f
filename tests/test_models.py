"""Checkpoints: safetensors + JSON, dense and restructured, and their failure modes."""

from __future__ import annotations

import json

import pytest
import torch

from edgeslice.errors import ModelError
from edgeslice.models import (
    ModelMeta,
    fingerprint,
    load_checkpoint,
    read_meta,
    resolve_device,
    resolve_model_name,
    save_checkpoint,
)
from edgeslice.restructure import restructure_
from edgeslice.slicing import find_layers


def _meta():
    return ModelMeta(
        timm_name="mobilenetv3_small_050",
        classes=[str(i) for i in range(10)],
        in_chans=1,
        input_size=32,
        mean=[0.5],
        std=[0.25],
    )


def test_aliases_and_unknown():
    assert resolve_model_name("mobilenetv3") == "mobilenetv3_small_100"
    assert resolve_model_name("resnet18") == "resnet18"
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        resolve_model_name("nope")


def test_roundtrip_restructured(tiny_mnv3, tmp_path):
    x = torch.randn(3, 1, 32, 32)
    layers = find_layers(tiny_mnv3, x[:1])
    g = torch.Generator().manual_seed(0)
    restructure_(tiny_mnv3, layers, {la.name: torch.rand(la.channels, generator=g) < 0.5 for la in layers}, x[:2])
    meta = save_checkpoint(tiny_mnv3, _meta(), tmp_path / "model.safetensors")
    assert (tmp_path / "model.json").is_file()
    loaded, meta2 = load_checkpoint(tmp_path, expect_model="mobilenetv3_small_050")
    assert meta2.fingerprint == meta.fingerprint == fingerprint(loaded)
    assert meta2.shapes["conv_head"]["in_channels"] == tiny_mnv3.conv_head.in_channels
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny_mnv3(x))
    with pytest.raises(ModelError, match="not 'resnet18'"):
        load_checkpoint(tmp_path, expect_model="resnet18")


def test_truncated_and_tampered(tiny_mnv3, tmp_path):
    save_checkpoint(tiny_mnv3, _meta(), tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)
    # Same size, one weight changed: the fingerprint catches it.
    save_checkpoint(tiny_mnv3, _meta(), tmp_path / "model.safetensors")
    raw = bytearray((tmp_path / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelError, match="fingerprint"):
        load_checkpoint(tmp_path)


def test_bad_sidecar(tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read checkpoint sidecar"):
        read_meta(tmp_path / "model.json")
    (tmp_path / "model.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(ModelError, match="unsupported checkpoint version"):
        read_meta(tmp_path / "model.json")
    with pytest.raises(ModelError, match="not found"):
        read_meta(tmp_path / "missing.safetensors")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA"):
            resolve_device("cuda")
