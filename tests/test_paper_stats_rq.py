"""benchmarks/paper_stats_rq.py: RQ2–RQ4 statistics over seeds, checked on hand-made result files.

Two seeds give one degree of freedom, where the two-sided p of a t statistic is 1 − 2·atan|t|/π (the Cauchy
distribution), so every p below is computed by hand, not by scipy.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_stats_rq.py"


@pytest.fixture(scope="module")
def rq():
    spec = importlib.util.spec_from_file_location("paper_stats_rq", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def two_seed_test(diffs: tuple[float, float]) -> tuple[float, float]:
    """(p, d) of two paired differences, by hand."""
    mean = (diffs[0] + diffs[1]) / 2
    sd = abs(diffs[0] - diffs[1]) / math.sqrt(2)
    t = mean / (sd / math.sqrt(2))
    return 1 - 2 * math.atan(abs(t)) / math.pi, mean / sd


def test_table5_reading(rq):
    # LAMP on MLP-FMNIST: 9 iterations of 5% → 1 − 0.95^9 = 36.975%; MLP-MNIST LAMP: 1 − 0.9^7 = 52.17%
    assert rq.step_cr(9) == pytest.approx(36.975, abs=1e-3)
    assert rq.step_cr(7, q=0.9) == pytest.approx(52.17, abs=0.01)
    check = rq.table5_check()
    assert len(check["plain"]) == 24
    assert check["max_abs_residual_plain"] < 0.0051  # 36.97 printed for 36.975
    r = {(c["slicing"], c["pruner"]): c["r"] for c in check["mlp_fmnist_sliced"]}
    # one restructure share per slicing method, whatever the pruner
    for slicing, share in (("NeuSemSlice", 9.1), ("Global", 12.4), ("Category-wise", 8.3)):
        assert all(abs(v - share) < 0.1 for (s, _), v in r.items() if s == slicing)
    assert rq.step_cr(8, removed=rq.restructure_share(39.70, 8) / 100) == pytest.approx(39.70)


def rq2_file(folder: Path, seed: int, cr: dict[str, float], ni: dict[str, int], acc: dict[str, float]) -> Path:
    config = {"seed": seed, "pruners": ["lamp"], "prune_step": 0.05, "finetune_steps": 60, "max_iterations": 40}
    config.update(max_acc_drop=1.0, restructure_steps=235)
    cells = {
        f"mlp|{m}|lamp": {
            "report": {
                "compression_rate": cr[m] / 100,
                "iterations": ni[m],
                "iterations_kept": ni[m] - 1,
                "accuracy": acc[m],
            }
        }
        for m in ("none", "global", "category", "semantic")
    }
    path = folder / f"s{seed}" / "rq2.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"config": config, "cells": cells}))
    return path


def test_rq2_pairs_by_seed(rq, tmp_path):
    base = {"none": 30.0, "global": 31.0, "category": 32.0}
    paths = [
        rq2_file(
            tmp_path,
            0,
            {**base, "semantic": 33.0},
            dict.fromkeys(base, 8) | {"semantic": 6},
            dict.fromkeys(base, 90.0) | {"semantic": 90.5},
        ),
        rq2_file(
            tmp_path,
            1,
            {**base, "semantic": 37.0},
            dict.fromkeys(base, 8) | {"semantic": 7},
            dict.fromkeys(base, 90.0) | {"semantic": 90.1},
        ),
    ]
    out = rq.rq2_stats(paths)["models"]["mlp"]
    assert out["lamp"]["summary"]["semantic"]["CR"]["mean"] == pytest.approx(35.0)
    assert out["lamp"]["summary"]["semantic"]["CR"]["std"] == pytest.approx(2 * math.sqrt(2))
    t = out["lamp"]["tests"]["semantic vs none"]["CR"]  # differences 3 and 7
    p, d = two_seed_test((3.0, 7.0))
    assert (t["mean_diff"], t["p"], t["d"]) == pytest.approx((5.0, p, d))
    t = out["lamp"]["tests"]["semantic vs global"]["NI"]  # differences −2 and −1
    p, d = two_seed_test((-2.0, -1.0))
    assert (t["mean_diff"], t["p"], t["d"]) == pytest.approx((-1.5, p, d))
    assert out["mean"]["summary"]["semantic"]["NI_kept"]["mean"] == pytest.approx(5.5)


def rq4_file(path: Path, seeds: dict[int, dict[str, tuple[float, float]]]) -> Path:
    rows = [
        {
            "model": "mlp",
            "scenario": "I",
            "seed": seed,
            "method": method,
            "R_class_il": [[90.0, None], [a, b]],
            "R_task_il": [[90.0, None], [a + 50, b]],
        }
        for seed, methods in seeds.items()
        for method, (a, b) in methods.items()
    ]
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_rq4_both_evaluations(rq, tmp_path):
    path = rq4_file(
        tmp_path / "rq4.json",
        {
            0: {"NeuSemSlice": (10.0, 90.0), "Retrain": (0.0, 94.0), "Original": (90.0, 0.0)},
            1: {"NeuSemSlice": (14.0, 91.0), "Retrain": (0.0, 93.0), "Original": (90.0, 0.0)},
        },
    )
    groups = {g["evaluation"]: g for g in rq.rq4_stats([path])["groups"]}
    assert set(groups) == {"class_il", "task_il"}
    cil = groups["class_il"]
    assert cil["tasks"] == ["A", "B", "avg"]
    assert cil["summary"]["NeuSemSlice"]["A"]["mean"] == pytest.approx(12.0)
    assert "Original" not in cil["summary"]
    t = cil["tests"]["NeuSemSlice vs Retrain"]["B"]  # differences −4 and −2
    p, d = two_seed_test((-4.0, -2.0))
    assert (t["mean_diff"], t["p"], t["d"]) == pytest.approx((-3.0, p, d))
    assert groups["task_il"]["summary"]["NeuSemSlice"]["A"]["mean"] == pytest.approx(62.0)


def test_refuses_one_seed_and_a_seed_twice(rq, tmp_path, capsys):
    one = rq4_file(tmp_path / "one.json", {0: {"NeuSemSlice": (10.0, 90.0), "Retrain": (0.0, 94.0)}})
    assert rq.main(["--rq4", str(one), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "need at least 2 seeds" in err and len(err.splitlines()) == 1
    assert rq.main(["--rq4", str(one), str(one), "--out", str(tmp_path / "o.json")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    assert rq.main(["--out", str(tmp_path / "o.json")]) == 2


def test_main_writes_json_and_markdown(rq, tmp_path):
    path = rq4_file(
        tmp_path / "rq4.json",
        {s: {"NeuSemSlice": (10.0 + s, 90.0), "Global Slicing": (8.0, 90.0 + s)} for s in range(3)},
    )
    out = tmp_path / "stats.json"
    assert rq.main(["--rq4", str(path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rq4"]["groups"][0]["tests"]["NeuSemSlice vs Global Slicing"]["A"]["n"] == 3
    assert "NeuSemSlice vs Global Slicing" in out.with_suffix(".md").read_text()


def test_rq2_replay_under_a_stricter_rule(rq):
    history = [(89.8, 0.15), (89.4, 0.19), (89.6, 0.23), (88.5, 0.27)]
    report = {
        "config": {"max_iterations": 5, "max_acc_drop": 1.0},
        "baseline_accuracy": 90.0,
        "start": {"accuracy": 90.0, "compression_rate": 0.10},
        "history": [{"accuracy": a, "compression_rate": c, "kept": a >= 89.0} for a, c in history],
    }
    # its own rule: the fourth iteration (1.5 points down) is rejected, the third is the result
    assert rq.replay(report, 5, 1.0) == pytest.approx({"CR": 23.0, "NI": 4, "NI_kept": 3, "MA": 89.6})
    assert rq.replay(report, 2, 1.0) == pytest.approx({"CR": 19.0, "NI": 2, "NI_kept": 2, "MA": 89.4})
    # a half-point budget stops at the second iteration (0.6 down) and keeps the first
    assert rq.replay(report, 5, 0.5) == pytest.approx({"CR": 15.0, "NI": 2, "NI_kept": 1, "MA": 89.8})
    with pytest.raises(rq.StatsInputError, match="looser"):
        rq.replay(report, 6, 1.0)


def test_rq3_groups_by_setting_and_pairs_by_seed(rq, tmp_path):
    def rq3_file(name: str, lr: float, ra: dict[int, tuple[float, float]]) -> Path:
        rows = [
            {"model": "mlp", "seed": seed, "attack": "fgsm", "method": m, "tpr": tpr, "ra": a, "raa": 10.0 + seed}
            for seed, (full, sem) in ra.items()
            for m, tpr, a in (("Fully Training", 1.0, full), ("NeuSemSlice", 0.4, sem))
        ]
        path = tmp_path / name
        path.write_text(json.dumps({"args": {"eps": 0.1, "lr": lr, "train_epochs": 20.0}, "rows": rows}))
        return path

    slow = rq3_file("a.json", 1e-3, {0: (80.0, 77.0), 1: (82.0, 78.0)})  # RA differences −3 and −4
    fast = rq3_file("b.json", 1e-2, {0: (90.0, 90.0), 1: (91.0, 90.0)})
    groups = {g["lr"]: g for g in rq.rq3_stats([slow, fast])["groups"]}
    assert set(groups) == {1e-3, 1e-2}
    t = groups[1e-3]["tests"]["NeuSemSlice vs Fully Training"]["RA"]
    p, d = two_seed_test((-3.0, -4.0))
    assert (t["mean_diff"], t["p"], t["d"]) == pytest.approx((-3.5, p, d))
    assert groups[1e-3]["summary"]["NeuSemSlice"]["TPR"]["mean"] == pytest.approx(40.0)
    assert groups[1e-3]["tests"]["NeuSemSlice vs Fully Training"]["RAA"]["p"] is None  # equal RAA: no spread


def _h2h_file(tmp_path: Path, seed: int, ours: float, lamp: float) -> Path:
    common = {"model": "m", "theta": 0.95, "distill": False, "dense_control_accuracy": 80.0}
    rows = [
        {**common, "method": "edgeslice", "accuracy_after_ft": ours, "params_gap_vs_edgeslice": 0.0},
        {**common, "method": "tp-lamp", "accuracy_after_ft": lamp, "params_gap_vs_edgeslice": 0.01},
    ]
    path = tmp_path / f"h2h{seed}.json"
    path.write_text(json.dumps({"args": {"seed": str(seed)}, "rows": rows}))
    return path


def test_h2h_pairs_edgeslice_with_each_pruner_by_seed(rq, tmp_path):
    files = [_h2h_file(tmp_path, 0, 78.0, 76.0), _h2h_file(tmp_path, 1, 77.0, 74.0)]
    (group,) = rq.h2h_stats(files)["groups"]
    test = group["tests"]["edgeslice vs tp-lamp"]
    p, d = two_seed_test((2.0, 3.0))
    assert test["mean_diff"] == pytest.approx(2.5) and test["p"] == pytest.approx(p, rel=1e-6)
    assert test["d"] == pytest.approx(d, rel=1e-6)
    assert group["summary"]["dense control"]["mean"] == 80.0 and group["params_gap_mean"]["tp-lamp"] == 0.01
    with pytest.raises(rq.StatsInputError, match="seed 0 is in more than one file"):
        (tmp_path / "again").mkdir()
        rq.h2h_stats([files[0], _h2h_file(tmp_path / "again", 0, 1.0, 1.0)])
