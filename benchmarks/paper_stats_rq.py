"""Significance of the RQ2, RQ3 and RQ4 claims over seeds (paper §5.3–5.5): mean ± std, paired t-tests, Cohen's d.

Reads multi-seed result files and writes ``--out`` (JSON) and the same stem with ``.md``:

- ``--rq2``: ``rq2.json`` files of ``benchmarks/rq2_restructure.py``, one seed each (its ``--seed``), same settings
  otherwise. Per model and pruner, CR, NI (iterations run, the rejected last one included), NI kept (iterations
  whose pruning the final model has) and MA as mean ± std for P, Global+P, Category-wise+P and NeuSemSlice+P;
  paired tests NeuSemSlice+P vs each of the other three, per pruner and on the mean over the pruners (the
  paper's "averaged" figures). ``--rq2-rule CAP DROP`` (repeatable; replaces the runs' own rule) replays every run
  under at most CAP iterations and a DROP-point budget, read from its history (exact: a stricter run is a prefix
  of the looser one), so runs made with different caps can be compared under one rule. With ``--rq2`` the
  Table 5 check is added: the paper's plain-pruner cells against
  CR = 1 − q^NI (q = 0.95; 0.9 on MLP-MNIST) and the restructure's share r = 1 − (1 − CR) / q^NI of its sliced cells.
- ``--rq3``: result files of ``benchmarks/rq3_readapt.py`` (``rows``: model, seed, attack, method, tpr, ra, raa).
  Grouped by model, attack, ε, repair lr and baseline epochs; per method TPR / RA / RAA mean ± std; NeuSemSlice vs
  Fully Training, Global Slicing and Category-wise Slicing on RA and RAA.
- ``--rq4``: result files of ``benchmarks/rq4_incremental.py`` (``rows`` with ``R_class_il`` / ``R_task_il``, the
  accuracy matrices). Per model, scenario and evaluation (class-IL, task-IL): each task's accuracy after the last
  task and their average, mean ± std; NeuSemSlice vs Global Slicing, Category-wise Slicing, Retrain, Replay 5%,
  Replay 10% and Replay 100% (the comparisons of the paper's RQ4 t-tests, there paired over its six settings),
  and NeuSemSlice+Replay 10% vs Replay 10%.

Statistics are ``paper_stats.paired_test`` (``scipy.stats.ttest_rel``, two-sided; d = mean(a − b) / sd(a − b),
ddof 1), paired by seed. A comparison with fewer than 2 seeds is refused in one line (exit 2), as is a seed given
twice.

    python benchmarks/paper_stats_rq.py --rq2 benchmarks/results/rq2_mlp_paper_step05_s*/rq2.json \\
        --rq2-rule 20 1.0 --rq2-rule 10 1.0 --rq2-rule 20 0.5 \\
        --rq3 benchmarks/results/rq3_readapt_mlp_converged.json \\
        --rq4 benchmarks/results/rq4_incremental_mlp_5seeds.json --out benchmarks/results/paper_stats_rq.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location("paper_stats", Path(__file__).with_name("paper_stats.py"))
_ps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ps)
paired_test, summary, StatsInputError = _ps.paired_test, _ps.summary, _ps.StatsInputError

RQ2_METHODS = ("none", "global", "category", "semantic")
RQ2_LABELS = {"none": "P", "global": "Global+P", "category": "Category-wise+P", "semantic": "NeuSemSlice+P"}
RQ2_KEYS = ("CR", "NI", "NI_kept", "MA")
RQ3_METHODS = ("Fully Training", "DeepArc", "Global Slicing", "Category-wise Slicing", "NeuSemSlice")
RQ3_VS = ("Fully Training", "Global Slicing", "Category-wise Slicing")
RQ4_METHODS = (
    "Retrain",
    "Replay 5%",
    "Replay 10%",
    "Replay 100%",
    "DeepArc",
    "Global Slicing",
    "Category-wise Slicing",
    "NeuSemSlice",
    "NeuSemSlice+Replay 10%",
)
RQ4_PAIRS = (
    ("NeuSemSlice", "Global Slicing"),
    ("NeuSemSlice", "Category-wise Slicing"),
    ("NeuSemSlice", "Retrain"),
    ("NeuSemSlice", "Replay 5%"),
    ("NeuSemSlice", "Replay 10%"),
    ("NeuSemSlice", "Replay 100%"),
    ("NeuSemSlice+Replay 10%", "Replay 10%"),
)

# Paper Table 5, (CR %, NI) per setting and row; the plain-pruner rows and the MLP-FMNIST sliced rows.
TABLE5_SETTINGS = (
    "MLP-MNIST",
    "MLP-FMNIST",
    "AlexNet-CIFAR10",
    "VGG16-CIFAR10",
    "ResNet101-CIFAR10",
    "VGG19-ImageNet",
)
TABLE5_PLAIN = {
    "LAMP": ((52.17, 7), (36.97, 9), (30.17, 7), (18.55, 4), (45.96, 12), (30.17, 7)),
    "Glob": ((40.95, 5), (33.66, 8), (60.28, 18), (22.62, 5), (53.67, 15), (22.62, 5)),
    "Unif": ((40.95, 5), (40.13, 10), (55.99, 16), (14.26, 3), (51.23, 14), (55.99, 16)),
    "ERK": ((34.39, 4), (30.17, 7), (55.99, 16), (26.49, 6), (14.26, 3), (26.49, 6)),
}
TABLE5_MLP_FMNIST_SLICED = {
    ("Global", "LAMP"): (38.82, 7),
    ("Global", "Glob"): (35.60, 6),
    ("Global", "Unif"): (41.88, 8),
    ("Global", "ERK"): (32.21, 5),
    ("Category-wise", "LAMP"): (39.19, 8),
    ("Category-wise", "Glob"): (32.62, 6),
    ("Category-wise", "Unif"): (39.19, 8),
    ("Category-wise", "ERK"): (32.62, 6),
    ("NeuSemSlice", "LAMP"): (39.70, 8),
    ("NeuSemSlice", "Glob"): (36.52, 7),
    ("NeuSemSlice", "Unif"): (42.71, 9),
    ("NeuSemSlice", "ERK"): (33.18, 6),
}


def step_cr(ni: int, q: float = 0.95, removed: float = 0.0) -> float:
    """CR % after ``ni`` iterations that each keep ``q`` of the remaining weights, after a restructure removing
    ``removed`` of the parameters: 100·(1 − (1 − removed)·q^ni)."""
    return 100 * (1 - (1 - removed) * q**ni)


def restructure_share(cr: float, ni: int, q: float = 0.95) -> float:
    """The restructure's share r (%) that makes ``cr`` = step_cr(ni, q, r): 100·(1 − (1 − CR) / q^ni)."""
    return 100 * (1 - (1 - cr / 100) / q**ni)


