"""Budget measurements on hand-built networks, and the θ search on a synthetic monotone cost curve."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslice.deploy.budget import count_macs, explain_failure, measure_model, search_theta
from edgeslice.deploy.devices import DeviceProfile


class Toy(nn.Module):
    """conv 1→4 (3x3, pad 1) → depthwise 4→4 (3x3, pad 1) → global pool → linear 4→3, on 1x8x8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(self.dw(self.conv(x))).flatten(1))


def test_count_macs_by_hand():
    macs, peak, layer = count_macs(Toy(), torch.zeros(1, 1, 8, 8))
    # conv: 4·8·8 outputs × 1·3·3 = 2304; depthwise: 256 × (4/4)·9 = 2304; linear: 3 × 4 = 12.
    assert macs == 2304 + 2304 + 12
    # Largest (input + output) of a leaf: the depthwise conv, 256 in + 256 out.
    assert (peak, layer) == (512, "dw")


def test_measure_model_precisions():
    params = 4 * 9 + 4 + 4 * 9 + 4 * 3 + 3
    fp32 = measure_model(Toy(), (1, 8, 8), "fp32")
    int8 = measure_model(Toy(), (1, 8, 8), "int8")
    assert fp32["params"] == params and fp32["weight_bytes"] == 4 * params and int8["weight_bytes"] == params
    assert fp32["peak_activation_bytes"] == 4 * 512 and int8["peak_activation_bytes"] == 512
    assert fp32["macs"] == int8["macs"] == 4620
    with pytest.raises(ValueError, match="unknown precision"):
        measure_model(Toy(), (1, 8, 8), "fp16")


def _profile(flash: int, precisions=("fp32", "int8")) -> DeviceProfile:
    return DeviceProfile(
        name="t", description="", flash_bytes=flash, ram_bytes=10**9, latency_s=10.0,
        macs_per_s={"fp32": 1e9, "int8": 1e9}, macs_per_s_source="test", precisions=tuple(precisions),
    )  # fmt: skip


THETAS = [0.8, 0.85, 0.9, 0.95, 0.99]


def _cost(calls: list):
    """Model size grows with θ (1000 bytes per 0.01 above 0.7); int8 is a quarter of fp32."""

    def measure(theta: float, precision: str) -> dict:
        calls.append((theta, precision))
        size = int(round((theta - 0.7) * 100_000)) * (4 if precision == "fp32" else 1)
        return {"precision": precision, "model_bytes": size, "weight_bytes": 0, "peak_activation_bytes": 0, "macs": 1}

    return measure


def test_search_picks_largest_fitting_theta():
    calls: list = []
    # fp32 sizes: 40k, 60k, 80k, 100k, 116k; int8 a quarter. Flash 85k: fp32 fits up to 0.9, int8 everything.
    best, tried = search_theta(_profile(85_000), _cost(calls), thetas=THETAS, precisions=["fp32"])
    assert (best.theta, best.precision) == (0.9, "fp32")
    assert all(c.ok == (c.theta <= 0.9) for c in tried)
    assert len(calls) <= 4  # binary search, not a scan
    # With int8 allowed, the precision that keeps more channels wins.
    best, _ = search_theta(_profile(85_000), _cost([]), thetas=THETAS)
    assert (best.theta, best.precision) == (0.99, "int8")
    # Equal θ: fp32 (no quantization error) wins the tie.
    best, _ = search_theta(_profile(10**6), _cost([]), thetas=THETAS)
    assert (best.theta, best.precision) == (0.99, "fp32")
    # A profile without fp32 is searched in int8 only.
    best, tried = search_theta(_profile(10**6, ["int8"]), _cost([]), thetas=THETAS)
    assert best.precision == "int8" and {c.precision for c in tried} == {"int8"}


def test_search_nothing_fits_names_the_budget():
    best, tried = search_theta(_profile(5_000), _cost([]), thetas=THETAS)
    assert best is None
    msg = explain_failure(_profile(5_000), tried)
    assert "θ=0.8" in msg and "flash" in msg and "over by" in msg
    assert "fp32:" in msg and "int8:" in msg and "\n" not in msg
