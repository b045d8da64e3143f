"""Significance of the RQ1 claims over seeds (paper §5.2, Table 4): paired t-tests and Cohen's d of the AUCs.

Reads one or more result files of ``benchmarks/rq1_slicing.py`` (either layout: ``models`` for one seed, ``runs`` for
several), groups their runs by similarity (``cka`` / ``gram``) and seed (runs of one similarity must share every
other setting), and writes ``--out`` (JSON) and the same stem with ``.md``:

- per similarity, model and metric: the AUC (mean accuracy % over a compression range, as
  ``edgeslice.studies.sweep.auc_table`` computes it) as mean ± std over seeds for every strategy; paired tests
  semantic vs category, semantic vs global, category vs global (and semantic vs random / magnitude), once on the AUC
  each run reported (over the range all its strategies cover: the project's RQ1 tables) and once recomputed from
  the run's points over the range the two compared strategies cover (the paper compares AUCs "within the same
  range"); how many seeds keep the order semantic > category > global;
- when runs of both similarities share at least 2 seeds: semantic slicing with the paper's uncentred Gram similarity
  (Eq. 2) against centred CKA, paired by seed: the reported semantic AUC, both semantic curves over the range both
  cover, the gain over global / category-wise slicing (semantic minus that strategy over the range the two cover),
  and the compression and accuracy of the semantic slice at every θ (descriptive; defined also where the curves do
  not overlap, e.g. when the Gram criterion is met by so few channels that its slices compress beyond every other
  strategy's range).

Statistics: ``scipy.stats.ttest_rel`` (two-sided); Cohen's d for paired samples, d = mean(a − b) / sd(a − b) with
ddof = 1 (so t = d·√n); std over seeds with ddof = 1. A pair whose differences are all equal has no t, p or d; a
comparison that is missing for some seed (no overlap) is reported as such, not tested on fewer seeds. Fewer than 2
seeds for a similarity is refused in one line (exit 2): a paired test needs two pairs.

    python benchmarks/paper_stats.py benchmarks/results/rq1_seeds_mlp_cka.json \\
        benchmarks/results/rq1_seeds_mlp_gram.json --out benchmarks/results/paper_stats.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

PAIRS = (
    ("semantic", "category"),
    ("semantic", "global"),
    ("category", "global"),
    ("semantic", "random"),
    ("semantic", "magnitude"),
)
STRATEGIES = ("semantic", "category", "global", "random", "magnitude")


class StatsInputError(ValueError):
    """The result files cannot be compared (too few seeds, a seed twice, different settings)."""


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def paired_test(a: list[float], b: list[float]) -> dict[str, Any]:
    """Two-sided paired t-test of ``a`` against ``b`` and Cohen's d of the differences (a − b).

    Returns:
        ``n``, ``mean_diff``, ``sd_diff`` (ddof 1), ``t``, ``p`` and ``d``; ``t``/``p``/``d`` are None when the
        differences have no spread.

    Raises:
        ValueError: fewer than two pairs, or lists of different lengths.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError("a paired test needs at least 2 pairs")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean_diff, sd_diff = statistics.fmean(diffs), statistics.stdev(diffs)
    out: dict[str, Any] = {"n": len(diffs), "mean_diff": mean_diff, "sd_diff": sd_diff, "t": None, "p": None, "d": None}
    if sd_diff > 0:
        res = stats.ttest_rel(a, b)
        out.update(t=_finite(res.statistic), p=_finite(res.pvalue), d=mean_diff / sd_diff)
    return out


def summary(values: list[float]) -> dict[str, Any]:
    """Mean and sample std (ddof 1; None for one value) of ``values``, with the values."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": list(values),
    }


def p_stars(p: float | None) -> str:
    """The paper's Table 4 legend: *** p < 0.01, ** p < 0.05, * otherwise."""
    if p is None:
        return "–"
    return "***" if p < 0.01 else "**" if p < 0.05 else "*"


def d_stars(d: float | None) -> str:
    """The paper's Table 4 legend on |d|: *** > 0.8, ** 0.5–0.8, * 0.2–0.5 (– below 0.2)."""
    if d is None:
        return "–"
    d = abs(d)
    return "***" if d > 0.8 else "**" if d >= 0.5 else "*" if d >= 0.2 else "–"