def table5_check() -> dict[str, Any]:
    """The paper's Table 5 against the 5%-step reading (10% on MLP-MNIST)."""
    plain = []
    for pruner, cells in TABLE5_PLAIN.items():
        for setting, (cr, ni) in zip(TABLE5_SETTINGS, cells, strict=True):
            q = 0.9 if setting == "MLP-MNIST" else 0.95
            plain.append(
                {"setting": setting, "pruner": pruner, "CR": cr, "NI": ni, "q": q, "step_CR": round(step_cr(ni, q), 2)}
            )
    sliced = [
        {"slicing": s, "pruner": p, "CR": cr, "NI": ni, "r": round(restructure_share(cr, ni), 2)}
        for (s, p), (cr, ni) in TABLE5_MLP_FMNIST_SLICED.items()
    ]
    return {
        "plain": plain,
        "max_abs_residual_plain": max(abs(r["CR"] - step_cr(r["NI"], r["q"])) for r in plain),
        "mlp_fmnist_sliced": sliced,
    }


def _seeded(values: dict[int, float], what: str) -> dict[int, float]:
    if len(values) < 2:
        raise StatsInputError(f"{what}: need at least 2 seeds for a paired test, got {sorted(values) or 'none'}")
    return values


def _compare(a: dict[int, float], b: dict[int, float], what: str) -> dict[str, Any]:
    seeds = sorted(set(a) & set(b))
    _seeded(dict.fromkeys(seeds, 0.0), what)
    return {"seeds": seeds, **paired_test([a[s] for s in seeds], [b[s] for s in seeds])}


