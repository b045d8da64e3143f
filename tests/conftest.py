"""Shared fixtures: tiny seeded models and data so the suite stays fast on 2 CPU cores."""

from __future__ import annotations

import json
import os

import pytest
import torch

#: The seed of every training the ``learning`` tests assert on: 0 in the suite. ``benchmarks/audit_learning.py`` runs
#: those tests again with 1 and 2 (and under other instruction sets) to measure how far each value moves.
LEARNING_SEED = int(os.environ.get("EDGESLICE_TEST_SEED", "0"))


@pytest.fixture(scope="session")
def learning_seed() -> int:
    return LEARNING_SEED


@pytest.fixture()
def measure(request, record_property):
    """``measure(name, value, bound)``: note a learned value beside the bound its test asserts (``bound`` is the
    assert's text, e.g. ``"> 0.9"``). It lands in the JUnit XML's properties and, when ``EDGESLICE_AUDIT_LOG`` names
    a file, as one JSON line there: the audit's table of value vs bound per test, setting and seed."""

    def note(name: str, value: float, bound: str) -> float:
        record_property(name, f"{value} (bound {bound})")
        log = os.environ.get("EDGESLICE_AUDIT_LOG")
        if log:
            row = {"test": request.node.nodeid, "name": name, "value": float(value), "bound": bound,
                   "seed": LEARNING_SEED, "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default")}  # fmt: skip
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
        return value

    return note


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Baselines are cached per test session, never in the user's real cache."""
    monkeypatch.setenv("EDGESLICE_HOME", str(tmp_path_factory.getbasetemp() / "edgeslice-home"))
    torch.set_num_threads(1)  # oversubscribed threads stall badly when the machine is shared


@pytest.fixture(scope="session")
def digits():
    from edgeslice.data import load_data

    return load_data("digits", seed=0)


@pytest.fixture()
def tiny_mnv3():
    """An untrained mobilenetv3_small_050 (1 channel, 10 classes) with non-trivial BatchNorm statistics."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", in_chans=1, num_classes=10)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()
