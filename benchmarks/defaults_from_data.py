"""Defaults that fit the data (issue 35): input size and augmentation chosen from the images, measured from the CLI.

Part 1, training: ``edgeslice train mobilenetv3 --data FOLDER --epochs 5`` on three folders of Fashion-MNIST classes
0-4 (1,000 training and 500 validation images per class; the 224-px folder 300 / 100 to keep it affordable), with the
default (``--augment auto``: the images' size, the small-image recipe up to 64 px) beside ``--augment timm``,
``--augment small`` and ``--augment none``, and the old default (timm's 224 px, timm's recipe) on the 28-px folder.
Test accuracy is the command's own (its held-out split), time is the command's wall time.

Part 2, class-incremental from folders with defaults: ``train`` on the 28-px folder A (classes 0-4) → ``slice`` →
``increment`` with folder B (classes 5-9) → the exported ``model.onnx``, one argmax over the ten classes, on 500
validation images per class (mean of per-class accuracies; old = 0-4, new = 5-9), beside settings chosen by hand.

    python benchmarks/defaults_from_data.py --work /tmp/defaults          # ≈ 25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from chain_classil import NEW, TASK_A, score, view  # noqa: E402


def sh(cmd: list) -> None:
    subprocess.run([str(c) for c in cmd], check=True)


def edgeslice(cmd: list) -> tuple[dict, float]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "edgeslice", *map(str, cmd), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"edgeslice {cmd[0]} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ''}")
    return json.loads(out.stdout), time.perf_counter() - t


def folders(work: Path) -> dict[str, Path]:
    make = [sys.executable, HERE / "fmnist_folder.py"]
    spec = {
        "28 px gray (1,000/class)": ("a28", ["--gray", "--train-per-class", 1000, "--val-per-class", 500]),
        "64 px RGB (1,000/class)": ("a64", ["--size", 64, "--train-per-class", 1000, "--val-per-class", 500]),
        "224 px RGB (300/class)": ("a224", ["--size", 224, "--train-per-class", 300, "--val-per-class", 100]),
    }
    out = {}
    for label, (name, opts) in spec.items():
        d = work / name
        if not (d / "train").is_dir():
            sh([*make, d, "--classes", 0, 1, 2, 3, 4, *opts])
        out[label] = d
    b = work / "all28"
    if not (b / "train").is_dir():
        sh([*make, b, "--gray", "--train-per-class", 1000, "--val-per-class", 500])
    out["all"] = b
    return out


def part_training(work: Path, dirs: dict[str, Path], epochs: float) -> list[dict]:
    rows = []
    old = ["--image-size", 224, "--augment", "timm"]
    plan = [
        ("28 px gray (1,000/class)", "old default: timm's 224 px, timm recipe", old),
        ("28 px gray (1,000/class)", "default (auto)", []),
        ("28 px gray (1,000/class)", "--augment timm", ["--augment", "timm"]),
        ("28 px gray (1,000/class)", "--augment none", ["--augment", "none"]),
        ("64 px RGB (1,000/class)", "default (auto)", []),
        ("64 px RGB (1,000/class)", "--augment timm", ["--augment", "timm"]),
        ("64 px RGB (1,000/class)", "--augment none", ["--augment", "none"]),
        ("224 px RGB (300/class)", "default (auto)", []),
        ("224 px RGB (300/class)", "--augment small", ["--augment", "small"]),
        ("224 px RGB (300/class)", "--augment none", ["--augment", "none"]),
    ]  # fmt: skip
    for i, (label, name, extra) in enumerate(plan):
        out = work / f"train{i}"
        doc, s = edgeslice(["train", "mobilenetv3", "--data", dirs[label], "--epochs", epochs, "--out", out,
                            "--device-type", "cpu", "--quiet", *extra])  # fmt: skip
        meta = json.loads((out / "model.json").read_text())
        row = {"folder": label, "run": name, "flags": " ".join(map(str, extra)), "input_px": meta["input_size"],
               "augment": meta["info"].get("augment"), "seconds": round(s, 1),
               "test_accuracy": round(100 * doc["test_accuracy"], 2) if doc["test_accuracy"] <= 1 else
               round(doc["test_accuracy"], 2)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def part_classil(work: Path, all28: Path, variants: dict[str, dict[str, list]]) -> list[dict]:
    data_a = view(all28, work / "cil_a", TASK_A)
    data_b = view(all28, work / "cil_b", NEW)
    rows = []
    for name, opts in variants.items():
        w = work / f"cil-{name.replace(' ', '_').replace('/', '-')}"
        t = time.perf_counter()
        edgeslice(["train", "mobilenetv3", "--data", data_a, "--out", w / "a", "--device-type", "cpu", "--quiet",
                   *opts.get("train", [])])  # fmt: skip
        edgeslice(["slice", "mobilenetv3", "--checkpoint", w / "a" / "model.safetensors", "--data", data_a,
                   "--out", w / "s", "--device-type", "cpu", "--quiet", *opts.get("slice", [])])  # fmt: skip
        doc, _ = edgeslice(["increment", "--checkpoint", w / "a" / "model.safetensors", "--index",
                            w / "s" / "critical_index", "--new-data", data_b, "--out", w / "i", "--device-type",
                            "cpu", "--quiet", *opts.get("increment", [])])  # fmt: skip
        acc = score(w / "i", all28)
        row = {"variant": name, "opts": {k: " ".join(map(str, v)) for k, v in opts.items()}, "head": doc.get("head"),
               "old": round(acc["old"], 2), "new": round(acc["new"], 2), "mean": round(acc["mean"], 2),
               "seconds": round(time.perf_counter() - t)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


VARIANTS = {
    "defaults": {},
    "train 3 epochs (the earlier default)": {"train": ["--epochs", 3]},
    "train 10 epochs": {"train": ["--epochs", 10]},
    "train 10 epochs, θ 0.99": {"train": ["--epochs", 10], "slice": ["--theta", 0.99]},
    "train 10 epochs, θ 0.99, head lda": {
        "train": ["--epochs", 10],
        "slice": ["--theta", 0.99],
        "increment": ["--head", "lda"],
    },  # fmt: skip
    "old defaults (224 px, timm recipe)": {"train": ["--image-size", 224, "--augment", "timm"]},
    "train --augment small": {"train": ["--augment", "small"]},
    "head lda": {"increment": ["--head", "lda"]},
    "train 10 epochs, head lda": {"train": ["--epochs", 10], "increment": ["--head", "lda"]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/defaults"))
    ap.add_argument("--epochs", type=float, default=5.0, help="part 1's training epochs (the issue's table: 5)")
    ap.add_argument("--parts", nargs="+", default=["train", "classil"], choices=["train", "classil"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "defaults_from_data.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dirs = folders(args.work)
    doc: dict = {"command": " ".join(sys.argv)}
    if "train" in args.parts:
        doc["training"] = part_training(args.work, dirs, args.epochs)
        print("\n| folder | run | input px | recipe | train s | test accuracy (%) |\n|---|---|---|---|---|---|")
        for r in doc["training"]:
            print(f"| {r['folder']} | {r['run']} | {r['input_px']} | {r['augment']} | {r['seconds']} | "
                  f"{r['test_accuracy']:.2f} |")  # fmt: skip
    if "classil" in args.parts:
        doc["classil"] = part_classil(args.work, dirs["all"], {k: VARIANTS[k] for k in args.variants})
        print("\n| settings | head | old | new | average | s |\n|---|---|---|---|---|---|")
        for r in doc["classil"]:
            print(f"| {r['variant']} | {r['head']} | {r['old']:.2f} | {r['new']:.2f} | {r['mean']:.2f} | "
                  f"{r['seconds']} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
