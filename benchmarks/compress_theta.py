"""`edgeslice compress` at several θ on one cached baseline, with a dense control fine-tuned on the same budget.

The control answers "is the accuracy after compression due to slicing, or just to the extra fine-tuning epoch?":
the unpruned baseline gets exactly the fine-tuning the compressed models get.

    python benchmarks/compress_theta.py --thetas 0.9 0.95 0.99 --out benchmarks/results/compress_theta.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from edgeslice.artifacts.files import atomic_write_json
from edgeslice.data import load_data
from edgeslice.pipeline import CompressConfig, SliceConfig, cached_baseline, compress, make_prepare
from edgeslice.pipeline.report import report_json
from edgeslice.train import evaluate, train_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="mobilenetv3")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--thetas", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    ap.add_argument("--similarity", default="cka")
    ap.add_argument("--metric", default="taylor")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device-type", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compress_theta.json"))
    args = ap.parse_args()
    device = torch.device(args.device_type)
    base = CompressConfig(model=args.model, data=args.data, seed=args.seed)
    bundle = load_data(args.data, seed=args.seed)
    model, meta, path, cached = cached_baseline(
        args.model,
        bundle,
        epochs=base.train_epochs,
        seed=args.seed,
        device=device,
        batch_size=base.batch_size,
        lr=base.lr,
    )
    prepare = make_prepare(meta)
    acc0 = evaluate(model, bundle.test, prepare=prepare, device=device)
    control = copy.deepcopy(model)
    t = time.perf_counter()
    train_model(
        control,
        bundle.train,
        epochs=base.finetune_epochs,
        batch_size=base.batch_size,
        lr=base.finetune_lr,
        seed=args.seed + 1,
        prepare=prepare,
        device=device,
    )
    acc_control = evaluate(control, bundle.test, prepare=prepare, device=device)
    rows = [
        {
            "run": "baseline",
            "accuracy": acc0,
            "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": meta.info.get("train_seconds"),
        },
        {
            "run": "dense + same fine-tune (control)",
            "accuracy": acc_control,
            "params": sum(p.numel() for p in control.parameters()),
            "seconds": time.perf_counter() - t,
        },
    ]
    for theta in args.thetas:
        cfg = CompressConfig(
            model=args.model,
            data=args.data,
            seed=args.seed,
            checkpoint=str(path),
            slicing=SliceConfig(theta=theta, metric=args.metric, similarity=args.similarity),
        )
        rep = report_json(compress(cfg, args.out.parent / f"compress-theta{theta:g}", device))
        rows.append(
            {
                "run": f"compress θ={theta:g}",
                "accuracy": rep["accuracy_after"],
                "accuracy_before_finetune": rep["accuracy_restructured"],
                "params": rep["params_after"],
                "compression_rate": rep["compression_rate"],
                "critical_channels": rep["slicing"]["critical_channels"],
                "total_channels": rep["slicing"]["total_channels"],
                "onnx_bytes": rep["onnx_after"]["raw_bytes"],
                "onnx_bytes_before": rep["onnx_before"]["raw_bytes"],
                "latency_ms": rep["onnx_after"]["latency"]["median_ms"],
                "latency_ms_before": rep["onnx_before"]["latency"]["median_ms"],
                "latency_b32_ms": rep["onnx_after"]["latency_batch32"]["median_ms"],
                "latency_b32_ms_before": rep["onnx_before"]["latency_batch32"]["median_ms"],
                "parity": rep["onnx_parity_max_abs"],
                "index_bytes": rep["index_bytes"],
                "seconds": rep["timings_s"]["total_s"],
            }
        )
    for r in rows:
        print(json.dumps(r))
    atomic_write_json(
        args.out,
        {
            "model": meta.timm_name,
            "data": bundle.name,
            "metric": args.metric,
            "similarity": args.similarity,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
