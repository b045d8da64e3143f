"""RQ4 (paper §5.5, Tables 7–8): incremental development on Fashion-MNIST without task A's data.

Scenario I: classes 0–4 (task A) then 5–9 (task B). Scenario II: 0–2, 3–5, 6–9. The task-A model is trained here
(``--train-per-class`` images per class, seeded), sliced once (semantic, Taylor, centered CKA, θ), and then every
method learns the next tasks from a copy of it with the same optimiser, epochs and batches (edgeslice.ondevice's
learner; only the frozen set, the classifier's old rows and the data differ):

- Retrain: everything trains on the new task's data only.
- Replay 5% / 10% / 100%: everything trains on the new data plus that share of every earlier task's training data.
- DeepArc: only DeepArc's redundant blocks train (CKA(block input, output) ≥ --deeparc-threshold; new rows too).
- Global / Category-wise Slicing: their critical sets (matched in size to the semantic slice) are frozen.
- Random / Magnitude: per-layer channel sets of the semantic slice's size at every step (random seeded; largest
  output-channel weight norms of the task-A model), frozen.
- NeuSemSlice: the index's critical channels and the old classifier rows are frozen; new classes are sliced on the
  device's data after each increment, so later increments protect them too. NeuSemSlice + Replay 10% adds replay.
- NeuSemSlice isolated (+Replay 10%): the same, after ``edgeslice.ondevice.isolate`` closed the frozen channels and
  old rows into a sub-network (``increment --isolate``): old-class logits cannot move during the increment.
- EWC / LwF: Avalanche 0.6 strategies (``avalanche.training.EWC``/``LwF``) with an ``IncrementalClassifier``
  initialised from the task-A head, the same task-A weights (a 0-epoch first experience computes EWC's importances
  and LwF's teacher), the same epochs, batch size and AdamW learning rate (constant: Avalanche has no schedule here).

Evaluation after every task: the accuracy matrix R[i][j] (test accuracy on task j after learning task i) in the
class-incremental setting (argmax over all classes seen so far) and the task-incremental one (argmax within task j's
classes); average accuracy, forgetting and backward transfer from the last row.

    nice -n 10 python benchmarks/rq4_incremental.py --models mobilenetv3 mlp --scenarios I II --seeds 0 \\
        --out benchmarks/results/rq4_incremental.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslice.artifacts.files import atomic_write_bytes, atomic_write_json
from edgeslice.data import ArrayDataset, calibration_indices, load_data, normalize, targets_of
from edgeslice.index import CriticalIndex
from edgeslice.maintain import deeparc_blocks, in_blocks, matched_slice, stratified_sample
from edgeslice.models import create_model, fingerprint, resolve_model_name
from edgeslice.ondevice import IncrementConfig, classifier_modules, learn_increment, stored_bytes, task_accuracy
from edgeslice.pipeline import SliceConfig, make_prepare, meta_for, slice_model
from edgeslice.train import train_model

SCENARIOS = {
    "I": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],
    "II": [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]],
    # Few-shot: task A as in Scenario I, then one new class at a time (five increments) from SHOTS images each.
    "FS20": [[0, 1, 2, 3, 4], [5], [6], [7], [8], [9]],
    "FS100": [[0, 1, 2, 3, 4], [5], [6], [7], [8], [9]],
}
SHOTS = {"FS20": 20, "FS100": 100}
METHODS = (
    "NeuSemSlice routed",
    "NeuSemSlice class-IL",
    "Frozen backbone+NCM",
    "NeuSemSlice",
    "NeuSemSlice+Replay 10%",
    "NeuSemSlice isolated",
    "NeuSemSlice isolated+Replay 10%",
    "Retrain",
    "Replay 5%",
    "Replay 10%",
    "Replay 100%",
    "Replay (index bytes)",
    "DeepArc",
    "Global Slicing",
    "Category-wise Slicing",
    "Random",
    "Magnitude",
    "EWC",
    "LwF",
)
ALL_METHODS = METHODS
REPLAY = {
    "Replay 5%": 0.05,
    "Replay 10%": 0.10,
    "Replay 100%": 1.0,
    "NeuSemSlice+Replay 10%": 0.10,
    "NeuSemSlice isolated+Replay 10%": 0.10,
}
# Paper Table 7 (Scenario I), MLP-FMNIST column, (task A, task B). The printed table's row labels are shifted by one
# from its third data row down: the row labelled "Replay %" is Replay 5%, "Replay 100%" is Replay 10%, "Replay 100%
# DeepArc" is Replay 100%, "Global Slicing" (empty for both MLPs, task B 0.00% on VGG16/ResNet101, as the text says
# of DeepArc) is DeepArc, "Category-wise Slicing" is global slicing, "NeuSemSlice" is category-wise slicing, and the
# first of the two "NeuSemSlice+Replay 10%" rows is NeuSemSlice. Only this reading reproduces the text's own
# averages over the six settings: NeuSemSlice loses 2.79 points on task A (mean of 98.92-98.89, 97.44-92.12,
# 89.14-84.65, 92.52-85.77, 96.90-97.12, 92.15-91.77), NeuSemSlice+Replay 10% 0.25 and averages 90.76, Replay 5%
# 30.45, Replay 10% 23.03, Replay 100% 5.15, global slicing 11.75, category-wise 10.58. The labels as printed give
# none of them (NeuSemSlice would lose 10.58). docs/paper.md says the same.
PAPER_MLP_FMNIST_I = {
    "Original": (97.44, 0.00),
    "Retrain": (2.78, 83.28),
    "Replay 5%": (83.96, 83.14),
    "Replay 10%": (87.90, 83.20),
    "Replay 100%": (94.44, 81.78),
    "Global Slicing": (82.10, 78.46),
    "Category-wise Slicing": (82.12, 81.60),
    "NeuSemSlice": (92.12, 82.08),
    "NeuSemSlice+Replay 10%": (96.96, 81.90),
}
PAPER_SUMMARY = (
    "paper, Scenario I over six settings: NeuSemSlice loses 2.79 points of task-A accuracy on average (0.25 with 10% "
    "replay) and is ~1.64 points below naive retraining on task B"
)


def per_class_subset(dataset, classes: list[int], n: int, seed: int) -> ArrayDataset:
    """A seeded sample of ``n`` items per class of ``classes`` (labels kept), as an in-memory uint8 copy."""
    targets = targets_of(dataset)
    idx = [i for i in calibration_indices(dataset, n, seed) if int(targets[i]) in classes]
    base = dataset
    sub = torch.as_tensor(idx, dtype=torch.int64)
    while hasattr(base, "indices"):
        sub = torch.as_tensor(base.indices, dtype=torch.int64)[sub]
        base = base.dataset
    return ArrayDataset(base.images[sub].clone(), base.labels[sub].clone())


def concat(parts: list[ArrayDataset]) -> ArrayDataset:
    return ArrayDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def fraction_of(pool: ArrayDataset, fraction: float, seed: int) -> ArrayDataset:
    from edgeslice.ondevice import sample_fraction

    return sample_fraction(pool, fraction, seed)


def evaluate_row(model, tests, tasks, upto: int, prepare) -> dict[str, list[float | None]]:
    seen = sum(len(t) for t in tasks[: upto + 1])
    row_c, row_t = [], []
    for j, (test, labels) in enumerate(zip(tests, tasks, strict=True)):
        if j > upto:
            row_c.append(None)
            row_t.append(None)
            continue
        acc = task_accuracy(model, test, labels, seen=seen, prepare=prepare)
        row_c.append(acc["class_il"])
        row_t.append(acc["task_il"])
    return {"class_il": row_c, "task_il": row_t}


def continual_metrics(r: list[list[float | None]], sizes: list[int] | None = None) -> dict[str, float]:
    """Average accuracy, forgetting and backward transfer from an accuracy matrix (rows: after task i).

    The average is over all classes seen: tasks weighted by their number of classes (``sizes``; test sets have the
    same images per class), so a one-class task of the few-shot protocol counts as one class, not as task A.
    """
    last = len(r) - 1
    final = [v for v in r[last] if v is not None]
    weights = sizes[: len(final)] if sizes is not None else [1] * len(final)
    old = range(last)
    forgetting = [max(r[i][j] for i in range(j, last)) - r[last][j] for j in old]
    bwt = [r[last][j] - r[j][j] for j in old]
    return {
        "average_accuracy": sum(w * v for w, v in zip(weights, final, strict=True)) / sum(weights),
        "forgetting": statistics.fmean(forgetting) if forgetting else 0.0,
        "bwt": statistics.fmean(bwt) if bwt else 0.0,
    }


class _Normalized(nn.Module):
    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model, self.mean, self.std = model, tuple(mean), tuple(std)

    def forward(self, x):
        return self.model(normalize(x, self.mean, self.std))


class _Items(torch.utils.data.Dataset):
    """(float image in [0,1], int label) items with the ``targets`` list Avalanche reads."""

    def __init__(self, ds: ArrayDataset):
        self.ds, self.targets = ds, ds.labels.tolist()

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def run_avalanche(kind: str, model_a, meta, trains, tests, tasks, args) -> dict[str, Any]:
    """EWC or LwF from Avalanche, starting from the task-A weights; R matrices in both settings."""
    import warnings

    warnings.filterwarnings("ignore")
    from avalanche.benchmarks import dataset_benchmark
    from avalanche.models import IncrementalClassifier
    from avalanche.training import EWC, LwF

    model = copy.deepcopy(model_a)
    head_name = classifier_modules(model)[0]
    head = model.get_submodule(head_name)
    ic = IncrementalClassifier(head.in_features, initial_out_features=head.out_features)
    with torch.no_grad():
        ic.classifier.weight.copy_(head.weight)
        ic.classifier.bias.copy_(head.bias)
    parent, _, child = head_name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, ic)
    net = _Normalized(model, meta.mean, meta.std)
    bm = dataset_benchmark([_Items(t) for t in trains], [_Items(t) for t in tests])
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    common = dict(
        model=net,
        optimizer=opt,
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=args.batch_size,
        train_epochs=0,
        eval_mb_size=500,
        device="cpu",
        evaluator=None,
    )
    strategy = (
        EWC(ewc_lambda=args.ewc_lambda, **common)
        if kind == "EWC"
        else LwF(alpha=args.lwf_alpha, temperature=args.lwf_temperature, **common)
    )
    rows = []
    t0 = time.perf_counter()
    for i, exp in enumerate(bm.train_stream):
        strategy.train_epochs = 0 if i == 0 else args.epochs
        torch.manual_seed(args.seed_now * 1000 + i)
        strategy.train(exp)
        rows.append(evaluate_row(net.eval(), tests, tasks, i, None))
    settings = (
        {"ewc_lambda": args.ewc_lambda, "mode": "separate"}
        if kind == "EWC"
        else {"alpha": args.lwf_alpha, "temperature": args.lwf_temperature}
    )
    return {"rows": rows, "seconds": time.perf_counter() - t0, "settings": settings}


def _task_a_cache(args, timm_name: str, classes: list[int], seed: int) -> tuple[Path, dict[str, Any]] | None:
    """Where --task-a-cache keeps this task-A model (path stem) and the key it is stored under, or None."""
    if args.task_a_cache is None:
        return None
    import hashlib

    key = {
        "model": timm_name,
        "classes": list(classes),
        "seed": seed,
        "train_per_class": args.train_per_class,
        "a_epochs": args.a_epochs,
        "a_lr": args.a_lr,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return args.task_a_cache / f"task-a-{timm_name}-seed{seed}-{digest}", key


def run_one(model_name: str, scenario: str, seed: int, bundle, args, have_avalanche: bool) -> list[dict[str, Any]]:
    tasks = SCENARIOS[scenario]
    names = bundle.classes
    trains = [
        per_class_subset(
            bundle.train, t, SHOTS.get(scenario, args.train_per_class) if i else args.train_per_class, seed
        )
        for i, t in enumerate(tasks)
    ]
    tests = [per_class_subset(bundle.test, t, args.test_per_class, seed + 1) for t in tasks]
    task_a = dataclasses.replace(bundle, train=trains[0], test=tests[0], classes=names[: len(tasks[0])])
    timm_name = resolve_model_name(model_name)
    torch.manual_seed(seed)
    model_a = create_model(timm_name, num_classes=len(tasks[0]), in_chans=bundle.in_chans)
    prepare = make_prepare(bundle)
    t = time.perf_counter()
    cached = _task_a_cache(args, timm_name, tasks[0], seed)
    from_cache = cached is not None and cached[0].with_suffix(".json").is_file()
    if from_cache:
        # The same task-A training (model, classes, images, seed, epochs, lr) already ran: Scenario I and the
        # few-shot scenarios share it. Its weights are read back (safetensors) and its training time reused.
        from safetensors.torch import load_file

        model_a.load_state_dict(load_file(cached[0].with_suffix(".safetensors")))
        a_seconds = json.loads(cached[0].with_suffix(".json").read_text())["task_a_seconds"]
    else:
        train_model(model_a, trains[0], epochs=args.a_epochs, batch_size=64, lr=args.a_lr, seed=seed, prepare=prepare)
        a_seconds = time.perf_counter() - t
        if cached is not None:
            from safetensors.torch import save_file

            cached[0].parent.mkdir(parents=True, exist_ok=True)
            save_file(
                {k: v.contiguous() for k, v in model_a.state_dict().items()}, cached[0].with_suffix(".safetensors")
            )
            atomic_write_json(cached[0].with_suffix(".json"), {"task_a_seconds": a_seconds, "key": cached[1]})
    model_a.eval()
    meta_a = meta_for(timm_name, task_a, scenario=scenario, seed=seed)
    meta_a.fingerprint = fingerprint(model_a)
    scfg = SliceConfig(metric=args.metric, theta=args.theta, similarity=args.similarity, calib_per_class=args.calib)
    slicer, semantic, index = slice_model(model_a, meta_a, task_a, scfg, seed=seed, device="cpu")
    target = semantic.kept_channels
    glob, cat = matched_slice(slicer, "global", target), matched_slice(slicer, "category", target)
    cx, cy = stratified_sample(trains[0], 500, seed)
    redundant, blocks = deeparc_blocks(
        model_a,
        [(cx[i : i + 100], cy[i : i + 100]) for i in range(0, len(cx), 100)],
        threshold=args.deeparc_threshold,
        prepare=prepare,
    )
    inside = in_blocks(index.layers, redundant)

    def index_like(result, strategy: str) -> CriticalIndex:
        return dataclasses.replace(index, critical=result.critical, per_class=result.per_class, params=result.params)

    cfg = IncrementConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, calib_per_class=args.calib, seed=seed
    )
    rows: list[dict[str, Any]] = []
    semantic_counts: list[dict[str, int]] = [semantic.critical_counts()]
    base_row = evaluate_row(model_a, tests, tasks, 0, prepare)
    info = {
        "task_a_seconds": a_seconds,
        "task_a_cached": from_cache,
        "critical_channels": {
            "semantic": target,
            "global": glob.kept_channels,
            "category": cat.kept_channels,
            "total": semantic.total_channels,
        },
        "deeparc": {
            "threshold": args.deeparc_threshold,
            "redundant": redundant,
            "blocks": [{k: b[k] for k in ("block", "cka", "eligible")} for b in blocks],
        },
        "index_bytes_task_a": len(index.to_bytes()),
    }
    print(json.dumps({"model": timm_name, "scenario": scenario, "seed": seed, **info}), flush=True)
    for method in METHODS:
        if method in ("EWC", "LwF"):
            if not have_avalanche:
                continue
            out = run_avalanche(method, model_a, meta_a, trains, tests, tasks, args)
            rows.append(_row(timm_name, scenario, seed, method, out["rows"], out["seconds"], {"avalanche": out}))
            print(json.dumps(_brief(rows[-1])), flush=True)
            continue
        model, meta = copy.deepcopy(model_a), copy.deepcopy(meta_a)
        idx = {
            "Global Slicing": index_like(glob, "global"),
            "Category-wise Slicing": index_like(cat, "category"),
        }.get(method, index)
        matrix = [base_row]
        cost = []
        t = time.perf_counter()
        for step in range(1, len(tasks)):
            ones = {la["name"]: torch.ones(la["channels"], dtype=torch.bool) for la in idx.layers}
            frozen, freeze_rows, slice_new = None, True, method.startswith("NeuSemSlice") or "Slicing" in method
            if method.startswith("Retrain") or method.startswith("Replay"):  # Replay (index bytes) included
                frozen, freeze_rows = {k: ~v for k, v in ones.items()}, False
            elif method == "DeepArc":
                frozen = {k: ~inside[k] for k in ones}
            elif method in ("Random", "Magnitude"):
                frozen = slicer.slice(
                    strategy=method.lower(), budget=semantic_counts[min(step, len(semantic_counts)) - 1], seed=seed
                ).critical
            replay = None
            if method in REPLAY:
                replay = fraction_of(concat(trains[:step]), REPLAY[method], seed + step)
            elif method == "Replay (index bytes)":
                # A buffer of old images as large as the routed head's index file (class statistics included).
                pool = concat(trains[:step])
                replay = fraction_of(pool, len(index.to_bytes()) / stored_bytes(pool), seed + step)
            step_cfg = dataclasses.replace(
                cfg, slice_new=slice_new, seed=seed * 100 + step, isolate="isolated" in method
            )
            if method == "NeuSemSlice routed":
                # Class-incremental: isolated training, then the index's class statistics route to a task's rows.
                step_cfg = dataclasses.replace(step_cfg, head="routed", isolate=True)
            if method in ("NeuSemSlice class-IL", "Frozen backbone+NCM"):
                # Class-incremental head from the index's class statistics (edgeslice.ondevice.classil); NCM is the
                # same head with the covariance shrunk to a multiple of the identity (nearest class mean).
                step_cfg = dataclasses.replace(step_cfg, head="lda")
                if method == "Frozen backbone+NCM" and step == 1:
                    idx = dataclasses.replace(idx, class_stats=dataclasses.replace(idx.class_stats, shrinkage=1.0))
            result = learn_increment(
                model,
                meta,
                idx,
                trains[step],
                [names[c] for c in tasks[step]],
                step_cfg,
                replay=replay,
                frozen=frozen,
                freeze_old_rows=freeze_rows,
            )
            model, meta, idx = result.model, result.meta, result.index
            if method == "NeuSemSlice":
                semantic_counts.append({k: int(v.sum()) for k, v in idx.critical.items()})
            matrix.append(evaluate_row(model, tests, tasks, step, prepare))
            tr = result.report["training"]
            cost.append(
                {
                    "step_ms": tr["step_ms_median"],
                    "peak_rss_bytes": tr["peak_rss_bytes"],
                    "optimizer_state_bytes": tr["optimizer_state_bytes"],
                    "tpr": tr["plan"]["tpr"],
                    "frozen_channels": result.report["frozen_channels"],
                    "total_channels": result.report["total_channels"],
                    "index_bytes": len(idx.to_bytes()),
                    "replay_bytes": 0 if replay is None else stored_bytes(replay),
                    "class_stats_bytes": _stats_bytes(method, result.report.get("class_stats")),
                    "router_taps": (result.report.get("class_stats") or {}).get("taps"),
                    "router_features": (result.report.get("class_stats") or {}).get("features"),
                    "max_drift": tr["max_drift"],
                    "isolation": result.report["isolation"],
                    "train_seconds": result.report["train_seconds"],
                }
            )
        rows.append(_row(timm_name, scenario, seed, method, matrix, time.perf_counter() - t, {"cost": cost}))
        print(json.dumps(_brief(rows[-1])), flush=True)
    rows.append(_row(timm_name, scenario, seed, "Original", [base_row], a_seconds, {"info": info}))
    storage = {}
    pool_a = trains[0]
    for label, frac in (("Replay 5%", 0.05), ("Replay 10%", 0.10), ("Replay 100%", 1.0)):
        storage[label] = {
            "bytes_this_run": stored_bytes(fraction_of(pool_a, frac, seed)) if frac < 1 else stored_bytes(pool_a),
            "bytes_full_fmnist": round(frac * 6000 * len(tasks[0]) * (28 * 28 + 1)),
        }
    storage["NeuSemSlice index"] = {"bytes_this_run": len(index.to_bytes()), "bytes_full_fmnist": None}
    rows[-1]["storage"] = storage
    return rows


def _stats_bytes(method: str, stats: dict[str, Any] | None) -> int | None:
    """Bytes of class statistics the device keeps (NCM needs only the means and counts)."""
    if stats is None:
        return None
    if method == "Frozen backbone+NCM":  # means over the classifier inputs only (the taps are the router's)
        inputs = stats["features"] - sum(t["channels"] for t in stats.get("taps", []))
        return 2 * inputs * len(stats["counts"]) + 4 * len(stats["counts"])
    return stats["bytes"]


def _row(model, scenario, seed, method, matrix, seconds, extra) -> dict[str, Any]:
    rc = [r["class_il"] for r in matrix]
    rt = [r["task_il"] for r in matrix]
    sizes = [len(t) for t in SCENARIOS[scenario]]
    return {
        "model": model,
        "scenario": scenario,
        "seed": seed,
        "method": method,
        "R_class_il": rc,
        "R_task_il": rt,
        "class_il": continual_metrics(rc, sizes) if len(rc) > 1 else None,
        "task_il": continual_metrics(rt, sizes) if len(rt) > 1 else None,
        "seconds": seconds,
        **extra,
    }


def _brief(row):
    last_c, last_t = row["R_class_il"][-1], row["R_task_il"][-1]
    return {
        "model": row["model"],
        "scenario": row["scenario"],
        "seed": row["seed"],
        "method": row["method"],
        "final_class_il": [round(v, 2) for v in last_c],
        "final_task_il": [round(v, 2) for v in last_t],
        "seconds": round(row["seconds"], 1),
    }


def _weighted(values, sizes):
    """Mean over classes: values per task weighted by the task's classes."""
    return sum(w * v for w, v in zip(sizes, values, strict=False)) / sum(sizes[: len(values)])


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def markdown(rows: list[dict[str, Any]], args, have_avalanche: bool) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    seeds = "; ".join(f"{m} seeds {sorted({r['seed'] for r in rows if r['model'] == m})}" for m in models)
    out = [
        f"# RQ4 incremental development — Fashion-MNIST ({seeds})",
        "",
        f"{args.train_per_class} training / {args.test_per_class} test images per class; task A: {args.a_epochs} "
        f"epochs (AdamW one-cycle, lr {args.a_lr}); every increment: {args.epochs} epochs, batch {args.batch_size}, "
        f"AdamW lr {args.lr} (cosine). Slicing: {args.metric}, {args.similarity}, θ={args.theta}, {args.calib} "
        f"calibration images per class. DeepArc threshold {args.deeparc_threshold}. Values are means over seeds.",
        "",
        "The paper's Table 7/8 figures are class-incremental (argmax over all classes seen): its Retrain rows are "
        "0.00% on task A and its Original rows 0.00% on task B, which a task-incremental evaluation cannot give.",
        "",
    ]
    if not have_avalanche:
        out += ["EWC/LwF skipped: avalanche-lib (`pip install -e .[bench]`) is not importable here.", ""]
    for scenario in list(dict.fromkeys(r["scenario"] for r in rows)):
        n_tasks = len(SCENARIOS[scenario])
        letters = "ABCDEFGH"[:n_tasks]
        sizes = [len(t) for t in SCENARIOS[scenario]]
        for setting, key in (("class-incremental", "R_class_il"), ("task-incremental", "R_task_il")):
            out += [f"## Scenario {scenario}, {setting}: accuracy on each task after the last one", ""]
            head = "| method | " + " | ".join(
                " | ".join([f"{m} Task{c}" for c in letters] + [f"{m} Avg"]) for m in models
            )
            out += [head + " |", "|" + "---|" * (1 + (n_tasks + 1) * len(models))]
            for method in ("Original", *METHODS):
                cells = []
                present = False
                for m in models:
                    sel = [r for r in rows if r["model"] == m and r["scenario"] == scenario and r["method"] == method]
                    if not sel:
                        cells += ["–"] * (n_tasks + 1)
                        continue
                    present = True
                    last = [r[key][-1] for r in sel]
                    per_task = [_mean([row[j] for row in last]) for j in range(n_tasks)]
                    if len(last[0]) == 1:  # "Original": only task A was seen
                        per_task = per_task[:1] + [float("nan")] * (n_tasks - 1)
                    avg = _mean([_weighted([v for v in row if v is not None], sizes) for row in last])
                    cells += [("–" if v != v else f"{v:.2f}%") for v in per_task] + [f"{avg:.2f}%"]
                if present:
                    out.append(f"| {method} | " + " | ".join(cells) + " |")
            out += ["", f"Average accuracy / forgetting / BWT ({setting}, points):", ""]
            out += [
                "| method | " + " | ".join(f"{m} Avg | {m} Forgetting | {m} BWT" for m in models) + " |",
                "|" + "---|" * (1 + 3 * len(models)),
            ]
            for method in METHODS:
                cells = []
                for m in models:
                    sel = [r for r in rows if r["model"] == m and r["scenario"] == scenario and r["method"] == method]
                    if not sel:
                        cells += ["–"] * 3
                        continue
                    metrics = [continual_metrics(r[key], sizes) for r in sel]  # recomputed: older JSON too
                    cells += [
                        f"{_mean([c['average_accuracy'] for c in metrics]):.2f}",
                        f"{_mean([c['forgetting'] for c in metrics]):.2f}",
                        f"{_mean([c['bwt'] for c in metrics]):+.2f}",
                    ]
                if any(c != "–" for c in cells):
                    out.append(f"| {method} | " + " | ".join(cells) + " |")
            out.append("")
        # Old-vs-new and the paper's Scenario I numbers.
        if scenario == "I":
            out += ["## Scenario I against the paper (class-incremental)", ""]
            out += [
                "| model | task-A loss NeuSemSlice | task-A loss +Replay 10% | task-B gap to Retrain |",
                "|---|---|---|---|",
            ]
            for m in models:

                def final(method, j, m=m):
                    sel = [r for r in rows if r["model"] == m and r["scenario"] == "I" and r["method"] == method]
                    return _mean([r["R_class_il"][-1][j] for r in sel])

                orig = final("Original", 0)
                out.append(
                    f"| {m} | {orig - final('NeuSemSlice', 0):.2f} | {orig - final('NeuSemSlice+Replay 10%', 0):.2f} | "
                    f"{final('Retrain', 1) - final('NeuSemSlice', 1):.2f} |"
                )
            p = PAPER_MLP_FMNIST_I
            out += [
                f"| paper MLP-FMNIST | {p['Original'][0] - p['NeuSemSlice'][0]:.2f} | "
                f"{p['Original'][0] - p['NeuSemSlice+Replay 10%'][0]:.2f} | "
                f"{p['Retrain'][1] - p['NeuSemSlice'][1]:.2f} |",
                "",
                PAPER_SUMMARY + ".",
                "",
            ]
    out += ["## Accuracy matrices R[i][j] (after task i, on task j; mean over seeds)", ""]
    out += ["| model | scenario | method | R class-incremental | R task-incremental |", "|---|---|---|---|---|"]
    for m in models:
        for scenario in list(dict.fromkeys(r["scenario"] for r in rows)):
            for method in METHODS:
                sel = [r for r in rows if r["model"] == m and r["scenario"] == scenario and r["method"] == method]
                if not sel:
                    continue
                cells = []
                for key in ("R_class_il", "R_task_il"):
                    matrix = [
                        [_mean([r[key][i][j] for r in sel]) for j in range(i + 1)] for i in range(len(sel[0][key]))
                    ]
                    cells.append(" / ".join("[" + ", ".join(f"{v:.1f}" for v in row) + "]" for row in matrix))
                out.append(f"| {m} | {scenario} | {method} | {cells[0]} | {cells[1]} |")
    out.append("")
    out += [
        "## Storage the device keeps (Scenario I, task A)",
        "",
        "| what | bytes (this run) | bytes (full data) |",
        "|---|---|---|",
    ]
    stores = [r for r in rows if "storage" in r and r["scenario"] == "I"] or [r for r in rows if "storage" in r]
    for label in ("Replay 5%", "Replay 10%", "Replay 100%"):
        v = stores[0]["storage"][label] if stores else None
        if v is not None:
            out.append(f"| {label} of task A's data | {v['bytes_this_run']:,} | {v['bytes_full_fmnist']:,} |")
    for m in models:
        sizes = [r["storage"]["NeuSemSlice index"]["bytes_this_run"] for r in stores if r["model"] == m]
        if sizes:
            out.append(f"| NeuSemSlice index, {m} (gzip'd) | {round(_mean(sizes)):,} | same |")
    out += ["", "## On-device cost of an increment (per increment, means over increments and seeds)", ""]
    out += [
        "ms/step: median training step, batch as above (class-IL and NCM heads train nothing: their figure is the "
        "whole statistics pass, in ms). Peak RSS is this benchmark process's (Fashion-MNIST decoded in RAM "
        "included), not a device's; `edgeslice increment`'s report.json has the command's own.",
        "",
    ]
    out += [
        "| model | scenario | method | ms/step | peak RSS | optimizer state | TPR | frozen channels | index bytes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(values, fmt):
        values = [v for v in values if v is not None]
        return fmt(statistics.fmean(values)) if values else "–"

    for m in models:
        for scenario in list(dict.fromkeys(r["scenario"] for r in rows)):
            for method in METHODS:
                sel = [r for r in rows if (r["model"], r["scenario"], r["method"]) == (m, scenario, method)]
                costs = [c for r in sel for c in r.get("cost", [])]
                if not costs:
                    continue
                out.append(
                    f"| {m} | {scenario} | {method} | {cell([c['step_ms'] for c in costs], '{:.1f}'.format)} | "
                    f"{cell([c['peak_rss_bytes'] for c in costs], lambda v: f'{v / 2**20:.0f} MiB')} | "
                    f"{cell([c['optimizer_state_bytes'] for c in costs], lambda v: f'{v / 2**20:.2f} MiB')} | "
                    f"{cell([c['tpr'] for c in costs], lambda v: f'{100 * v:.1f}%')} | "
                    f"{cell([c['frozen_channels'] for c in costs], '{:.0f}'.format)}/{costs[0]['total_channels']} | "
                    f"{cell([c['index_bytes'] for c in costs], '{:.0f}'.format)} |"
                )
    out.append("")
    out += _bytes_table(rows)
    out += _per_seed_table(rows)
    return "\n".join(out)


def _per_seed_table(rows: list[dict[str, Any]]) -> list[str]:
    """Class-incremental average accuracy (over all classes, from R's last row) per seed, mean and spread."""
    out = [
        "## Class-incremental average accuracy per seed (one argmax over all classes, after the last increment)",
        "",
        "| model | scenario | method | per seed | mean | sd | min |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["model"], r["scenario"], r["method"]) for r in rows if r["method"] != "Original"))
    for model, scenario, method in keys:
        sizes = [len(t) for t in SCENARIOS[scenario]]
        picked = sorted(
            (r for r in rows if (r["model"], r["scenario"], r["method"]) == (model, scenario, method)),
            key=lambda r: r["seed"],
        )
        vals = [_weighted([v for v in r["R_class_il"][-1] if v is not None], sizes) for r in picked]
        per = " / ".join(f"s{r['seed']} {v:.2f}" for r, v in zip(picked, vals, strict=True))
        sd = f"{statistics.stdev(vals):.2f}" if len(vals) > 1 else "–"
        out.append(
            f"| {model} | {scenario} | {method} | {per} | {statistics.fmean(vals):.2f} | {sd} | {min(vals):.2f} |"
        )
    return [*out, ""]


def _bytes_table(rows: list[dict[str, Any]]) -> list[str]:
    """What each method keeps on the device after its last increment (means over seeds), besides the model."""
    out = ["## Bytes kept on the device besides the model (after the last increment, mean over seeds)", ""]
    out += ["| model | scenario | method | index file (gzip) | class statistics (raw, in the index) | replay buffer |"]
    out += ["|---|---|---|---|---|---|"]
    for r0 in rows:
        if r0["method"] == "Original" or "cost" not in r0:
            continue
        sel = [
            r
            for r in rows
            if (r["model"], r["scenario"], r["method"]) == (r0["model"], r0["scenario"], r0["method"]) and "cost" in r
        ]
        if sel[0] is not r0:
            continue
        last = [r["cost"][-1] for r in sel]
        stats = [c.get("class_stats_bytes") for c in last]
        uses_index = r0["method"].startswith("NeuSemSlice") or "NCM" in r0["method"]
        out.append(
            f"| {r0['model']} | {r0['scenario']} | {r0['method']} | "
            + (f"{_mean([c['index_bytes'] for c in last]):,.0f}" if uses_index else "–")
            + " | "
            + (f"{_mean(stats):,.0f}" if stats[0] is not None else "–")
            + f" | {_mean([c['replay_bytes'] for c in last]):,.0f} |"
        )
    return [*out, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilenetv3", "mlp"])
    ap.add_argument("--scenarios", nargs="+", default=["I", "II"], choices=sorted(SCENARIOS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=list(ALL_METHODS))
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--test-per-class", type=int, default=500)
    ap.add_argument("--a-epochs", type=float, default=3.0)
    ap.add_argument("--a-lr", type=float, default=1e-2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--metric", default="taylor")
    ap.add_argument("--similarity", default="cka")
    ap.add_argument("--theta", type=float, default=0.95)
    ap.add_argument("--calib", type=int, default=100)
    ap.add_argument("--deeparc-threshold", type=float, default=0.9)
    ap.add_argument("--ewc-lambda", type=float, default=100.0)
    ap.add_argument("--lwf-alpha", type=float, default=1.0)
    ap.add_argument("--lwf-temperature", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--task-a-cache", type=Path, help="keep trained task-A models here and reuse them across scenarios and runs"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rq4_incremental.json"))
    ap.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="only render --out's .md from earlier runs' JSON (and --out itself: their rows merged, later files "
        "replacing earlier rows of the same model, scenario, seed and method)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global METHODS
    METHODS = tuple(m for m in ALL_METHODS if m in args.methods)
    if args.from_json:
        docs = [json.loads(p.read_text()) for p in args.from_json]
        # A later file's row replaces an earlier one of the same model, scenario, seed and method (a rerun).
        merged = {(r["model"], r["scenario"], r["seed"], r["method"]): r for d in docs for r in d["rows"]}
        rows = list(merged.values())
        saved = argparse.Namespace(**{**docs[0]["args"], "out": args.out})
        have = any(d["avalanche"] for d in docs)
        md = markdown(rows, saved, have)
        sources = [str(p) for p in args.from_json]
        atomic_write_json(args.out, {"args": docs[0]["args"], "avalanche": have, "rows": rows, "merged_from": sources})
        atomic_write_bytes(args.out.with_suffix(".md"), md.encode())
        print(md)
        return
    try:
        import avalanche.training  # noqa: F401

        have_avalanche = True
    except Exception:  # noqa: BLE001 - any import failure means "skip and say so"
        have_avalanche = False
    bundle = load_data("fashion-mnist", seed=0)
    t = time.perf_counter()
    rows = []
    for model_name in args.models:
        for scenario in args.scenarios:
            for seed in args.seeds:
                args.seed_now = seed
                rows += run_one(model_name, scenario, seed, bundle, args, have_avalanche)
    report = {
        "args": {k: v for k, v in vars(args).items() if k != "seed_now"},
        "avalanche": have_avalanche,
        "rows": rows,
        "seconds": time.perf_counter() - t,
    }
    atomic_write_json(args.out, json.loads(json.dumps(report, default=str)))
    md = markdown(rows, args, have_avalanche)
    atomic_write_bytes(args.out.with_suffix(".md"), md.encode())
    print(md)


if __name__ == "__main__":
    main()