def _summ(values: dict[int, float]) -> dict[str, Any]:
    return {**summary([values[s] for s in sorted(values)]), "seeds": sorted(values)}


# ---------------------------------------------------------------- RQ2


def replay(report: dict[str, Any], max_iterations: int, max_acc_drop: float) -> dict[str, float]:
    """CR, NI, NI kept and MA of ``report``'s run under a stricter rule, read from its history.

    Each pruning iteration depends only on the ones before it (its fine-tuning seed is the iteration's), so a run
    with a lower iteration cap or a smaller accuracy budget is a prefix of this one: the first ``max_iterations``
    iterations, stopped at the first whose accuracy is more than ``max_acc_drop`` below the baseline (that one
    counted in NI, the model before it reported).

    Raises:
        StatsInputError: the rule is looser than the run's own (its result is not in the history).
    """
    cfg = report["config"]
    if max_iterations > cfg["max_iterations"] or max_acc_drop > cfg["max_acc_drop"]:
        raise StatsInputError(
            f"rule (cap {max_iterations}, drop {max_acc_drop:g}) is looser than the run's "
            f"(cap {cfg['max_iterations']}, drop {cfg['max_acc_drop']:g}): it cannot be replayed"
        )
    final, ni, kept = report["start"], 0, 0
    for h in report["history"][:max_iterations]:
        ni += 1
        if report["baseline_accuracy"] - h["accuracy"] > max_acc_drop:
            break
        final, kept = h, kept + 1
    return {"CR": 100 * final["compression_rate"], "NI": ni, "NI_kept": kept, "MA": final["accuracy"]}


def load_rq2(paths: list[Path], rule: tuple[int, float] | None = None) -> dict[str, Any]:
    """{"config": settings without the seed, "cells": {(model, method, pruner): {seed: {CR, NI, NI_kept, MA}}}}.

    With ``rule`` (iteration cap, accuracy budget) every run is replayed under it, and the files may differ in their
    own cap and budget (not in anything else).
    """
    config = None
    free = ("seed", "max_iterations", "max_acc_drop") if rule else ("seed",)
    cells: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        seed = doc["config"]["seed"]
        rest = {k: v for k, v in doc["config"].items() if k not in free}
        if config is None:
            config = rest
        elif rest != config:
            diff = sorted(k for k in set(rest) | set(config) if rest.get(k) != config.get(k))
            raise StatsInputError(f"{path}: other settings than the first RQ2 file ({', '.join(diff)})")
        for key, cell in doc["cells"].items():
            model, method, pruner = key.split("|")
            per_seed = cells.setdefault((model, method, pruner), {})
            if seed in per_seed:
                raise StatsInputError(f"{path}: RQ2 seed {seed} given twice for {key}")
            r = cell["report"]
            if rule:
                per_seed[seed] = replay(r, *rule)
                own = replay(r, r["config"]["max_iterations"], r["config"]["max_acc_drop"])
                if (own["CR"], own["NI"], own["MA"]) != (100 * r["compression_rate"], r["iterations"], r["accuracy"]):
                    raise StatsInputError(f"{path}: {key}: its history does not replay to its own result")
            else:
                per_seed[seed] = {
                    "CR": 100 * r["compression_rate"],
                    "NI": r["iterations"],
                    "NI_kept": r["iterations_kept"],
                    "MA": r["accuracy"],
                }
    if rule:
        config = {**config, "max_iterations": rule[0], "max_acc_drop": rule[1], "replayed": True}
    return {"config": config, "cells": cells}


