"""Slicing at scale: peak memory and time of calibrate + solve as the classes grow (10 → 100 → 1000).

Each configuration runs in a fresh process (its peak RSS comes from ``wait4``): an untrained timm model (timm's
initialisation; the statistics' cost does not depend on the weights), synthetic 64-px images — a seeded pool of 256
random images repeated, labels sorted by class, batches of 100 as the pipeline uses — Taylor scores, centered CKA,
θ = 0.95. Reported per configuration: peak RSS, calibration seconds (the pass), solve seconds (every class's Gram
matrices and similarity curves, then the slice), index bytes (:class:`edgeslice.index.CriticalIndex`), and the
critical channels.

``--old PATH`` also runs the implementation in another checkout (e.g. main before issue 17: exact fixed-point Gram
sums for every class at once) where it fits: configurations whose Gram matrices alone would take more than
``--old-max-gb`` (Σ_layers classes × N² × 16 bytes) are skipped and marked so.

    nice -n 10 python benchmarks/bench_slicing_scale.py --old /tmp/main-checkout \
        --out benchmarks/results/bench_slicing_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GRID = [  # (model, classes, images per class)
    ("mobilenetv3_small_100", 10, 10),
    ("mobilenetv3_small_100", 10, 100),
    ("mobilenetv3_small_100", 100, 10),
    ("mobilenetv3_small_100", 100, 100),
    ("mobilenetv3_small_100", 1000, 10),
    ("mobilenetv3_large_100", 10, 10),
    ("mobilenetv3_large_100", 10, 100),
    ("mobilenetv3_large_100", 100, 10),
    ("mobilenetv3_large_100", 100, 100),
    ("mobilenetv3_large_100", 1000, 10),
]


class Batches:
    """Re-iterable synthetic calibration batches: sample i is pool image i mod 256, label i // per_class."""

    def __init__(self, classes: int, per_class: int, size: int, batch: int = 100):
        import torch

        g = torch.Generator().manual_seed(0)
        self.pool = torch.randn(256, 3, size, size, generator=g)
        self.n, self.per_class, self.batch = classes * per_class, per_class, batch

    def __iter__(self):
        import torch

        for start in range(0, self.n, self.batch):
            idx = torch.arange(start, min(start + self.batch, self.n))
            yield self.pool[idx % len(self.pool)], idx // self.per_class


def child(args: argparse.Namespace) -> None:
    import timm
    import torch

    from edgeslice.index import CriticalIndex
    from edgeslice.slicing import SemanticSlicer

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=args.classes).eval()
    batches = Batches(args.classes, args.per_class, args.size)
    slicer = SemanticSlicer(model, next(iter(batches))[0][:2], metric="taylor", similarity="cka")
    t = time.perf_counter()
    slicer.calibrate(batches, num_classes=args.classes)
    calib_s = time.perf_counter() - t
    t = time.perf_counter()
    result = slicer.slice(theta=0.95)
    solve_s = time.perf_counter() - t
    index = CriticalIndex(
        model_fingerprint="bench",
        timm_name=args.model,
        layers=[{"name": la.name, "observe": la.observe, "channels": la.channels} for la in slicer.layers],
        critical=result.critical,
        per_class=result.per_class,
        classes=[str(c) for c in range(args.classes)],
        params=result.params,
    )
    doc = {
        "calibrate_s": round(calib_s, 2),
        "solve_s": round(solve_s, 2),
        "index_bytes": len(index.to_bytes()),
        "critical": result.kept_channels,
        "channels": result.total_channels,
        "sum_n": sum(la.channels for la in slicer.layers),
        "sum_n2": sum(la.channels**2 for la in slicer.layers),
    }
    Path(args.result).write_text(json.dumps(doc))


def run(impl: str, path: Path, model: str, classes: int, per_class: int, args) -> dict:
    result = Path(args.tmp) / f"{impl}-{model}-{classes}-{per_class}.json"
    cmd = [sys.executable, __file__, "--child", "--model", model, "--classes", str(classes),
           "--per-class", str(per_class), "--size", str(args.size), "--threads", str(args.threads),
           "--result", str(result)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": str(args.threads)}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode()[-600:]
    proc.stderr.close()
    row = {"impl": impl, "model": model, "classes": classes, "per_class": per_class,
           "peak_rss_mb": round(usage.ru_maxrss / 1024), "wall_s": round(wall, 1)}  # fmt: skip
    if os.waitstatus_to_exitcode(status) != 0:
        row["error"] = err.strip().splitlines()[-1] if err.strip() else f"exit {status}"
    else:
        row.update(json.loads(result.read_text()))
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, help="a checkout of the previous implementation to run beside")
    ap.add_argument("--old-max-gb", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="run only these grid entries, as model:classes:per_class")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_slicing_scale.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--classes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--per-class", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import tempfile

    import timm

    here = Path(__file__).resolve().parents[1]
    grid = GRID if not args.only else [(m, int(c), int(p)) for m, c, p in (o.split(":") for o in args.only)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        for model, classes, per_class in grid:
            rows.append(run("new", here, model, classes, per_class, args))
            if args.old is not None:
                sum_n2 = rows[-1].get("sum_n2")
                if sum_n2 is None:  # the new run failed: count the channels from the model itself
                    net = timm.create_model(model)
                    sum_n2 = sum(m.out_channels**2 for m in net.modules() if hasattr(m, "out_channels"))
                need_gb = classes * sum_n2 * 16 / 1e9
                if need_gb > args.old_max_gb:
                    rows.append({"impl": "old", "model": model, "classes": classes, "per_class": per_class,
                                 "skipped": f"Gram sums need ~{need_gb:.0f} GB"})  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
                else:
                    rows.append(run("old", args.old, model, classes, per_class, args))
    report = {"args": {k: str(v) for k, v in vars(args).items() if k != "tmp"}, "load_average": os.getloadavg(),
              "rows": rows}  # fmt: skip
    from edgeslice.artifacts.files import atomic_write_json

    atomic_write_json(args.out, report)
    print("| model | classes × images | impl | peak RSS MB | calibrate s | solve s | index bytes | critical |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        what = r.get("skipped") or r.get("error")
        if what:
            tail = f"{what} | | | | |"
        else:
            tail = f"{r['peak_rss_mb']} | {r['calibrate_s']} | {r['solve_s']} | {r['index_bytes']} | {r['critical']} |"
        print(f"| {r['model']} | {r['classes']} × {r['per_class']} | {r['impl']} | {tail}")


if __name__ == "__main__":
    main()
