"""SemanticSlicer end to end on a toy network whose right answer is known by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from edgeslice.slicing import SemanticSlicer, find_layers
from edgeslice.slicing.metrics import class_scores


def _toy_batches():
    # Class 0 sees orthogonal channels with energies 16, 9, 4, 1 (sim_k = sqrt(cumsum/30)).
    # Class 1 sees only channel 3 strongly and channel 2 weakly.
    x0 = torch.diag(torch.tensor([2.0, math.sqrt(3), math.sqrt(2), 1.0]))
    x1 = torch.tensor([[0.0, 0.0, 0.1, 3.0], [0.0, 0.0, 0.0, 3.0]])
    return [(x0, torch.zeros(4, dtype=torch.long)), (x1, torch.ones(2, dtype=torch.long))]


def test_toy_semantic_slice_per_theta(toy):
    model = toy
    slicer = SemanticSlicer(model, torch.zeros(1, 4), metric="avg", similarity="gram")
    assert [la.name for la in slicer.layers] == ["hidden"]
    assert slicer.layers[0].observe == "act"
    slicer.calibrate(_toy_batches(), num_classes=2)
    # sim_k for class 0 = sqrt(16/30, 25/30, 29/30, 1) = 0.730, 0.913, 0.983, 1.
    # Class 1: channel 3 carries all but ~1e-5 of the energy, so k=1 for any θ ≤ 0.99.
    r = slicer.slice(theta=0.95)
    assert r.per_class["hidden"].tolist() == [[True, True, True, False], [False, False, False, True]]
    assert r.critical["hidden"].tolist() == [True, True, True, True]
    r = slicer.slice(theta=0.9)
    assert r.per_class["hidden"].tolist() == [[True, True, False, False], [False, False, False, True]]
    assert r.critical["hidden"].tolist() == [True, True, False, True]
    r = slicer.slice(theta=0.7)
    assert r.critical["hidden"].tolist() == [True, False, False, True]
    ks = slicer.k_table([0.5, 0.8, 0.9, 0.95, 0.99])["hidden"]
    assert ks[0].tolist() == [1, 2, 2, 3, 4]
    assert ks[1].tolist() == [1, 1, 1, 1, 1]


def test_toy_strategies_and_metrics(toy):
    model = toy
    slicer = SemanticSlicer(model, torch.zeros(1, 4), metric="avg")
    stats = slicer.calibrate(_toy_batches(), num_classes=2)
    avg = class_scores(stats.per_layer["hidden"], "avg")
    assert torch.allclose(avg[0], torch.tensor([0.5, math.sqrt(3) / 4, math.sqrt(2) / 4, 0.25], dtype=torch.float64))
    r = slicer.slice(strategy="global", ratio=0.5)
    # Over all 6 samples channel 3 has the highest mean (7/6), then channel 0 (2/6).
    assert r.critical["hidden"].tolist() == [True, False, False, True]
    assert r.per_class is None
    r = slicer.slice(strategy="category", ratio=0.25)
    assert r.critical["hidden"].tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="theta"):
        slicer.slice(theta=1.5)
    with pytest.raises(ValueError, match="valid"):
        slicer.slice(theta=0.9, strategy="magic")


def test_taylor_scores_match_autograd(toy):
    torch.manual_seed(0)
    model = toy
    nn.init.normal_(model.classifier.weight)
    x = torch.rand(5, 4)
    y = torch.tensor([0, 1, 0, 1, 1])
    slicer = SemanticSlicer(model, x[:1], metric="taylor")
    stats = slicer.calibrate([(x, y)], num_classes=2)
    a = torch.relu(x).requires_grad_(True)
    loss = nn.functional.cross_entropy(model.classifier(a), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, a)
    per_sample = (a * g).abs().detach().double()
    got = class_scores(stats.per_layer["hidden"], "taylor")
    assert torch.allclose(got[0], per_sample[y == 0].mean(0))
    assert torch.allclose(got[1], per_sample[y == 1].mean(0))


def test_observation_points_mobilenetv3(tiny_mnv3):
    layers = find_layers(tiny_mnv3, torch.zeros(1, 1, 32, 32))
    by_name = {la.name: la for la in layers}
    assert "classifier" not in by_name
    assert by_name["conv_stem"].observe == "bn1"
    assert by_name["conv_head"].observe == "act2"
    assert by_name["blocks.1.0.conv_pw"].observe == "blocks.1.0.bn1"
    assert by_name["blocks.0.0.se.conv_expand"].observe == "blocks.0.0.se.gate"


def test_stats_merge_and_determinism(tiny_mnv3):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 32, 32, generator=gen)
    y = torch.arange(24) % 10
    example = x[:1]
    whole = SemanticSlicer(tiny_mnv3, example, metric="taylor").calibrate(
        [(x[:12], y[:12]), (x[12:], y[12:])], num_classes=10
    )
    again = SemanticSlicer(tiny_mnv3, example, metric="taylor").calibrate(
        [(x[:12], y[:12]), (x[12:], y[12:])], num_classes=10
    )
    a = SemanticSlicer(tiny_mnv3, example, metric="taylor").calibrate([(x[:12], y[:12])], num_classes=10)
    b = SemanticSlicer(tiny_mnv3, example, metric="taylor").calibrate([(x[12:], y[12:])], num_classes=10)
    a.merge_(b)
    for name, s in whole.per_layer.items():
        assert torch.equal(s.gram, again.per_layer[name].gram)  # bit-identical reruns
        assert torch.allclose(s.gram, a.per_layer[name].gram, rtol=1e-12, atol=1e-12)
        assert torch.allclose(s.taylor, a.per_layer[name].taylor, rtol=1e-12, atol=1e-12)
        assert torch.equal(s.count, a.per_layer[name].count)