def rq2_stats(paths: list[Path], rule: tuple[int, float] | None = None) -> dict[str, Any]:
    data = load_rq2(paths, rule)
    cells = data["cells"]
    out: dict[str, Any] = {"config": data["config"], "models": {}}
    for model in sorted({m for m, _, _ in cells}):
        pruners = [p for p in data["config"]["pruners"] if all((model, m, p) in cells for m in RQ2_METHODS)]
        per_model: dict[str, Any] = {}
        for pruner in [*pruners, "mean"]:
            if pruner == "mean":
                # per seed, the mean over the pruners every seed has
                seeds = set.intersection(*(set(cells[(model, m, p)]) for m in RQ2_METHODS for p in pruners))
                vals = {
                    m: {
                        k: {s: statistics.fmean(cells[(model, m, p)][s][k] for p in pruners) for s in seeds}
                        for k in RQ2_KEYS
                    }
                    for m in RQ2_METHODS
                }
            else:
                vals = {
                    m: {k: {s: v[k] for s, v in cells[(model, m, pruner)].items()} for k in RQ2_KEYS}
                    for m in RQ2_METHODS
                }
            per_model[pruner] = {
                "summary": {
                    m: {k: _summ(_seeded(vals[m][k], f"RQ2 {model} {pruner} {m}")) for k in RQ2_KEYS}
                    for m in RQ2_METHODS
                },
                "tests": {
                    f"semantic vs {other}": {
                        k: _compare(vals["semantic"][k], vals[other][k], f"RQ2 {model} {pruner}") for k in RQ2_KEYS
                    }
                    for other in ("none", "global", "category")
                },
            }
        out["models"][model] = per_model
    return out


# ---------------------------------------------------------------- RQ3


