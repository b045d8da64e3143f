"""Calibration cost vs input size: one calibration pass against one plain pass over the same calibration set.

Since issue 17 the pass keeps each sample's pooled features (and, for Taylor, its pooled attributions) as float32
rows and only sums them per class at the end (Σ N per sample, no per-chunk Gram matrices), so its extra cost over
the model's own forward is small and shrinks with the pixels. This script measures the ratio "calibration /
forward" at several sizes in one run, on the same model and images (the per-class Gram matrices are formed later,
by the solve, and are not part of these timings):

- forward: the model in eval mode over the calibration batches, no hooks;
- avg: ``collect_stats`` for the forward-only metrics (Avg/Var/Ens, and the feature rows CKA needs);
- forward+backward: a plain backward of the summed cross-entropy per batch;
- taylor: ``collect_stats(with_gradients=True)``.

MobileNetV3-small with timm's initialisation (the op count does not depend on the weights; denormals are flushed so
untrained weights cannot slow the arithmetic), Fashion-MNIST resized to each size, 100 images per class, batches of
100, one thread, minimum of ``--repeat`` runs.

    nice -n 10 python benchmarks/bench_calibration_cost.py --out benchmarks/results/bench_calibration_cost.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_slicing import best_of  # benchmarks/ is on sys.path when run as a script

from edgeslice.artifacts.files import atomic_write_json
from edgeslice.data import load_data
from edgeslice.models import create_model
from edgeslice.pipeline import calibration_set, make_prepare
from edgeslice.slicing import find_layers
from edgeslice.slicing.stats import collect_stats
from edgeslice.train import iterate_batches


def measure(size: int, args) -> dict:
    bundle = load_data("fashion-mnist", image_size=size, seed=0)
    torch.manual_seed(0)
    model = create_model("mobilenetv3_small_100", num_classes=len(bundle.classes), in_chans=bundle.in_chans).eval()
    prepare = make_prepare(bundle)
    batches = [(prepare(x), y) for x, y in iterate_batches(calibration_set(bundle, args.per_class, 0), args.batch)]
    layers = find_layers(model, batches[0][0][:2])
    classes = len(bundle.classes)

    def forward():
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    def forward_backward():
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, reduction="sum").backward()

    def avg():
        collect_stats(model, layers, batches, num_classes=classes)

    def taylor():
        collect_stats(model, layers, batches, num_classes=classes, with_gradients=True)

    t = {name: best_of(args.repeat, fn) for name, fn in
         (("forward", forward), ("avg", avg), ("forward_backward", forward_backward), ("taylor", taylor))}  # fmt: skip
    row = {
        "image_size": size,
        "samples": sum(len(y) for _, y in batches),
        "layers": len(layers),
        "sum_channels_squared": sum(la.channels**2 for la in layers),
        "seconds": t,
        "avg_over_forward": t["avg"] / t["forward"],
        "taylor_over_forward_backward": t["taylor"] / t["forward_backward"],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[28, 112])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_calibration_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    import os

    rows = [measure(s, args) for s in args.sizes]
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "load_average": os.getloadavg(), "rows": rows}
    atomic_write_json(args.out, report)
    print("| image | avg / forward | taylor / (forward+backward) | forward s | avg s |")
    print("|---|---|---|---|---|")
    for r in rows:
        s = r["seconds"]
        print(f"| {r['image_size']} px | {r['avg_over_forward']:.2f}× | {r['taylor_over_forward_backward']:.2f}× | "
              f"{s['forward']:.2f} | {s['avg']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
