"""random / magnitude baselines at a semantic slice's budget, the scan solver path, and coupled-channel reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslice.slicing import SemanticSlicer, find_layers
from edgeslice.slicing.heuristics import magnitude_scores, random_scores
from edgeslice.slicing.solver import linear_scan
from edgeslice.studies.coupling import coupling_report


class TwoLayer(nn.Module):
    """x → Linear(3,5) → ReLU → Linear(5,4) → ReLU → Linear(4,2), with hand-set weight norms."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(5, 4)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(4, 2)
        with torch.no_grad():
            # Row norms of fc1: 1, 5, 2, 4, 3 (rows are multiples of the unit vector e0 / (3,4,0)/5).
            self.fc1.weight.copy_(torch.tensor([[1.0, 0, 0], [3, 4, 0], [0, 0, 2], [0, 4, 0], [3, 0, 0]]))
            # Row norms of fc2: 2, 1, 3, 3 (a tie: the lower index ranks first).
            self.fc2.weight.copy_(torch.tensor([[2.0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 3, 0, 0], [0, 0, 0, 0, 3]]))

    def forward(self, x):
        return self.classifier(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _calibrated(metric="avg"):
    model = TwoLayer().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, generator=gen)
    y = torch.arange(40) % 2
    slicer = SemanticSlicer(model, x[:1], metric=metric)
    slicer.calibrate([(x, y)], num_classes=2)
    return model, slicer


def test_magnitude_hand_computed():
    model, slicer = _calibrated()
    norms = magnitude_scores(model, slicer.layers)
    assert norms["fc1"].tolist() == [1.0, 5.0, 2.0, 4.0, 3.0]
    assert norms["fc2"].tolist() == [2.0, 1.0, 3.0, 3.0]
    r = slicer.slice(strategy="magnitude", budget={"fc1": 2, "fc2": 3})
    assert r.critical["fc1"].tolist() == [False, True, False, True, False]
    assert r.critical["fc2"].tolist() == [True, False, True, True]
    assert r.per_class is None and r.params == {"strategy": "magnitude", "budget": "per-layer counts"}
    r = slicer.slice(strategy="magnitude", ratio=0.5)  # ceil(2.5) = 3, ceil(2) = 2
    assert r.critical["fc1"].tolist() == [False, True, False, True, True]
    assert r.critical["fc2"].tolist() == [False, False, True, True]


@pytest.mark.parametrize("strategy", ["random", "magnitude"])
def test_same_budget_as_semantic(strategy):
    _, slicer = _calibrated("taylor")
    for theta in (0.5, 0.9, 0.99):
        sem = slicer.slice(theta=theta)
        other = slicer.slice(strategy=strategy, budget=sem, seed=3)
        assert other.critical_counts() == sem.critical_counts()
        assert other.params["budget"]["theta"] == theta


def test_random_is_seeded_and_deterministic():
    _, slicer = _calibrated()
    a = slicer.slice(strategy="random", ratio=0.4, seed=7)
    b = slicer.slice(strategy="random", ratio=0.4, seed=7)
    assert all(torch.equal(a.critical[n], b.critical[n]) for n in a.critical)
    layers = slicer.layers
    differ = [
        any(not torch.equal(random_scores(layers, s)[n], random_scores(layers, 0)[n]) for n in a.critical)
        for s in (1, 2)
    ]
    assert all(differ)
    # Each layer's ranks depend on (seed, position) only.
    assert torch.equal(random_scores(layers, 7)["fc2"], random_scores(layers, 7)["fc2"])
    with pytest.raises(ValueError, match="no entry for layer 'fc2'"):
        slicer.slice(strategy="random", budget={"fc1": 1})
    with pytest.raises(ValueError, match="outside 0..4"):
        slicer.slice(strategy="random", budget={"fc1": 1, "fc2": 9})
    with pytest.raises(ValueError, match="ratio"):
        slicer.slice(strategy="magnitude")


def test_scan_solver_path_equals_exact_on_real_layers(tiny_mnv3):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 32, 32, generator=gen)
    y = torch.arange(40) % 4
    slicer = SemanticSlicer(tiny_mnv3, x[:1], metric="avg", similarity="cka")
    slicer.layers = [la for la in slicer.layers if la.channels <= 72]  # keep the O(N³) reference scan quick
    slicer.calibrate([(x[:20], y[:20]), (x[20:], y[20:])], num_classes=4)
    thetas = [0.9, 0.95, 0.99]
    exact = slicer.k_table(thetas)
    scan = slicer.k_table(thetas, solver="scan", interval=1)
    assert len(exact) > 20
    for name in exact:
        assert torch.equal(exact[name], scan[name]), name
    a = slicer.slice(theta=0.95)
    b = slicer.slice(theta=0.95, solver="scan", interval=1)
    assert all(torch.equal(a.per_class[n], b.per_class[n]) for n in a.per_class)
    assert b.params["solver"] == "scan" and b.params["interval"] == 1 and "solver" not in a.params
    # Interval 8 stops at a multiple of 8 (or N) at or after the exact k.
    coarse = slicer.k_table(thetas, solver="scan", interval=8)
    for la in slicer.layers:
        k8, k1 = coarse[la.name], exact[la.name]
        assert bool(((k8 % 8 == 0) | (k8 == la.channels)).all())
        assert bool((k8 >= k1).all())
    order = slicer.curves()[slicer.layers[0].name][0][0]
    g = slicer._class_gram(slicer.layers[0].name, 0)
    assert linear_scan(g, order, 0.95, 1) == int(exact[slicer.layers[0].name][0, 1])
    with pytest.raises(ValueError, match="valid: exact, scan"):
        slicer.slice(theta=0.9, solver="bisect")


def test_coupling_report(tiny_mnv3):
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    layers = find_layers(tiny_mnv3, x[:1])
    keep = {la.name: torch.zeros(la.channels, dtype=torch.bool) for la in layers}
    keep["blocks.1.0.conv_pw"][3] = True  # critical only in the expansion conv
    keep["blocks.1.0.conv_pwl"][[0, 1]] = True  # and two channels of the residual stage's projection
    report = coupling_report(tiny_mnv3, layers, keep, x)
    rows = {r["layer"]: r for r in report.layers}
    # The depthwise conv shares the expansion conv's channels: channel 3 is kept only through coupling.
    assert rows["blocks.1.0.conv_dw"]["critical"] == 0 and report.effective_keep["blocks.1.0.conv_dw"][3]
    assert rows["blocks.1.0.conv_dw"]["coupled"] >= 1
    # The next block's projection writes into the same residual stream: channels 0 and 1 survive there too.
    assert bool(report.effective_keep["blocks.1.1.conv_pwl"][[0, 1]].all())
    assert rows["blocks.1.1.conv_pwl"]["coupled"] >= 2
    stage = next(g for g in report.groups if "blocks.1.0.conv_pwl" in g["members"])
    assert "blocks.1.1.conv_pwl" in stage["members"] and stage["kept"] >= 2
    for g in report.groups:
        assert g["kept"] + g["removed"] == g["channels"] and g["kept"] >= 1
    assert report.coupled_channels == sum(r["coupled"] for r in report.layers)
    assert all(r["kept"] == r["critical"] + r["coupled"] for r in report.layers)
