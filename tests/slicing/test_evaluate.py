"""RQ1 evaluation: AUC over the common range, compression counted through the dependency graph, masking study."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeslice.restructure import restructure_
from edgeslice.slicing import SemanticSlicer
from edgeslice.studies.masking import band_keep
from edgeslice.studies.rq1 import EvaluateConfig, run_evaluation
from edgeslice.studies.sweep import MaskedEvaluator, accuracy, auc_table


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def _data(n=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def test_auc_hand_computed():
    rows = [
        {"metric": "m", "strategy": "semantic", "compression_rate": 0.2, "accuracy": 80.0},
        {"metric": "m", "strategy": "semantic", "compression_rate": 0.4, "accuracy": 60.0},
        {"metric": "m", "strategy": "category", "compression_rate": 0.1, "accuracy": 70.0},
        {"metric": "m", "strategy": "category", "compression_rate": 0.5, "accuracy": 50.0},
        {"metric": "m", "strategy": "global", "compression_rate": 0.0, "accuracy": 90.0},
        {"metric": "m", "strategy": "global", "compression_rate": 0.3, "accuracy": 50.0},
        {"metric": "m", "strategy": "global", "compression_rate": 0.6, "accuracy": 10.0},
    ]
    table = auc_table(rows)["m"]
    assert table["range"] == pytest.approx([20.0, 40.0])
    # semantic: mean of 80→60 = 70; category over [20, 40]: 65→55 = 60; global: 63.3→50→36.7, trapezoids = 50.
    assert table["auc"]["semantic"] == pytest.approx(70.0)
    assert table["auc"]["category"] == pytest.approx(60.0)
    assert table["auc"]["global"] == pytest.approx(50.0)
    assert table["order_ok"] is True
    rows[0]["accuracy"] = 0.0  # semantic now 30 over the range
    assert auc_table(rows)["m"]["order_ok"] is False
    # No overlap: no AUC rather than a misleading one.
    disjoint = [
        {"metric": "m", "strategy": "semantic", "compression_rate": c, "accuracy": 50.0} for c in (0.1, 0.2)
    ] + [{"metric": "m", "strategy": "global", "compression_rate": c, "accuracy": 50.0} for c in (0.5, 0.6)]
    assert auc_table(disjoint)["m"] == {"range": None, "auc": {"semantic": None, "global": None}, "order_ok": None}


def test_band_keep():
    order = torch.tensor([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert torch.nonzero(~band_keep(order, 0.0, 0.1)).flatten().tolist() == [9]
    assert torch.nonzero(~band_keep(order, 0.1, 0.3)).flatten().tolist() == [7, 8]
    assert bool(band_keep(order[:3], 0.1, 0.2).all())  # 3 channels: the band ceil(0.3)..ceil(0.6) is empty


def test_compression_counted_through_the_graph():
    model = _mlp()
    data = _data()
    x = data.tensors[0]
    slicer = SemanticSlicer(model, x[:1], metric="avg")
    assert [la.name for la in slicer.layers] == ["0", "2"]
    ev = MaskedEvaluator(model, slicer.layers, data, example=x[:2])
    keep = {"0": torch.tensor([False, True, False, True, False]), "2": torch.ones(4, dtype=torch.bool)}
    rate, before, after, effective = ev.compression(keep)
    # 54 parameters: fc1 3·5+5, fc2 5·4+4, head 4·2+2. Removing 3 of fc1's outputs leaves 3·2+2 + 2·4+4 + 10 = 30.
    assert (before, after) == (54, 30) and rate == pytest.approx(24 / 54)
    assert torch.equal(effective["0"], keep["0"])
    twin = copy.deepcopy(model)
    restructure_(twin, slicer.layers, keep, x[:2])
    assert ev.masked_accuracy(keep) == pytest.approx(accuracy(twin, data))
    assert ev.masked_accuracy({"0": torch.zeros(5, dtype=torch.bool), "2": keep["2"]}) in (
        pytest.approx(100.0 * float((data.tensors[1] == k).float().mean())) for k in (0, 1)
    )  # everything zeroed: the model predicts one class for every input


def test_run_evaluation_end_to_end():
    model = _mlp()
    data = _data(80)
    cfg = EvaluateConfig(thetas=(0.9, 0.99), ratios=(0.5, 1.0), bands=2, calib_per_class=20, deeparc_samples=40)
    report = run_evaluation(model, data, data, num_classes=2, cfg=cfg)
    points = report["points"]
    assert len(points) == 5 * (2 + 2 + 2 + 2 + 2)
    for p in points:
        assert 0.0 <= p["compression_rate"] < 1.0 and 0.0 <= p["accuracy"] <= 100.0
        assert p["critical_channels"] <= p["kept_channels"] <= p["total_channels"] == 9
        if p["setting"] == "ratio" and p["value"] == 1.0:
            assert p["compression_rate"] == 0.0 and p["accuracy"] == report["baseline_accuracy"]
    for metric in cfg.metrics:
        sem = {p["value"]: p for p in points if p["metric"] == metric and p["strategy"] == "semantic"}
        for strategy in ("random", "magnitude"):
            for p in (p for p in points if p["metric"] == metric and p["strategy"] == strategy):
                assert p["critical_channels"] == sem[p["value"]]["critical_channels"]
    assert set(report["auc"]) == set(cfg.metrics)
    assert len(report["masking"]) == 5 * 2 * 2
    assert all(len(r["per_class"]) == 2 for r in report["masking"] if r["scope"] == "category")
    # An MLP has no same-shape block: DeepArc removes nothing (the paper's MLP finding).
    assert report["deeparc"]["redundant"] == [] and report["deeparc"]["compression_rate"] == 0.0
    assert report["deeparc"]["accuracy"] == report["baseline_accuracy"]
    assert set(report["coupling"]) == set(cfg.metrics)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown metric"):
        EvaluateConfig(metrics=("avg", "nope"))
    with pytest.raises(ValueError, match="unknown strategy"):
        EvaluateConfig(strategies=("semantic", "best"))
    with pytest.raises(ValueError, match="thetas"):
        EvaluateConfig(thetas=(0.9, 1.5))
    cfg = EvaluateConfig(metrics=("taylor",), interval=4, solver="scan")
    assert EvaluateConfig.from_dict(cfg.to_dict()) == cfg
