"""Batch-1 latency as a device runs it: dense vs compressed vs int8, one thread, at 28 and 224 px, in onnxruntime and
OpenVINO, for MobileNetV3-small, MobileNetV2 and EfficientNet-B0.

Where the models come from. Each architecture goes through the product once: ``compress`` (Python API, the same as
``edgeslice compress MODEL --data digits --train-epochs 8 --finetune-epochs 0 --theta 0.95``) trains a baseline on
scikit-learn's digits (bundled, nothing downloaded; 1 input channel), slices it at θ 0.95 and restructures it with
the default width rule. *dense* is that cached baseline checkpoint, *compressed* the restructured checkpoint, *int8*
the compressed model quantized by :func:`edgeslice.deploy.quantize.quantize_int8` (the product's static QDQ,
per-channel, fp32 head; calibrated on 64 seeded random images, normalised: scales only, they do not change which
kernels run). Latency depends on the architecture (the channel counts the slice kept), not on the weights' values;
the baseline is trained only so that the slice sees a model that has learned its classes (its accuracy and the
restructured model's, without fine-tuning, are recorded, not claimed).

How it is timed. At each input size (28 and 224 px: the size a 28-px data set ships at, and the size these
architectures are deployed at) both checkpoints are exported again with :func:`edgeslice.deploy.export.export_onnx`
(same weights) and every file is timed with :func:`edgeslice.deploy.measure.onnx_latency` — the one implementation
``compress`` uses — on one thread, batch 1, in onnxruntime and in OpenVINO (f32, one stream; needs
``pip install 'edgeslice[openvino]'``, skipped with a note otherwise). The three variants are measured in turn,
``--repeats`` times, and each figure is the median of the repeats' medians, so a burst of load on a shared machine
hits all three alike.

    python benchmarks/bench_latency.py                       # all three models → benchmarks/results/bench_latency.json
    python benchmarks/bench_latency.py --models mobilenetv3_small_100 --runs 50 --repeats 1 --out /tmp/bench.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeslice.artifacts.files import atomic_write_json
from edgeslice.deploy.export import export_onnx
from edgeslice.deploy.measure import onnx_latency
from edgeslice.deploy.quantize import quantize_int8
from edgeslice.models import load_checkpoint
from edgeslice.pipeline import CompressConfig, SliceConfig, compress, edgeslice_home, make_prepare
from edgeslice.pipeline.report import report_json

MODELS = ("mobilenetv3_small_100", "mobilenetv2_100", "efficientnet_b0")
SIZES = (28, 224)
VARIANTS = ("dense", "compressed", "int8")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtimes() -> tuple[list[str], dict[str, str]]:
    """The runtimes to time and their versions (OpenVINO only when installed)."""
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    try:
        import openvino

        versions["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        print("note: OpenVINO is not installed (pip install 'edgeslice[openvino]'): onnxruntime only", file=sys.stderr)
    return list(versions), versions


def compress_once(model: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One ``compress`` run (the product's restructure at θ); its report and the two checkpoints' paths."""
    cfg = CompressConfig(
        model=model,
        data="digits",
        slicing=SliceConfig(theta=args.theta),
        train_epochs=args.train_epochs,
        finetune_epochs=0,
        seed=args.seed,
        dense_control=False,
    )
    out = work / model
    report = report_json(compress(cfg, out, torch.device("cpu")))
    source = report["baseline"]["source"]
    dense = Path(source.replace("$EDGESLICE_HOME", str(edgeslice_home()), 1))
    return {"report": report, "dense": dense, "compressed": out / "model.safetensors"}


def export_variants(paths: dict[str, Path], size: int, work: Path, seed: int) -> tuple[dict[str, Path], int]:
    """``dense``/``compressed`` exported at ``size`` px and ``int8`` quantized from the compressed export; and the
    input channels."""
    files: dict[str, Path] = {}
    for name in ("dense", "compressed"):
        model, meta = load_checkpoint(paths[name])
        files[name] = export_onnx(model, torch.zeros(1, meta.in_chans, size, size), work / f"{name}-{size}.onnx")
    g = torch.Generator().manual_seed(seed)
    calib = make_prepare(meta)(torch.rand(64, meta.in_chans, size, size, generator=g)).numpy()
    files["int8"] = quantize_int8(files["compressed"], work / f"int8-{size}.onnx", [calib])
    return files, meta.in_chans


def time_variants(files: dict[str, Path], shape: tuple[int, ...], runtime: str, args: argparse.Namespace) -> dict:
    """Each variant timed in turn on ``shape`` (batch 1), ``args.repeats`` times; per variant the median of the
    repeats' medians."""
    records: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for v in VARIANTS:
            records[v].append(
                onnx_latency(files[v], shape, runs=args.runs, warmup=args.warmup, threads=1, runtime=runtime)
            )
    return {
        v: {
            "median_ms": statistics.median(r["median_ms"] for r in recs),
            "p90_ms": statistics.median(r["p90_ms"] for r in recs),
            "repeat_medians_ms": [r["median_ms"] for r in recs],
            "threads": recs[0]["threads"],
            "batch": 1,
            "runs": args.runs,
        }
        for v, recs in records.items()
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per (model, size, runtime), the ratios to dense beside each pair."""
    lines = [
        "| model | px | runtime | dense (ms) | compressed (ms) | dense / compressed | int8 (ms) | dense / int8 |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, c, q = (r["latency"][v]["median_ms"] for v in VARIANTS)
        cells = [r["model"], r["size"], r["runtime"], f"{d:.3f}", f"{c:.3f}", f"{d / c:.2f}×", f"{q:.3f}"]
        lines.append("| " + " | ".join(str(x) for x in cells) + f" | {d / q:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--theta", type=float, default=0.95)
    ap.add_argument("--train-epochs", type=float, default=8.0, help="baseline epochs on digits (cached)")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per measurement")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="rounds over the three variants (median of medians)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_latency.json"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    names, versions = runtimes()
    rows: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        for model in args.models:
            run = compress_once(model, work / "compress", args)
            rep = run["report"]
            models.append(
                {
                    "model": model,
                    "theta": rep["slicing"]["theta"],
                    "widths": rep["config"]["widths"],
                    "params_dense": rep["params_before"],
                    "params_compressed": rep["params_after"],
                    "channels": [rep["slicing"]["total_channels"], rep["slicing"]["critical_channels"]],
                    "trained_input_px": rep["data"].get("image_size"),
                    "baseline_epochs": args.train_epochs,
                    "accuracy_dense": rep["accuracy_before"],
                    "accuracy_compressed_no_finetune": rep["accuracy_after"],
                }
            )
            for size in args.sizes:
                files, in_chans = export_variants(run, size, work / model, args.seed)
                sizes = {v: files[v].stat().st_size for v in VARIANTS}
                for runtime in names:
                    latency = time_variants(files, (1, in_chans, size, size), runtime, args)
                    row = {"model": model, "size": size, "runtime": runtime, "latency": latency, "onnx_bytes": sizes}
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    doc = {
        "command": "python benchmarks/bench_latency.py " + " ".join(sys.argv[1:]),
        "what": "batch-1 latency, 1 thread, median of the repeats' medians (ms); dense vs compressed (θ restructure) "
        "vs int8 (static QDQ of the compressed model); weights: short digits baselines (latency depends on the "
        "architecture, not the weights)",
        "environment": {
            "cpu": cpu_name(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            **versions,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models": models,
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(args.out, doc)
    print(table(rows))
    print(f"wrote {args.out} ({doc['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
