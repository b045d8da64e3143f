"""Slicing hot paths, every ratio measured in one run on the same cached baseline and calibration set.

(a) solver: the minimal k of every class and layer for 10 θ values, exact prefix-sum solver vs the paper's linear
    scan with interval 1 and 8, on the same statistics;
(b) calibration cost: a calibration pass per metric family vs one plain forward pass over the calibration set
    (forward-only metrics) or one plain forward+backward (Taylor, DeepLIFT); goal ≤ 1.5×;
(c) single-pass DeepLIFT vs captum ``LayerDeepLift`` once per layer: largest difference and time ratio, plus the
    DeepLIFT completeness gap of the trained model (captum's convergence delta at the input).

    nice -n 10 python benchmarks/bench_slicing.py --out benchmarks/results/bench_slicing.json

Timings are the minimum of ``--repeat`` runs with ``--threads`` intra-op threads (1 by default: on a shared 2-core
machine two threads make small-batch CPU inference many times slower, see tests/slicing/conftest.py).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from edgeslice.artifacts.files import atomic_write_json
from edgeslice.data import load_data
from edgeslice.pipeline import cached_baseline, calibration_set, make_prepare
from edgeslice.slicing import SemanticSlicer
from edgeslice.slicing.deeplift import channel_attributions, completeness_gap
from edgeslice.train import iterate_batches

THETAS = [round(0.90 + 0.01 * i, 2) for i in range(10)]


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv3")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=float, default=3.0, help="baseline training epochs (cached)")
    ap.add_argument("--calib-per-class", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deeplift-samples", type=int, default=100, help="samples for (c)")
    ap.add_argument("--skip-scan", action="store_true", help="skip the (slow) interval-1 linear scan")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_slicing.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    device = torch.device("cpu")
    bundle = load_data(args.data, seed=0)
    model, meta, ck, cached = cached_baseline(args.model, bundle, epochs=args.epochs, seed=0, device=device)
    model.eval()
    prepare = make_prepare(meta)
    calib = calibration_set(bundle, args.calib_per_class, 0)
    # Materialised once so every timed pass reads the same tensors (no data loading in the timings).
    batches = [(prepare(x), y) for x, y in iterate_batches(calib, args.batch_size)]
    example = batches[0][0][:2]
    report: dict = {
        "model": meta.timm_name,
        "checkpoint": str(ck),
        "baseline_accuracy": meta.info.get("test_accuracy"),
        "calibration_samples": len(calib),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeat": args.repeat,
    }

    # (b) calibration vs plain passes ------------------------------------------------------------------------
    def plain_forward():
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    def plain_forward_backward():
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, reduction="sum").backward()
        model.zero_grad(set_to_none=True)

    def plain_forward_backward_activations():
        # Backward to the input only (no weight gradients): what the Taylor and DeepLIFT passes need at most.
        grads = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            for x, y in batches:
                xi = x.clone().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)
        finally:
            for p, g in zip(model.parameters(), grads, strict=True):
                p.requires_grad_(g)

    layers = SemanticSlicer(model, example).layers

    def calibrate(metrics):
        slicer = SemanticSlicer(model, example, metric=metrics[0], layers=layers)
        slicer.calibrate(batches, num_classes=len(meta.classes), metrics=metrics)
        return slicer

    t_fwd = best_of(args.repeat, plain_forward)
    t_fwdbwd = best_of(args.repeat, plain_forward_backward)
    t_fwdbwd_act = best_of(args.repeat, plain_forward_backward_activations)
    t_avg = best_of(args.repeat, lambda: calibrate(["avg"]))
    t_taylor = best_of(args.repeat, lambda: calibrate(["taylor"]))
    t_deeplift = best_of(args.repeat, lambda: calibrate(["deeplift"]))
    t_all = best_of(args.repeat, lambda: calibrate(["avg", "taylor", "deeplift"]))
    slicer = calibrate(["taylor"])

    def slice_10():
        slicer._curves = {}
        for theta in THETAS:
            slicer.slice(theta=theta)

    t_slice10 = best_of(args.repeat, slice_10)
    report["calibration"] = {
        "plain_forward_s": t_fwd,
        "plain_forward_backward_s": t_fwdbwd,
        "plain_forward_backward_no_weight_grads_s": t_fwdbwd_act,
        "avg_var_ens_s": t_avg,
        "taylor_s": t_taylor,
        "deeplift_s": t_deeplift,
        "all_metrics_one_pass_s": t_all,
        "slice_10_thetas_s": t_slice10,
        "ratio_avg_over_forward": t_avg / t_fwd,
        "ratio_taylor_over_forward_backward": t_taylor / t_fwdbwd,
        "ratio_deeplift_over_forward_backward": t_deeplift / t_fwdbwd,
        "ratio_taylor_over_forward_backward_no_weight_grads": t_taylor / t_fwdbwd_act,
        "ratio_deeplift_over_forward_backward_no_weight_grads": t_deeplift / t_fwdbwd_act,
        "ratio_all_metrics_over_forward_plus_forward_backward": t_all / (t_fwd + t_fwdbwd),
        "ratio_taylor_plus_10_slices_over_forward_backward": (t_taylor + t_slice10) / t_fwdbwd,
    }

    # (a) exact solver vs linear scan -------------------------------------------------------------------------
    def exact():
        slicer._curves = {}
        return slicer.k_table(THETAS)

    t_exact = best_of(args.repeat, exact)
    k_exact = exact()
    solver = {"thetas": THETAS, "exact_s": t_exact}
    for interval in [8] if args.skip_scan else [1, 8]:
        t = time.perf_counter()
        k_scan = slicer.k_table(THETAS, solver="scan", interval=interval)
        solver[f"scan_i{interval}_s"] = time.perf_counter() - t
        solver[f"scan_i{interval}_over_exact"] = solver[f"scan_i{interval}_s"] / t_exact
        same = all(torch.equal(k_scan[n], k_exact[n]) for n in k_exact)
        solver[f"scan_i{interval}_same_k_as_exact"] = same
    report["solver"] = solver

    # (c) single-pass DeepLIFT vs LayerDeepLift per layer -----------------------------------------------------
    from captum.attr import LayerDeepLift

    x = torch.cat([b[0] for b in batches])[:: max(1, len(calib) // args.deeplift_samples)][: args.deeplift_samples]
    y = torch.cat([b[1] for b in batches])[:: max(1, len(calib) // args.deeplift_samples)][: args.deeplift_samples]
    modules = dict(model.named_modules())
    ours: dict = {}

    def single_pass():
        ours["attr"], _ = channel_attributions(model, layers, x, y)

    refs: dict = {}

    def per_layer():
        for la in layers:
            r = LayerDeepLift(model, modules[la.observe]).attribute(x, baselines=torch.zeros_like(x), target=y)
            refs[la.name] = (r.flatten(2).sum(2) if r.dim() > 2 else r).detach()

    t_single = best_of(args.repeat, single_pass)
    t_layers = best_of(1, per_layer)
    max_abs = max(float((ours["attr"][n] - refs[n]).abs().max()) for n in refs)
    max_rel = max(float((ours["attr"][n] - refs[n]).abs().max() / refs[n].abs().max().clamp_min(1e-12)) for n in refs)
    stem = layers[0].name
    with torch.no_grad():
        out = model(torch.cat([x, torch.zeros_like(x)]))
    delta_f = (out[: len(x)].gather(1, y[:, None]) - out[len(x) :].gather(1, y[:, None])).squeeze(1).double()
    stem_gap = ((ours["attr"][stem].sum(1).double() - delta_f).abs() / delta_f.abs().clamp_min(1e-12)).median()
    report["deeplift"] = {
        "samples": len(x),
        "layers": len(layers),
        "single_pass_s": t_single,
        "layer_deeplift_all_layers_s": t_layers,
        "speedup": t_layers / t_single,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "completeness_input": completeness_gap(model, x, y),
        "completeness_stem_median_rel": float(stem_gap),
    }

    print(json.dumps(report, indent=2))
    c, s, d = report["calibration"], report["solver"], report["deeplift"]
    print(f"\n{meta.timm_name}, {len(calib)} calibration images, {len(layers)} layers, {args.threads} thread(s)")
    print(f"(a) 10 θ: exact {s['exact_s']:.3f}s", end="")
    for i in [8] if args.skip_scan else [1, 8]:
        print(f" | scan i={i} {s[f'scan_i{i}_s']:.2f}s ({s[f'scan_i{i}_over_exact']:.0f}x, ", end="")
        print(f"same k: {s[f'scan_i{i}_same_k_as_exact']})", end="")
    print()
    print(
        f"(b) avg/var/ens {c['avg_var_ens_s']:.2f}s = {c['ratio_avg_over_forward']:.2f}x forward "
        f"({c['plain_forward_s']:.2f}s); taylor {c['taylor_s']:.2f}s = "
        f"{c['ratio_taylor_over_forward_backward']:.2f}x fwd+bwd ({c['plain_forward_backward_s']:.2f}s); deeplift "
        f"{c['deeplift_s']:.2f}s = {c['ratio_deeplift_over_forward_backward']:.2f}x fwd+bwd; 10 slices "
        f"{c['slice_10_thetas_s']:.2f}s"
    )
    print(
        f"    without weight gradients fwd+bwd is {c['plain_forward_backward_no_weight_grads_s']:.2f}s: taylor "
        f"{c['ratio_taylor_over_forward_backward_no_weight_grads']:.2f}x, deeplift "
        f"{c['ratio_deeplift_over_forward_backward_no_weight_grads']:.2f}x; all metrics in one pass "
        f"{c['all_metrics_one_pass_s']:.2f}s = {c['ratio_all_metrics_over_forward_plus_forward_backward']:.2f}x "
        "(forward + fwd+bwd)"
    )
    print(
        f"(c) DeepLIFT single pass {d['single_pass_s']:.2f}s vs LayerDeepLift x{d['layers']} "
        f"{d['layer_deeplift_all_layers_s']:.2f}s ({d['speedup']:.1f}x); max |diff| {d['max_abs_diff']:.3g} "
        f"(rel {d['max_rel_diff']:.3g}); completeness gap at input: median "
        f"{d['completeness_input']['median_rel']:.3f}, max {d['completeness_input']['max_rel']:.3f}"
    )
    atomic_write_json(args.out, report)
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
