"""Class-incremental learning end to end through the CLI, on image folders (issue 16's must-show).

1. ``edgeslice train`` on a folder holding only classes 0-4 (task A);
2. ``edgeslice slice --theta 0.99`` on the same folder (the index carries the class statistics);
3. ``edgeslice increment`` with a folder holding only classes 5-9 (default head: routed);
4. the exported ``model.onnx`` scored with onnxruntime, one argmax over all 10 classes, on the validation images of
   all 10 classes (read as the checkpoint's model reads images), next to the same scoring of task A's ONNX export.

The two folders are views (symlinked class directories) of an ImageFolder such as ``benchmarks/fmnist_folder.py``
writes. Prints a table and writes JSON.

    python benchmarks/fmnist_folder.py /tmp/fmnist-rgb --train-per-class 1000 --val-per-class 300
    python benchmarks/classil_cli_e2e.py /tmp/fmnist-rgb --work /tmp/classil-e2e --image-size 32 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run(cmd: list[str]) -> dict:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "edgeslice", *cmd, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:1])} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
    doc = json.loads(out.stdout)
    print(f"edgeslice {cmd[0]}: {time.perf_counter() - t:.1f} s", flush=True)
    return doc


def view(src: Path, dst: Path, classes: list[str]) -> Path:
    """``dst/{train,val}/<class>`` → symlinks to ``src``'s class folders."""
    for split in ("train", "val"):
        (dst / split).mkdir(parents=True, exist_ok=True)
        for c in classes:
            link = dst / split / c
            if not link.exists():
                link.symlink_to((src / split / c).resolve(), target_is_directory=True)
    return dst


def score_onnx(folder: Path, data: Path) -> dict:
    """Accuracy of ``folder/model.onnx`` (one argmax) on ``data``'s validation images, labels matched by name."""
    import onnx
    import onnxruntime as ort

    from edgeslice.models import read_meta
    from edgeslice.pipeline import load_checkpoint_data, make_prepare
    from edgeslice.train import iterate_batches

    meta = read_meta(folder)
    props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    classes = json.loads(props["edgeslice.classes"])
    bundle = load_checkpoint_data(meta, str(data), seed=0, workers=0)
    prepare = make_prepare(meta)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    per_class: dict[str, list[int]] = {c: [0, 0] for c in bundle.classes}
    for x, y in iterate_batches(bundle.test, 256):
        pred = np.argmax(sess.run(None, {name: prepare(x).numpy()})[0], 1)
        for p, t in zip(pred.tolist(), y.tolist(), strict=True):
            true = bundle.classes[t]
            per_class[true][0] += int(p < len(classes) and classes[p] == true)
            per_class[true][1] += 1
    acc = {c: 100.0 * k / n for c, (k, n) in per_class.items()}
    return {
        "classes": classes,
        "head": props.get("edgeslice.head"),
        "per_class": acc,
        "mean": float(np.mean(list(acc.values()))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="ImageFolder with train/ and val/ (10 classes)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/classil-e2e"))
    ap.add_argument("--model", default="mobilenetv3")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=6.0)
    ap.add_argument("--increment-epochs", type=int, default=3)
    ap.add_argument("--theta", type=float, default=0.99)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/classil_cli_e2e.json"))
    args = ap.parse_args()
    classes = sorted(p.name for p in (args.folder / "train").iterdir() if p.is_dir())
    order = [c for c in ("tshirt", "trouser", "pullover", "dress", "coat") if c in classes]
    first = order if len(order) == 5 else classes[:5]
    second = [c for c in classes if c not in first]
    for d in ("task_a", "slice", "grown"):
        if (args.work / d).exists():
            sys.exit(f"{args.work / d} exists: pick an empty --work")
    a = view(args.folder, args.work / "data_a", first)
    b = view(args.folder, args.work / "data_b", second)
    common = ["--device-type", "cpu", "--seed", "0"]
    t0 = time.perf_counter()
    train = run(["train", args.model, "--data", str(a), "--image-size", str(args.image_size), "--epochs",
                 str(args.epochs), "--out", str(args.work / "task_a"), *common])  # fmt: skip
    sl = run(["slice", args.model, "--checkpoint", str(args.work / "task_a" / "model.safetensors"), "--data", str(a),
              "--theta", str(args.theta), "--out", str(args.work / "slice"), *common])  # fmt: skip
    inc = run(["increment", "--checkpoint", str(args.work / "task_a" / "model.safetensors"), "--index",
               str(args.work / "slice" / "critical_index"), "--new-data", str(b), "--epochs",
               str(args.increment_epochs), "--out", str(args.work / "grown"), *common])  # fmt: skip
    grown = score_onnx(args.work / "grown", args.folder)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "task_a_classes": first,
        "new_classes": second,
        "seconds": time.perf_counter() - t0,
        "train": {k: train.get(k) for k in ("accuracy", "test_accuracy", "out") if k in train},
        "slice": {k: sl.get(k) for k in ("critical_channels", "total_channels", "index_bytes") if k in sl},
        "increment": {
            "head": inc.get("head"),
            "tasks": inc.get("tasks"),
            "class_stats": inc.get("class_stats"),
            "isolation": inc.get("isolation"),
            "time_per_step_ms": inc.get("time_per_step_ms"),
            "peak_rss_bytes": inc.get("peak_rss_bytes"),
            "bytes_kept": inc.get("bytes_kept"),
            "index_bytes_after": inc.get("index_bytes_after"),
            "onnx_parity_max_abs": inc.get("onnx_parity_max_abs"),
        },
        "onnx_all_classes": grown,
    }
    from edgeslice.artifacts.files import atomic_write_json

    atomic_write_json(args.out, report)
    print(f"\nONNX, one argmax over {len(grown['classes'])} classes ({grown['head']} head): {grown['mean']:.2f}% mean")
    print("| class | accuracy |\n|---|---|")
    for c in first + second:
        print(f"| {c}{' (new)' if c in second else ''} | {grown['per_class'][c]:.1f}% |")
    print(f"task A mean {np.mean([grown['per_class'][c] for c in first]):.2f}%, "
          f"new classes mean {np.mean([grown['per_class'][c] for c in second]):.2f}% → {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
