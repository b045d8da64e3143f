"""The paper's RQ1 on Fashion-MNIST: MobileNetV3-small and the paper's MLP (512-256), AUC per metric and strategy.

Checks the paper's claim semantic > category-wise > global (AUC of accuracy vs compression rate over the common
compression range, see edgeslice/studies/sweep.py) for every metric, and puts random / weight-magnitude channels
at the semantic slices' per-layer budgets beside them. One calibration pass per model serves every metric, θ and
ratio.

    nice -n 10 python benchmarks/rq1_slicing.py --out benchmarks/results/rq1_slicing.json
    nice -n 10 python benchmarks/rq1_slicing.py --models mlp --seeds 0 1 2 3 4 \\
        --out benchmarks/results/rq1_seeds_mlp_cka.json

The MLP is timm's ``edgeslice_mlp`` when ``edgeslice.mlp`` registers it, else a plain ``nn.Sequential`` built and
trained here. Accuracy is measured on a seeded class-stratified test sample (``--test-limit``) to keep the ~250
masked evaluations per model affordable on a CPU.

Seeds (``--seeds``, default 0): each seed s gets its own baseline (trained with seed s, cached), its own calibration
sample (``calibration_set(..., s)``), its own stratified test sample and random-channel draws (``EvaluateConfig.seed
= s``); the data split is the same for every seed (Fashion-MNIST ships one). Seed 0 runs exactly as before the option
existed. Output layout: with one seed, ``{"data", "config", "seeds": [s], "models": {name: report}}`` (the layout of
earlier results); with several, ``{"data", "config", "seeds", "runs": [{"seed": s, "models": {name: report}}, ...]}``,
where the top-level ``config`` is the first seed's and every report carries its own ``config`` (its ``seed`` is the
run's). The file is rewritten after every seed, so an interrupted run keeps the seeds it finished.
``benchmarks/paper_stats.py`` reads either layout and tests the AUC differences over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeslice.artifacts.files import atomic_write_json
from edgeslice.data import load_data
from edgeslice.pipeline import cached_baseline, calibration_set, make_prepare
from edgeslice.studies.figures import plot_rq1
from edgeslice.studies.rq1 import EvaluateConfig, run_evaluation


def mlp_model(bundle, epochs: float, device, seed: int = 0) -> tuple[nn.Module, str, float | None]:
    """(model, description, cached test accuracy) for the paper's 512-256 MLP, trained with ``seed``."""
    import timm

    try:
        import edgeslice.mlp  # noqa: F401 - registers edgeslice_mlp with timm
    except ImportError:
        pass
    if timm.is_model("edgeslice_mlp"):
        model, meta, path, _ = cached_baseline("edgeslice_mlp", bundle, epochs=epochs, seed=seed, device=device)
        return model, f"timm edgeslice_mlp ({path})", meta.info.get("test_accuracy")
    from edgeslice.train import train_model

    torch.manual_seed(seed)
    side = bundle.image_size
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(bundle.in_chans * side * side, 512),
        nn.ReLU(),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Linear(256, len(bundle.classes)),
    )
    train_model(model, bundle.train, epochs=epochs, seed=seed, prepare=make_prepare(bundle), device=device)
    return model.eval(), "nn.Sequential MLP trained here", None


def print_report(name: str, report: dict[str, Any], strategies: tuple[str, ...]) -> None:
    """The model's AUC table, DeepArc and the masking study on stdout."""
    print(
        f"\n== {name}: {report['source']}; test-sample accuracy {report['baseline_accuracy']:.2f}% "
        f"({report['test_samples']} images); timings {report['timings_s']}"
    )
    print(f"{'metric':9s} {'range %':>12s} " + " ".join(f"{s:>9s}" for s in strategies) + "  sem>cat>glob")
    for metric, entry in report["auc"].items():
        rng = entry["range"]
        cells = " ".join(
            f"{entry['auc'][s]:9.2f}" if entry["auc"].get(s) is not None else f"{'-':>9s}" for s in strategies
        )
        rtxt = f"{rng[0]:.1f}-{rng[1]:.1f}" if rng else "-"
        print(f"{metric:9s} {rtxt:>12s} {cells}  {entry['order_ok']}")
    d = report["deeparc"]
    if d:
        print(
            f"DeepArc (CKA>={d['threshold']}): removed {d['redundant']} → compression "
            f"{100 * d['compression_rate']:.1f}%, accuracy {d['accuracy']:.2f}% (max CKA {d['max_cka']})"
        )
    if report["masking"]:
        print("masking study (accuracy % after masking each band of top-ranked channels):")
        for scope in ("global", "category"):
            rows = [r for r in report["masking"] if r["scope"] == scope]
            bands = list(dict.fromkeys(r["band"] for r in rows))
            metrics = list(dict.fromkeys(r["metric"] for r in rows))
            acc = {(r["metric"], r["band"]): r["accuracy"] for r in rows}
            print(f"  {scope:8s} " + " ".join(f"{m:>9s}" for m in metrics))
            for b in bands:
                print(f"  {b:8s} " + " ".join(f"{acc[(m, b)]:9.2f}" for m in metrics))