def _runs_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if "runs" in doc:
        return doc["runs"]
    return [{"seed": doc["config"]["seed"], "models": doc["models"]}]


def load_runs(paths: list[Path]) -> dict[str, dict[int, dict[str, Any]]]:
    """similarity → seed → ``{"models": {name: report}, "sources": {name: file}}`` over all files (one model's
    seeds may come from one file and another model's from another); settings other than the seed must agree.

    Raises:
        StatsInputError: a file that is not an ``rq1_slicing.py`` result, a (model, similarity, seed) twice, or
            runs of one similarity with different settings (data, θs, ratios, metrics, test sample size, …).
    """
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    settings: dict[str, tuple[Any, dict[str, Any], Path]] = {}
    for path in paths:
        try:
            doc = json.loads(path.read_text())
            runs = [(int(run["seed"]), run["models"]) for run in _runs_of(doc)]
            configs = {(seed, name): rep["config"] for seed, models in runs for name, rep in models.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise StatsInputError(f"{path} is not an rq1_slicing.py result ({type(e).__name__}: {e})") from e
        for seed, models in runs:
            sims = {configs[(seed, name)]["similarity"] for name in models}
            if len(sims) != 1:
                raise StatsInputError(f"{path}: seed {seed} has {len(sims)} similarities, expected one")
            (sim,) = sims
            for name in models:
                cfg = {k: v for k, v in configs[(seed, name)].items() if k != "seed"}
                known = settings.setdefault(sim, (doc.get("data"), cfg, path))
                if known[:2] != (doc.get("data"), cfg):
                    raise StatsInputError(f"{path} ({name}, seed {seed}) ran with other settings than {known[2]}")
            run = groups.setdefault(sim, {}).setdefault(seed, {"models": {}, "sources": {}})
            for name, rep in models.items():
                if name in run["models"]:
                    raise StatsInputError(f"{name}, seed {seed} ({sim}) is in both {run['sources'][name]} and {path}")
                run["models"][name], run["sources"][name] = rep, str(path)
    return groups


def _rows(report: dict[str, Any], metric: str, label: str = "") -> list[dict[str, Any]]:
    """The report's RQ1 points of ``metric``, strategies prefixed with ``label``."""
    return [{**p, "strategy": label + p["strategy"]} for p in report["points"] if p["metric"] == metric]


def range_aucs(rows: list[dict[str, Any]], metric: str, a: str, b: str) -> tuple[list[float] | None, float, float]:
    """AUC of strategies ``a`` and ``b`` over the compression range both cover (None when they do not overlap)."""
    from edgeslice.studies.sweep import auc_table

    entry = auc_table([r for r in rows if r["strategy"] in (a, b)], strategies=(a, b)).get(metric)
    if entry is None or entry["range"] is None or a not in entry["auc"] or b not in entry["auc"]:
        return None, math.nan, math.nan
    return entry["range"], entry["auc"][a], entry["auc"][b]


def _semantic_auc(report: dict[str, Any], metric: str) -> float:
    v = report["auc"][metric]["auc"].get("semantic")
    return math.nan if v is None else float(v)


def compare(a: list[float], b: list[float], ranges: list[Any] | None = None) -> dict[str, Any]:
    """Both sides' mean ± std and the paired test; a note instead where a side is missing for some seed."""
    extra = {"ranges": ranges} if ranges is not None else {}
    if any(math.isnan(x) for x in a + b):
        return {**extra, "note": "missing for some seed (no curve, or the compression ranges do not overlap)"}
    return {**extra, "a": summary(a), "b": summary(b), "test": paired_test(a, b)}


def strategy_stats(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per model and metric: AUC mean ± std per strategy over seeds, the paired tests, the order count.

    ``tests`` compare the AUCs each run reported (over the range all its strategies cover); ``pairwise`` compares
    each pair over the range the two strategies cover in that run, recomputed from the points.
    """
    out: dict[str, Any] = {}
    models = dict.fromkeys(name for run in runs.values() for name in run["models"])
    for name in models:
        seeds = sorted(s for s, run in runs.items() if name in run["models"])
        reports = [runs[s]["models"][name] for s in seeds]
        entry: dict[str, Any] = {
            "seeds": seeds,
            "baseline_accuracy": summary([r["baseline_accuracy"] for r in reports]),
            "metrics": {},
        }
        for metric in dict.fromkeys(m for r in reports for m in r["auc"]):
            mine = [(s, r) for s, r in zip(seeds, reports, strict=True) if metric in r["auc"]]
            aucs = {st: [r["auc"][metric]["auc"].get(st) for _, r in mine] for st in STRATEGIES}
            aucs = {st: v for st, v in aucs.items() if v and all(x is not None for x in v)}
            m: dict[str, Any] = {
                "seeds": [s for s, _ in mine],
                "ranges": [r["auc"][metric]["range"] for _, r in mine],
                "auc": {st: summary(v) for st, v in aucs.items()},
                "order_ok": sum(bool(r["auc"][metric]["order_ok"]) for _, r in mine),
                "tests": {},
                "pairwise": {},
            }
            present = {p["strategy"] for _, r in mine for p in r["points"] if p["metric"] == metric}
            for a, b in PAIRS:
                if len(mine) < 2 or a not in present or b not in present:
                    continue
                if a in aucs and b in aucs:
                    m["tests"][f"{a}_vs_{b}"] = paired_test(aucs[a], aucs[b])
                per_seed = [range_aucs(_rows(r, metric), metric, a, b) for _, r in mine]
                m["pairwise"][f"{a}_vs_{b}"] = compare(
                    [x[1] for x in per_seed], [x[2] for x in per_seed], ranges=[x[0] for x in per_seed]
                )
            entry["metrics"][metric] = m
        out[name] = entry
    return out


def gram_vs_cka(gram: dict[int, dict[str, Any]], cka: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Semantic slicing with the paper's Gram similarity (a) against CKA (b), paired by the seeds both ran.

    Per model and metric: ``reported`` (each run's semantic AUC over its own range of all strategies),
    ``common_range`` (both semantic curves over the range both cover) and ``over_global`` / ``over_category`` (the
    semantic curve's AUC minus the global / category-wise curve's over the range those two cover, in each run: the
    gain over the same baseline, defined even where the two semantic curves do not overlap).
    """
    seeds = sorted(set(gram) & set(cka))
    out: dict[str, Any] = {"seeds": seeds, "models": {}}
    names = dict.fromkeys(n for s in seeds for n in gram[s]["models"])
    for name in [n for n in names if all(n in gram[s]["models"] and n in cka[s]["models"] for s in seeds)]:
        g_rep = [gram[s]["models"][name] for s in seeds]
        c_rep = [cka[s]["models"][name] for s in seeds]
        per_metric: dict[str, Any] = {}
        for metric in [m for m in g_rep[0]["auc"] if all(m in r["auc"] for r in g_rep + c_rep)]:
            common = [
                range_aucs(
                    _rows(g, metric, "gram:") + _rows(c, metric, "cka:"), metric, "gram:semantic", "cka:semantic"
                )
                for g, c in zip(g_rep, c_rep, strict=True)
            ]
            entry = {
                "reported": compare(*([_semantic_auc(r, metric) for r in reps] for reps in (g_rep, c_rep))),
                "common_range": compare([x[1] for x in common], [x[2] for x in common], ranges=[x[0] for x in common]),
            }
            for other in ("global", "category"):
                gains = {}
                for sim, reps in (("gram", g_rep), ("cka", c_rep)):
                    per_seed = [range_aucs(_rows(r, metric), metric, "semantic", other) for r in reps]
                    gains[sim] = ([x[1] - x[2] for x in per_seed], [x[0] for x in per_seed])
                entry[f"over_{other}"] = {
                    "ranges_gram": gains["gram"][1],
                    "ranges_cka": gains["cka"][1],
                    **compare(gains["gram"][0], gains["cka"][0]),
                }
            entry["per_theta"] = {sim: _per_theta(reps, metric) for sim, reps in (("gram", g_rep), ("cka", c_rep))}
            per_metric[metric] = entry
        out["models"][name] = per_metric
    return out


def _per_theta(reports: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """θ → compression % and accuracy % of the semantic slice, mean ± std over the reports (seeds)."""
    by_theta: dict[float, list[dict[str, Any]]] = {}
    for r in reports:
        for p in r["points"]:
            if p["metric"] == metric and p["strategy"] == "semantic" and p.get("setting") == "theta":
                by_theta.setdefault(float(p["value"]), []).append(p)
    return {
        f"{theta:g}": {
            "compression": summary([100.0 * p["compression_rate"] for p in pts]),
            "accuracy": summary([p["accuracy"] for p in pts]),
        }
        for theta, pts in sorted(by_theta.items())
    }


def per_class_masking(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Table 3's view: per model, metric and band, each class's accuracy % on its own test images after masking that
    band of the class's own ranking (the masking study's ``category`` rows), mean ± std over the seeds that ran it."""
    out: dict[str, Any] = {}
    for seed in sorted(runs):
        for name, report in runs[seed]["models"].items():
            for row in report.get("masking") or []:
                if row.get("scope") != "category" or "per_class" not in row:
                    continue
                cell = out.setdefault(name, {}).setdefault(row["metric"], {}).setdefault(row["band"], {})
                for c, acc in enumerate(row["per_class"]):
                    cell.setdefault(str(c), []).append(float(acc))
    return {
        name: {
            metric: {band: {c: summary(v) for c, v in classes.items()} for band, classes in bands.items()}
            for metric, bands in metrics.items()
        }
        for name, metrics in out.items()
    }


def _pm(s: dict[str, Any] | None, fmt: str = ".2f") -> str:
    if not s:
        return "–"
    return f"{s['mean']:{fmt}} ± {s['std']:.2f}" if s["std"] is not None else f"{s['mean']:{fmt}}"


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _test_cells(t: dict[str, Any] | None) -> str:
    if not t:
        return "– | – | –"
    return f"{t['mean_diff']:+.2f} | {_num(t['p'], '.2g')} | {_num(t['d'], '.2f')}"


def markdown(result: dict[str, Any]) -> str:
    """The tables of ``result`` in Markdown."""
    lines = [
        "# RQ1 over seeds: AUC mean ± std, paired t-tests and Cohen's d",
        "",
        f"Sources: {', '.join(f'`{s}`' for s in result['sources'])}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "AUC = mean accuracy % of the masked slices over a compression range. *All-strategy range*: the AUC each run "
        "reported, over the range all its strategies cover (the project's RQ1 tables); *pair's range*: recomputed "
        "from the run's points over the range the two compared strategies cover. Δ = mean over seeds of (first − "
        "second); t-test paired by seed, two-sided (scipy.stats.ttest_rel); d = mean(Δ) / sd(Δ), ddof 1; std over "
        "seeds ddof 1. Stars as the paper's Table 4: p *** < 0.01, ** < 0.05, * otherwise; |d| *** > 0.8, ** "
        "0.5–0.8, * 0.2–0.5, – below 0.2.",
    ]
    for sim, models in result["strategies"].items():
        lines += ["", f"## Similarity `{sim}`", ""]
        lines += [
            "| model | metric | seeds | baseline acc. | semantic | category | global | random | magnitude "
            "| sem>cat>glob |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, entry in models.items():
            for metric, m in entry["metrics"].items():
                cells = " | ".join(_pm(m["auc"].get(st)) for st in STRATEGIES)
                lines.append(
                    f"| {name} | {metric} | {len(m['seeds'])} | {_pm(entry['baseline_accuracy'])} | {cells} "
                    f"| {m['order_ok']}/{len(m['seeds'])} |"
                )
        lines += [
            "",
            "| model | metric | pair | Δ AUC (all-strategy range) | p | d | Δ AUC (pair's range) | p | d "
            "| stars p, d (pair's range) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, entry in models.items():
            for metric, m in entry["metrics"].items():
                for pair, pw in m["pairwise"].items():
                    t = pw.get("test")
                    stars = f"{p_stars(t['p'])}, {d_stars(t['d'])}" if t else pw.get("note", "–")
                    lines.append(
                        f"| {name} | {metric} | {pair.replace('_vs_', ' vs ')} | {_test_cells(m['tests'].get(pair))} "
                        f"| {_test_cells(t)} | {stars} |"
                    )
    comp = result.get("gram_vs_cka")
    if comp:
        lines += [
            "",
            "## Semantic slicing: Gram (paper Eq. 2, uncentred) vs CKA (centred)",
            "",
            f"Seeds {comp['seeds']}, Δ = Gram − CKA. *reported*: each run's semantic AUC over its all-strategy range; "
            "*common range*: both semantic curves over the range both cover; *over global* / *over category*: "
            "semantic AUC minus that strategy's AUC over the range the two cover, per run (the gain over the same "
            "baseline; defined even where the two semantic curves do not overlap).",
            "",
            "| model | metric | compared | Gram | CKA | Δ | p | d |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, metrics in comp["models"].items():
            for metric, entry in metrics.items():
                for label, e in entry.items():
                    if label == "per_theta":
                        continue
                    what = label.replace("_", " ")
                    if "note" in e:
                        lines.append(f"| {name} | {metric} | {what} | {e['note']} | | | | |")
                        continue
                    lines.append(
                        f"| {name} | {metric} | {what} | {_pm(e['a'], '+.2f' if 'over' in label else '.2f')} "
                        f"| {_pm(e['b'], '+.2f' if 'over' in label else '.2f')} | {_test_cells(e['test'])} |"
                    )
        lines += [
            "",
            "Semantic slices at θ 0.90 / 0.95 / 0.99 (all θ in the JSON): compression % and accuracy %, mean ± std.",
            "",
            "| model | metric | θ | Gram compression | Gram accuracy | CKA compression | CKA accuracy |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, metrics in comp["models"].items():
            for metric, entry in metrics.items():
                for theta in ("0.9", "0.95", "0.99"):
                    g, c = (entry["per_theta"][sim].get(theta) for sim in ("gram", "cka"))
                    if g is None or c is None:
                        continue
                    lines.append(
                        f"| {name} | {metric} | {theta} | {_pm(g['compression'])} | {_pm(g['accuracy'])} "
                        f"| {_pm(c['compression'])} | {_pm(c['accuracy'])} |"
                    )
    for name, metrics in result.get("per_class_masking", {}).items():
        if "deeplift" not in metrics:
            continue
        bands = metrics["deeplift"]
        classes = sorted({c for cells in bands.values() for c in cells}, key=int)
        n = max(v["n"] for cells in bands.values() for v in cells.values())
        lines += [
            "",
            f"## Table 3's view: {name}, DeepLIFT, per-class accuracy % after masking a band (category-wise ranking)",
            "",
            f"Mean ± std over the seeds that ran the masking study (up to {n}); each class ranked on its own scores, "
            "accuracy on that class's test images.",
            "",
            "| band | " + " | ".join(f"class {c}" for c in classes) + " |",
            "|---|" + "---|" * len(classes),
        ]
        for band, cells in bands.items():
            lines.append(f"| {band} | " + " | ".join(_pm(cells.get(c), ".1f") for c in classes) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path, help="rq1_slicing.py result files (JSON)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_stats.json"))
    args = ap.parse_args(argv)
    try:
        groups = load_runs(args.results)
        few = {sim: sorted(runs) for sim, runs in groups.items() if len(runs) < 2}
        if not groups or few:
            raise StatsInputError(
                "need at least 2 seeds per similarity for a paired test; got "
                + (", ".join(f"{sim}: seeds {seeds}" for sim, seeds in few.items()) or "no runs")
            )
    except (StatsInputError, OSError) as e:
        print(f"paper_stats: {e}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {
        "sources": [str(p) for p in args.results],
        "command": "python benchmarks/paper_stats.py " + " ".join(str(p) for p in args.results) + f" --out {args.out}",
        "strategies": {sim: strategy_stats(runs) for sim, runs in sorted(groups.items())},
    }
    if "cka" in groups:
        result["per_class_masking"] = per_class_masking(groups["cka"])
    if "gram" in groups and "cka" in groups and len(set(groups["gram"]) & set(groups["cka"])) >= 2:
        result["gram_vs_cka"] = gram_vs_cka(groups["gram"], groups["cka"])
    from edgeslice.artifacts.files import atomic_write_bytes, atomic_write_json

    atomic_write_json(args.out, result)
    md = args.out.with_suffix(".md")
    atomic_write_bytes(md, markdown(result).encode())
    print(markdown(result))
    print(f"→ {args.out}, {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