def rq3_stats(paths: list[Path]) -> dict[str, Any]:
    groups: dict[tuple, dict[str, dict[int, dict[str, float]]]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        a = doc["args"]
        baseline = "ladder " + " ".join(f"{e:g}" for e in a["converge_epochs"]) if a.get("converge_epochs") else None
        for row in doc["rows"]:
            epochs = baseline or f"{float(a['train_epochs']):g}"
            key = (row["model"], row["attack"], a["eps"], a["lr"], epochs)
            per_seed = groups.setdefault(key, {}).setdefault(row["method"], {})
            if row["seed"] in per_seed:
                raise StatsInputError(f"{path}: RQ3 seed {row['seed']} given twice for {key} {row['method']}")
            per_seed[row["seed"]] = {"TPR": 100 * row["tpr"], "RA": row["ra"], "RAA": row["raa"]}
    out = []
    for (model, attack, eps, lr, epochs), methods in sorted(groups.items()):
        what = f"RQ3 {model} {attack} eps {eps:g} lr {lr:g} baseline {epochs}"
        vals = {m: {k: {s: v[k] for s, v in methods[m].items()} for k in ("TPR", "RA", "RAA")} for m in methods}
        out.append(
            {
                "model": model,
                "attack": attack,
                "eps": eps,
                "lr": lr,
                "baseline_epochs": epochs,
                "summary": {
                    m: {k: _summ(_seeded(vals[m][k], what)) for k in ("TPR", "RA", "RAA")}
                    for m in RQ3_METHODS
                    if m in vals
                },
                "tests": {
                    f"NeuSemSlice vs {other}": {
                        k: _compare(vals["NeuSemSlice"][k], vals[other][k], what) for k in ("RA", "RAA")
                    }
                    for other in RQ3_VS
                    if other in vals and "NeuSemSlice" in vals
                },
            }
        )
    return {"groups": out}


# ---------------------------------------------------------------- RQ4


def final_tasks(matrix: list[list[float | None]]) -> dict[str, float]:
    """Each task's accuracy after the last task (the matrix's last row), and their average."""
    last = matrix[-1]
    out = {"ABC"[i]: float(v) for i, v in enumerate(last)}
    out["avg"] = statistics.fmean(out.values())
    return out


def rq4_stats(paths: list[Path]) -> dict[str, Any]:
    groups: dict[tuple[str, str, str], dict[str, dict[int, dict[str, float]]]] = {}
    for path in paths:
        doc = json.loads(path.read_text())
        for row in doc["rows"]:
            if row["method"] not in RQ4_METHODS:
                continue
            for evaluation in ("class_il", "task_il"):
                key = (row["model"], row["scenario"], evaluation)
                per_seed = groups.setdefault(key, {}).setdefault(row["method"], {})
                if row["seed"] in per_seed:
                    raise StatsInputError(f"{path}: RQ4 seed {row['seed']} given twice for {key} {row['method']}")
                per_seed[row["seed"]] = final_tasks(row[f"R_{evaluation}"])
    out = []
    for (model, scenario, evaluation), methods in sorted(groups.items()):
        what = f"RQ4 {model} scenario {scenario} {evaluation}"
        tasks = list(next(iter(next(iter(methods.values())).values())))
        vals = {m: {k: {s: v[k] for s, v in methods[m].items()} for k in tasks} for m in methods}
        out.append(
            {
                "model": model,
                "scenario": scenario,
                "evaluation": evaluation,
                "tasks": tasks,
                "summary": {m: {k: _summ(_seeded(vals[m][k], what)) for k in tasks} for m in RQ4_METHODS if m in vals},
                "tests": {
                    f"{a} vs {b}": {k: _compare(vals[a][k], vals[b][k], what) for k in tasks}
                    for a, b in RQ4_PAIRS
                    if a in vals and b in vals
                },
            }
        )
    return {"groups": out}


# ---------------------------------------------------------------- Markdown


# ---------------------------------------------------------------- Torch-Pruning head-to-head


def h2h_stats(paths: list[Path]) -> dict[str, Any]:
    """``vs_torch_pruning.py`` runs, one seed each (its ``--seed``; read from the file's ``args``): per model, θ and
    distillation setting, accuracy after the fine-tune of every method (mean ± std) and edgeslice vs each
    Torch-Pruning pruner (and the dense control) paired by seed; the parameter gap to edgeslice's count, mean.

    Raises:
        StatsInputError: a seed twice, or fewer than 2 seeds for a comparison.
    """
    cells: dict[tuple[str, float, bool], dict[str, dict[int, float]]] = {}
    gaps: dict[tuple[str, float, bool], dict[str, list[float]]] = {}
    seen: set[int] = set()
    for path in paths:
        doc = json.loads(path.read_text(encoding="utf-8"))
        seed = int(doc["args"]["seed"])
        if seed in seen:
            raise StatsInputError(f"{path}: seed {seed} is in more than one file")
        seen.add(seed)
        for row in doc["rows"]:
            key = (row["model"], float(row["theta"]), bool(row["distill"]))
            cells.setdefault(key, {}).setdefault(row["method"], {})[seed] = float(row["accuracy_after_ft"])
            cells[key].setdefault("dense control", {})[seed] = float(row["dense_control_accuracy"])
            gaps.setdefault(key, {}).setdefault(row["method"], []).append(
                float(row.get("params_gap_vs_edgeslice") or 0)
            )
    groups = []
    for (model, theta, distill), methods in sorted(cells.items()):
        ours = methods["edgeslice"]
        tests = {
            f"edgeslice vs {m}": _compare(ours, v, f"{model} θ {theta:g}: edgeslice vs {m}")
            for m, v in methods.items()
            if m != "edgeslice"
        }
        groups.append({
            "model": model, "theta": theta, "distill": distill,
            "summary": {m: _summ(v) for m, v in methods.items()},
            "params_gap_mean": {m: statistics.fmean(g) for m, g in gaps[(model, theta, distill)].items()},
            "tests": tests,
        })  # fmt: skip
    return {"sources": [str(p) for p in paths], "groups": groups}


def _pm(s: dict[str, Any]) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def _t(t: dict[str, Any]) -> str:
    p = "–" if t["p"] is None else f"{t['p']:.2g}"
    d = "–" if t["d"] is None else f"{t['d']:.2f}"
    return f"{t['mean_diff']:+.2f}, p {p}, d {d}"


def markdown(result: dict[str, Any]) -> str:
    lines = ["# RQ2–RQ4 over seeds: mean ± std, paired t-tests, Cohen's d", "", f"Command: `{result['command']}`", ""]
    lines += [
        "Paired by seed; p two-sided (scipy.stats.ttest_rel); d = mean(a − b) / sd(a − b); std with ddof 1. "
        "Δ = first named minus second.",
        "",
    ]
    if "table5" in result:
        t5 = result["table5"]
        lines += [
            "## Paper Table 5: CR against 1 − q^NI",
            "",
            f"Plain-pruner cells (q = 0.95; 0.9 on MLP-MNIST); largest |CR − (1 − q^NI)| "
            f"{t5['max_abs_residual_plain']:.3f} points.",
            "",
            "| setting | pruner | CR % | NI | 100·(1 − q^NI) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['setting']} | {r['pruner']} | {r['CR']:.2f} | {r['NI']} | {r['step_CR']:.2f} |" for r in t5["plain"]
        ]
        lines += [
            "",
            "MLP-FMNIST sliced cells: r = 1 − (1 − CR) / 0.95^NI, the share the restructure removed.",
            "",
            "| slicing | pruner | CR % | NI | r % |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['slicing']} | {r['pruner']} | {r['CR']:.2f} | {r['NI']} | {r['r']:.2f} |"
            for r in t5["mlp_fmnist_sliced"]
        ]
        lines.append("")
    for rq2 in result.get("rq2", []):
        c = rq2["config"]
        lines += [
            "## RQ2" + (" (replayed from the runs' histories)" if c.get("replayed") else ""),
            "",
            f"Step {c['prune_step']:g} of the remaining weights, {c['finetune_steps']} fine-tuning steps, at most "
            f"{c['max_iterations']} iterations, stop before a {c['max_acc_drop']:g}-point drop; restructure "
            f"fine-tuned {c['restructure_steps']} steps. NI = iterations run (rejected last one included); NI kept = "
            "iterations in the final model.",
            "",
        ]
        for model, per in rq2["models"].items():
            lines += [
                f"### {model}",
                "",
                "| pruner | method | CR % | NI | NI kept | MA % |",
                "|---|---|---|---|---|---|",
            ]
            for pruner, block in per.items():
                for m in RQ2_METHODS:
                    s = block["summary"][m]
                    lines.append(f"| {pruner} | {RQ2_LABELS[m]} | " + " | ".join(_pm(s[k]) for k in RQ2_KEYS) + " |")
            lines += [
                "",
                "| pruner | NeuSemSlice+P vs | CR Δ, p, d | NI Δ, p, d | NI kept Δ, p, d | MA Δ, p, d |",
                "|---|---|---|---|---|---|",
            ]
            for pruner, block in per.items():
                for other in ("none", "global", "category"):
                    t = block["tests"][f"semantic vs {other}"]
                    lines.append(f"| {pruner} | {RQ2_LABELS[other]} | " + " | ".join(_t(t[k]) for k in RQ2_KEYS) + " |")
            lines.append("")
    if "rq3" in result:
        lines += ["## RQ3", ""]
        for g in result["rq3"]["groups"]:
            lines += [
                f"### {g['model']}, {g['attack'].upper()}, ε {g['eps']:g}, repair lr {g['lr']:g}, baseline "
                f"{g['baseline_epochs']} epochs",
                "",
                "| method | TPR % | RA % | RAA % |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {m} | " + " | ".join(_pm(s[k]) for k in ("TPR", "RA", "RAA")) + " |"
                for m, s in g["summary"].items()
            ]
            lines += ["", "| NeuSemSlice vs | RA Δ, p, d | RAA Δ, p, d |", "|---|---|---|"]
            lines += [f"| {name.split(' vs ')[1]} | {_t(t['RA'])} | {_t(t['RAA'])} |" for name, t in g["tests"].items()]
            lines.append("")
    if "rq4" in result:
        lines += ["## RQ4", ""]
        for g in result["rq4"]["groups"]:
            tasks = g["tasks"]
            lines += [
                f"### {g['model']}, Scenario {g['scenario']}, {g['evaluation'].replace('_', '-')}",
                "",
                "| method | " + " | ".join(tasks) + " |",
                "|---" * (1 + len(tasks)) + "|",
            ]
            lines += [f"| {m} | " + " | ".join(_pm(s[k]) for k in tasks) + " |" for m, s in g["summary"].items()]
            lines += ["", "| comparison | " + " | ".join(f"{k} Δ, p, d" for k in tasks) + " |"]
            lines.append("|---" * (1 + len(tasks)) + "|")
            lines += [f"| {name} | " + " | ".join(_t(t[k]) for k in tasks) + " |" for name, t in g["tests"].items()]
            lines.append("")
    if "h2h" in result:
        lines += ["## Torch-Pruning head-to-head (accuracy % after the same fine-tune, equal parameter count)", ""]
        for g in result["h2h"]["groups"]:
            lines += [
                f"### {g['model']}, θ {g['theta']:g}, distillation {'on' if g['distill'] else 'off'}",
                "",
                "| method | accuracy after fine-tune | mean parameter gap vs edgeslice |",
                "|---|---|---|",
            ]
            gap = g["params_gap_mean"]
            lines += [
                f"| {m} | {_pm(s)} | {'' if m not in gap else format(gap[m], '+.3%')} |"
                for m, s in g["summary"].items()
            ]
            lines += ["", "| comparison | Δ, p, d |", "|---|---|"]
            lines += [f"| {name} | {_t(t)} |" for name, t in g["tests"].items()]
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rq2", nargs="+", type=Path, default=[], help="rq2.json files, one seed each")
    ap.add_argument(
        "--rq2-rule",
        nargs=2,
        action="append",
        metavar=("CAP", "DROP"),
        help="also replay the RQ2 runs with at most CAP iterations and a DROP-point budget (repeatable)",
    )
    ap.add_argument("--rq3", nargs="+", type=Path, default=[], help="rq3_readapt.py result files")
    ap.add_argument("--rq4", nargs="+", type=Path, default=[], help="rq4_incremental.py result files")
    ap.add_argument("--h2h", nargs="+", type=Path, default=[], help="vs_torch_pruning.py result files, one seed each")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_stats_rq.json"))
    args = ap.parse_args(argv)
    keys = ("rq2", "rq3", "rq4", "h2h")
    parts = [f"--{k} " + " ".join(str(p) for p in getattr(args, k)) for k in keys if getattr(args, k)]
    parts += [f"--rq2-rule {cap} {drop}" for cap, drop in args.rq2_rule or []]
    result: dict[str, Any] = {"command": " ".join(["python benchmarks/paper_stats_rq.py", *parts, f"--out {args.out}"])}
    try:
        if not parts:
            raise StatsInputError("nothing to compare: give --rq2, --rq3, --rq4 or --h2h result files")
        if args.rq2:
            result["table5"] = table5_check()
            result["rq2"] = [
                rq2_stats(args.rq2, (int(cap), float(drop)) if cap is not None else None)
                for cap, drop in args.rq2_rule or [(None, None)]
            ]
        if args.rq3:
            result["rq3"] = rq3_stats(args.rq3)
        if args.rq4:
            result["rq4"] = rq4_stats(args.rq4)
        if args.h2h:
            result["h2h"] = h2h_stats(args.h2h)
    except KeyError as e:
        print(
            f"paper_stats_rq: a result file lacks {e}: not the output of the script its option names", file=sys.stderr
        )
        return 2
    except (StatsInputError, OSError) as e:
        print(f"paper_stats_rq: {e}", file=sys.stderr)
        return 2
    from edgeslice.artifacts.files import atomic_write_bytes, atomic_write_json

    atomic_write_json(args.out, result)
    md = args.out.with_suffix(".md")
    atomic_write_bytes(md, markdown(result).encode())
    print(markdown(result))
    print(f"→ {args.out}, {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