def layout(data: str, cfg: EvaluateConfig, seeds: list[int], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The result document: ``models`` for one seed (the earlier layout), ``runs`` for several."""
    doc: dict[str, Any] = {"data": data, "config": cfg.to_dict(), "seeds": seeds}
    if len(seeds) == 1:
        doc["models"] = runs[0]["models"] if runs else {}
    else:
        doc["runs"] = runs
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mobilenetv3", "mlp"])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=float, default=3.0, help="MobileNetV3 baseline epochs (cached)")
    ap.add_argument("--mlp-epochs", type=float, default=10.0, help="MLP baseline epochs (cached)")
    ap.add_argument("--calib-per-class", type=int, default=100)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--bands", type=int, default=5)
    ap.add_argument("--metrics", nargs="+", default=None)
    ap.add_argument("--mask", default="coupled", choices=["coupled", "critical"])
    ap.add_argument("--similarity", default="cka", choices=["cka", "gram"])
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one run per seed: its own baseline, calibration sample, test sample and random draws",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/rq1_slicing.json"))
    args = ap.parse_args()
    seeds = list(dict.fromkeys(args.seeds))
    if len(seeds) != len(args.seeds):
        ap.error("--seeds: each seed once")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    device = torch.device("cpu")
    bundle = load_data(args.data, seed=0)  # the data split is shared by every seed
    prepare = make_prepare(bundle)
    base_cfg = EvaluateConfig(
        calib_per_class=args.calib_per_class,
        test_limit=args.test_limit,
        bands=args.bands,
        mask=args.mask,
        similarity=args.similarity,
        seed=seeds[0],
        **({"metrics": tuple(args.metrics)} if args.metrics else {}),
    )
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        cfg = dataclasses.replace(base_cfg, seed=seed)
        calib = calibration_set(bundle, args.calib_per_class, seed)
        run: dict[str, Any] = {"seed": seed, "models": {}}
        runs.append(run)
        for name in args.models:
            t = time.perf_counter()
            if name == "mlp":
                model, source, cached_acc = mlp_model(bundle, args.mlp_epochs, device, seed=seed)
            else:
                model, meta, path, _ = cached_baseline(name, bundle, epochs=args.epochs, seed=seed, device=device)
                source, cached_acc = f"{meta.timm_name} ({path})", meta.info.get("test_accuracy")
            baseline_s = time.perf_counter() - t
            report = run_evaluation(
                model, calib, bundle.test, num_classes=len(bundle.classes), cfg=cfg, prepare=prepare, device=device
            )
            report["source"], report["full_test_accuracy"], report["baseline_s"] = source, cached_acc, baseline_s
            run["models"][name] = report
            suffix = f"-{name}" if len(seeds) == 1 else f"-{name}-seed{seed}"
            png = args.out.with_name(f"{args.out.stem}{suffix}.png")
            plot_rq1(
                report["points"],
                png,
                title=f"{name} on {bundle.name}{'' if len(seeds) == 1 else f' (seed {seed})'}: masked slices, "
                "accuracy vs compression",
                baseline_accuracy=report["baseline_accuracy"],
                deeparc=report["deeparc"],
                auc=report["auc"],
            )
            print_report(f"{name} seed {seed}", report, cfg.strategies)
            print(f"figure → {png}")
        atomic_write_json(args.out, layout(bundle.name, base_cfg, seeds, runs))
    summary = {
        f"{name} seed {run['seed']}": {m: {"auc": e["auc"], "order_ok": e["order_ok"]} for m, e in rep["auc"].items()}
        for run in runs
        for name, rep in run["models"].items()
    }
    print(json.dumps(summary, indent=1))
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
