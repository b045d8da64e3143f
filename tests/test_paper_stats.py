"""benchmarks/paper_stats.py: paired t-tests and Cohen's d over seeds, checked against closed forms on synthetic runs.

The t distribution has closed forms for 1 and 2 degrees of freedom (two-sided p = 1 − 2·atan|t|/π and
1 − |t|/√(2 + t²)), so p, t and d are checked against values computed here by hand, not by scipy.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_stats.py"


@pytest.fixture(scope="module")
def paper_stats():
    spec = importlib.util.spec_from_file_location("paper_stats", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(t, two-sided p, d) of the paired differences for n = 2 or 3, from the closed forms."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    p = {2: 1 - 2 * math.atan(abs(t)) / math.pi, 3: 1 - abs(t) / math.sqrt(2 + t * t)}[n]
    return t, p, mean / sd


@pytest.mark.parametrize(
    ("a", "b"),
    [([3.0, 5.0, 4.5], [1.0, 4.0, 2.0]), ([80.0, 82.0, 81.0], [78.0, 79.0, 80.5]), ([10.0, 12.5], [9.0, 9.0])],
)
def test_paired_test_matches_the_closed_forms(paper_stats, a, b):
    t, p, d = by_hand(a, b)
    got = paper_stats.paired_test(a, b)
    assert got["n"] == len(a)
    assert got["t"] == pytest.approx(t, rel=1e-9)
    assert got["p"] == pytest.approx(p, rel=1e-9)
    assert got["d"] == pytest.approx(d, rel=1e-12)
    assert got["d"] * math.sqrt(len(a)) == pytest.approx(got["t"], rel=1e-9)  # t = d·√n for paired samples


def test_paired_test_without_spread_has_no_t(paper_stats):
    got = paper_stats.paired_test([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert got["mean_diff"] == pytest.approx(1.0) and got["sd_diff"] == 0.0
    assert got["t"] is None and got["p"] is None and got["d"] is None
    with pytest.raises(ValueError, match="2 pairs"):
        paper_stats.paired_test([1.0], [2.0])


def test_table4_stars(paper_stats):
    assert [paper_stats.p_stars(p) for p in (0.001, 0.03, 0.2, None)] == ["***", "**", "*", "–"]
    assert [paper_stats.d_stars(d) for d in (-1.2, 0.6, 0.3, 0.1)] == ["***", "**", "*", "–"]


# Per seed: the AUCs the run reported, and an offset that moves its semantic curves.
REPORTED = {
    0: {"semantic": 80.0, "category": 78.0, "global": 70.0},
    1: {"semantic": 82.0, "category": 79.0, "global": 75.0},
    2: {"semantic": 81.0, "category": 80.5, "global": 71.0},
}
OFFSET = {0: 0.0, 1: 1.0, 2: 3.0}


def point(strategy: str, compression: float, accuracy: float, theta: float | None = None) -> dict:
    setting = "theta" if theta is not None else "ratio"
    return {"metric": "taylor", "strategy": strategy, "compression_rate": compression, "accuracy": accuracy,
            "setting": setting, "value": theta if theta is not None else compression}  # fmt: skip


def report(similarity: str, seed: int) -> dict:
    o = OFFSET[seed]
    if similarity == "cka":  # semantic over 20–60 %, global 0–80 %: pair range 20–60, semantic 80 + o, global 75
        semantic = [point("semantic", 0.2, 90.0 + o, 0.95), point("semantic", 0.6, 70.0 + o, 0.9)]
    else:  # Gram: semantic slices compress more, 50–90 %
        semantic = [point("semantic", 0.5, 60.0 + o, 0.95), point("semantic", 0.9, 20.0, 0.9)]
    others = [point("global", 0.0, 95.0), point("global", 0.8, 55.0)]
    others += [point("category", 0.0, 95.0), point("category", 0.4, 85.0)]
    aucs = dict(REPORTED[seed]) if similarity == "cka" else {"semantic": None, "category": None, "global": None}
    order = aucs["semantic"] is not None and aucs["semantic"] > aucs["category"] > aucs["global"]
    return {
        "config": {"similarity": similarity, "seed": seed, "test_limit": 2000},
        "baseline_accuracy": 90.0 + seed,
        "points": semantic + others,
        "auc": {"taylor": {"auc": aucs, "order_ok": order, "range": [20.0, 40.0]}},
    }


def write(path: Path, similarity: str, seeds: list[int]) -> Path:
    doc = {"data": "synthetic", "config": {"similarity": similarity, "seed": seeds[0]}, "seeds": seeds}
    runs = [{"seed": s, "models": {"mlp": report(similarity, s)}} for s in seeds]
    if len(seeds) == 1:
        doc["models"] = runs[0]["models"]
    else:
        doc["runs"] = runs
    path.write_text(json.dumps(doc))
    return path


def test_main_tests_the_reported_and_pairwise_aucs(paper_stats, tmp_path):
    cka = write(tmp_path / "cka.json", "cka", [0, 1, 2])
    gram = write(tmp_path / "gram.json", "gram", [0, 1, 2])
    out = tmp_path / "stats.json"
    assert paper_stats.main([str(cka), str(gram), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    m = result["strategies"]["cka"]["mlp"]["metrics"]["taylor"]
    assert m["seeds"] == [0, 1, 2] and m["order_ok"] == 3

    sem = [REPORTED[s]["semantic"] for s in (0, 1, 2)]
    cat = [REPORTED[s]["category"] for s in (0, 1, 2)]
    assert m["auc"]["semantic"]["mean"] == pytest.approx(statistics.fmean(sem))
    assert m["auc"]["semantic"]["std"] == pytest.approx(statistics.stdev(sem))
    t, p, d = by_hand(sem, cat)
    got = m["tests"]["semantic_vs_category"]
    assert (got["t"], got["p"], got["d"]) == (pytest.approx(t), pytest.approx(p), pytest.approx(d))

    # Over the pair's own range (20–60 %): semantic = 80 + o, global = 75 (a line from 95 at 0 % to 55 at 80 %).
    pair = m["pairwise"]["semantic_vs_global"]
    assert pair["ranges"] == [[20.0, 60.0]] * 3
    assert pair["a"]["values"] == pytest.approx([80.0 + OFFSET[s] for s in (0, 1, 2)])
    assert pair["b"]["values"] == pytest.approx([75.0] * 3)
    t, p, d = by_hand(pair["a"]["values"], [75.0] * 3)
    assert (pair["test"]["p"], pair["test"]["d"]) == (pytest.approx(p), pytest.approx(d))

    # Gram runs report no AUC here, so their strategy tests are absent, not made up.
    assert result["strategies"]["gram"]["mlp"]["metrics"]["taylor"]["tests"] == {}
    comp = result["gram_vs_cka"]["models"]["mlp"]["taylor"]
    assert "note" in comp["reported"]
    # Common range 50–60 %: Gram from 60 + o down its line to 20 at 90 %, CKA from 90 + o at 20 % to 70 + o at 60 %.
    assert comp["common_range"]["ranges"] == [[50.0, 60.0]] * 3
    assert comp["common_range"]["a"]["values"] == pytest.approx([55.0 + 0.875 * OFFSET[s] for s in (0, 1, 2)])
    assert comp["common_range"]["b"]["values"] == pytest.approx([72.5 + OFFSET[s] for s in (0, 1, 2)])
    assert comp["per_theta"]["gram"]["0.95"]["compression"]["mean"] == pytest.approx(50.0)
    assert comp["per_theta"]["cka"]["0.95"]["accuracy"]["values"] == pytest.approx([90.0, 91.0, 93.0])
    md = out.with_suffix(".md").read_text()
    assert "| mlp | taylor | semantic vs category |" in md and "Gram (paper Eq. 2, uncentred) vs CKA" in md


def test_refuses_fewer_than_two_seeds(paper_stats, tmp_path, capsys):
    one = write(tmp_path / "one.json", "cka", [0])
    out = tmp_path / "stats.json"
    assert paper_stats.main([str(one), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 2 seeds" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_models_merge_across_files_but_a_seed_counts_once(paper_stats, tmp_path, capsys):
    a = write(tmp_path / "a.json", "cka", [0, 1])
    other = json.loads(a.read_text())
    for run in other["runs"]:
        run["models"] = {"mobilenetv3": run["models"].pop("mlp")}
    b = tmp_path / "b.json"
    b.write_text(json.dumps(other))  # the same seeds, another model: one run per seed with both models
    out = tmp_path / "s.json"
    assert paper_stats.main([str(a), str(b), "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["strategies"]["cka"]) == {"mlp", "mobilenetv3"}
    c = write(tmp_path / "c.json", "cka", [1, 2])
    assert paper_stats.main([str(a), str(c), "--out", str(out)]) == 2
    assert "mlp, seed 1 (cka) is in both" in capsys.readouterr().err


def test_refuses_other_settings(paper_stats, tmp_path, capsys):
    a = write(tmp_path / "a.json", "cka", [0, 1])
    b = write(tmp_path / "b.json", "cka", [2])  # one seed: the layout of a single-seed run
    doc = json.loads(b.read_text())
    doc["models"]["mlp"]["config"]["test_limit"] = 500
    b.write_text(json.dumps(doc))
    assert paper_stats.main([str(a), str(b), "--out", str(tmp_path / "s.json")]) == 2
    assert "other settings" in capsys.readouterr().err


def test_per_class_masking_averages_each_class_over_seeds_and_skips_global_rows(paper_stats):
    def run(per_class):
        masking = [
            {"metric": "deeplift", "scope": "category", "band": "0-10%", "accuracy": 0.0, "per_class": per_class},
            {"metric": "deeplift", "scope": "global", "band": "0-10%", "accuracy": 50.0},
        ]
        return {"models": {"m": {"masking": masking}}}

    table = paper_stats.per_class_masking({0: run([0.0, 40.0]), 1: run([10.0, 60.0])})
    cells = table["m"]["deeplift"]["0-10%"]
    assert cells["0"]["mean"] == 5.0 and cells["1"]["mean"] == 50.0 and cells["1"]["n"] == 2
    assert cells["1"]["std"] == pytest.approx(statistics.stdev([40.0, 60.0]))
    assert list(table["m"]["deeplift"]) == ["0-10%"]  # the global row carries no per-class accuracy
