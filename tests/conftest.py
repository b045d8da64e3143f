"""Shared fixtures: tiny seeded models and data so the suite stays fast on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch


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
