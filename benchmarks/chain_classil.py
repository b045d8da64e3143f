"""Class-incremental accuracy through the chain: compress → bundle → grow, both paths, beside the dense flow.

Fashion-MNIST as an RGB PNG ImageFolder (``benchmarks/fmnist_folder.py``), task A = classes 0-4 (tshirt … coat),
then the protocols of the README's class-incremental tables:

* ``I``: classes 5-9 (every training image of each) — one increment on the host, five single-class steps on the
  device (the discriminant does not depend on the order);
* ``FS20`` / ``FS100``: five single-class increments (5, 6, 7, 8, 9), each from 20 / 100 seeded training images.

Rows (``--paths``), every one run from the command line as a user runs it:

* ``device``: ``edgeslice compress`` (defaults, ``--theta``) → ``edgeslice-device add-class`` per class (no torch);
* ``host``: the same bundle → ``edgeslice increment BUNDLE`` (defaults: ``--head auto``);
* ``dense``: the uncompressed task-A model → ``edgeslice slice --theta 0.99`` → ``edgeslice increment`` (defaults);
* ``replay``: the dense model → ``edgeslice increment --head trained --replay DATA_A --replay-fraction 0.1``.

Accuracy: the final ``model.onnx`` (onnxruntime), one argmax over all ten classes, on every validation image of the
ten classes (mean of per-class accuracies), read as the checkpoint's model reads images — the same reader for every
row. ``--grow-theta`` takes several values to measure the room a compressed model keeps for growth (``host`` rows).

    python benchmarks/fmnist_folder.py /tmp/fmnist-rgb --train-per-class 6000 --val-per-class 1000
    python benchmarks/chain_classil.py /tmp/fmnist-rgb --work /tmp/chain --seeds 0 1 2 --protocols I FS20 FS100
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TASK_A = ["tshirt", "trouser", "pullover", "dress", "coat"]
NEW = ["sandal", "shirt", "sneaker", "bag", "boot"]
SHOTS = {"FS20": 20, "FS100": 100, "I": None}


def run(cmd: list[str], *, device: bool = False) -> tuple[dict | list, float]:
    """One command (``edgeslice`` or ``edgeslice-device``) with ``--json``; its JSON and wall seconds."""
    t = time.perf_counter()
    mod = "edgeslice_device" if device else "edgeslice"
    out = subprocess.run([sys.executable, "-m", mod, *cmd, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else str(out.returncode)
        sys.exit(f"{mod} {cmd[0]} failed: {tail}")
    return json.loads(out.stdout), time.perf_counter() - t


def view(src: Path, dst: Path, classes: list[str], split_files: dict[str, list[Path]] | None = None) -> Path:
    """``dst/{train,val}/<class>``: symlinks to ``src``'s class folders, or (``split_files``) to chosen files."""
    for split in ("train", "val"):
        for c in classes:
            link = dst / split / c
            if link.exists():
                continue
            if split_files is not None and split == "train":
                link.mkdir(parents=True)
                for f in split_files[c]:
                    (link / f.name).symlink_to(f.resolve())
            else:
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((src / split / c).resolve(), target_is_directory=True)
    return dst


def shots(src: Path, n: int | None, seed: int) -> dict[str, list[Path]]:
    """``n`` seeded training images of each new class (all with ``n`` None)."""
    out = {}
    for j, c in enumerate(NEW):
        files = sorted((src / "train" / c).iterdir())
        if n is not None:
            files = sorted(random.Random(seed * 100 + j).sample(files, n))
        out[c] = files
    return out


def score(folder: Path, data: Path) -> dict:
    """Per-class and mean accuracy (percent) of ``folder/model.onnx`` on ``data``'s validation images."""
    import onnxruntime as ort

    from edgeslice.models import read_meta
    from edgeslice.pipeline import load_checkpoint_data, make_prepare
    from edgeslice.train import iterate_batches

    meta = read_meta(folder / "model.json")
    classes = list(meta.classes)
    bundle = load_checkpoint_data(meta, str(data), seed=0, workers=0)
    prepare = make_prepare(meta)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    hits: dict[str, list[int]] = {c: [0, 0] for c in bundle.classes}
    for x, y in iterate_batches(bundle.test, 256):
        pred = np.argmax(sess.run(None, {name: prepare(x).numpy()})[0], 1)
        for p, t in zip(pred.tolist(), y.tolist(), strict=True):
            true = bundle.classes[t]
            hits[true][0] += int(p < len(classes) and classes[p] == true)
            hits[true][1] += 1
    acc = {c: 100.0 * k / n for c, (k, n) in hits.items()}
    return {
        "per_class": acc,
        "mean": float(np.mean(list(acc.values()))),
        "old": float(np.mean([acc[c] for c in TASK_A])),
        "new": float(np.mean([acc[c] for c in NEW if c in acc])) if any(c in acc for c in NEW) else None,
    }


def grow_device(bundle: Path, out: Path, files: dict[str, list[Path]], work: Path) -> dict:
    shutil.copytree(bundle, out)
    seconds = []
    for c in NEW:
        flat = work / f"flat-{c}"
        flat.mkdir(parents=True, exist_ok=True)
        for f in files[c]:
            if not (flat / f.name).exists():
                (flat / f.name).symlink_to(f.resolve())
        _, s = run(["add-class", str(out), str(flat), "--name", c], device=True)
        seconds.append(round(s, 2))
    return {"step_seconds": seconds}


def grow_host(src: Path, out: Path, files: dict[str, list[Path]], data: Path, protocol: str, work: Path,
              extra: list[str], common: list[str], index: Path | None = None) -> dict:  # fmt: skip
    """Increments from ``src`` (a bundle, or with ``index`` a checkpoint folder): one of all new classes for
    ``I``, else one per class; the last output is copied to ``out``."""
    steps = [NEW] if protocol == "I" else [[c] for c in NEW]
    seconds, heads = [], []
    for k, group in enumerate(steps):
        new = view(data, work / f"new{k}", group, files if protocol != "I" else None)
        dst = work / f"step{k}"
        target = ["--checkpoint", str(src / "model.safetensors"), "--index", str(index)] if index else [str(src)]
        doc, s = run(["increment", *target, "--new-data", str(new), "--out", str(dst), *extra, *common])
        seconds.append(round(s, 1))
        heads.append(doc.get("head"))
        src, index = dst, (dst / "critical_index" if index else None)
    shutil.copytree(src, out)
    return {"step_seconds": seconds, "heads": heads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="ImageFolder with train/ and val/ of the ten Fashion-MNIST classes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/chain-classil"))
    ap.add_argument("--model", default="mobilenetv3_small_100")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--a-epochs", type=float, default=3.0)
    ap.add_argument("--a-lr", type=float, default=0.01)
    ap.add_argument("--theta", type=float, default=0.95, help="compress θ")
    ap.add_argument("--grow-theta", type=float, nargs="+", default=[0.95])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--protocols", nargs="+", default=["I", "FS20", "FS100"], choices=list(SHOTS))
    ap.add_argument("--paths", nargs="+", default=["device", "host", "dense", "replay"],
                    choices=["device", "host", "dense", "replay"])  # fmt: skip
    ap.add_argument("--task-a-root", type=Path, default=None, help="reuse ROOT/s<seed>/task_a of an earlier --work")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/chain_classil.json"))
    args = ap.parse_args()
    missing = [c for c in TASK_A + NEW if not (args.folder / "train" / c).is_dir()]
    if missing:
        sys.exit(f"{args.folder} lacks train/{missing[0]} (write it with benchmarks/fmnist_folder.py)")
    if args.work.exists() and any(args.work.iterdir()):
        sys.exit(f"{args.work} is not empty: pick an empty --work")
    rows: list[dict] = []
    t_all = time.perf_counter()
    for seed in args.seeds:
        w = args.work / f"s{seed}"
        common = ["--device-type", "cpu", "--seed", str(seed), "--quiet"]
        data_a = view(args.folder, w / "data_a", TASK_A)
        if args.task_a_root is not None:  # an earlier run's task-A model of this seed
            shutil.copytree(args.task_a_root / f"s{seed}" / "task_a", w / "task_a")
            print(f"seed {seed}: task A from {args.task_a_root}", flush=True)
        else:
            _, s_train = run(["train", args.model, "--data", str(data_a), "--image-size", str(args.image_size),
                              "--epochs", str(args.a_epochs), "--lr", str(args.a_lr), "--batch-size", "64",
                              "--out", str(w / "task_a"), *common])  # fmt: skip
            print(f"seed {seed}: task A trained in {s_train:.0f} s", flush=True)
        dense_index = None
        if {"dense", "replay"} & set(args.paths):
            _, s = run(["slice", args.model, "--checkpoint", str(w / "task_a" / "model.safetensors"), "--data",
                        str(data_a), "--theta", "0.99", "--out", str(w / "dense_slice"), *common])  # fmt: skip
            dense_index = w / "dense_slice" / "critical_index"
            print(f"seed {seed}: dense slice {s:.0f} s", flush=True)
        bundles = {}
        if {"device", "host"} & set(args.paths):
            for g in args.grow_theta:
                doc, s = run(["compress", args.model, "--checkpoint", str(w / "task_a" / "model.safetensors"),
                              "--data", str(data_a), "--theta", str(args.theta), "--grow-theta", str(g),
                              "--out", str(w / f"bundle-g{g}"), *common])  # fmt: skip
                bundles[g] = (w / f"bundle-g{g}", doc)
                shipped = score(w / f"bundle-g{g}", data_a)["mean"]
                print(f"seed {seed}: compress (grow θ {g}) {s:.0f} s, task A {shipped:.2f}%, "
                      f"{doc.get('bundle', {}).get('trainable_channels')} trainable channels", flush=True)  # fmt: skip
                rows.append({"seed": seed, "path": "shipped", "grow_theta": g, "protocol": "A", "seconds": round(s),
                             "accuracy": {"mean": shipped}, "bundle": doc.get("bundle"),
                             "params_after": doc.get("params_after")})  # fmt: skip
        for protocol in args.protocols:
            files = shots(args.folder, SHOTS[protocol], seed)
            jobs = []
            for g in bundles:
                if "device" in args.paths and g == args.grow_theta[0]:
                    jobs.append(("device", g))
                if "host" in args.paths:
                    jobs.append(("host", g))
            jobs += [(p, None) for p in ("dense", "replay") if p in args.paths]
            for path, g in jobs:
                tag = f"{protocol}-{path}" + (f"-g{g}" if g is not None else "")
                scratch, out = w / "scratch" / tag, w / "grown" / tag
                t = time.perf_counter()
                if path == "device":
                    info = grow_device(bundles[g][0], out, files, scratch)
                elif path == "host":
                    info = grow_host(bundles[g][0], out, files, args.folder, protocol, scratch, [], common)
                elif path == "dense":
                    info = grow_host(w / "task_a", out, files, args.folder, protocol, scratch, [], common,
                                     index=dense_index)  # fmt: skip
                else:
                    extra = ["--head", "trained", "--replay", str(data_a), "--replay-fraction", "0.1"]
                    info = grow_host(w / "task_a", out, files, args.folder, protocol, scratch, extra, common,
                                     index=w / "dense_slice" / "critical_index")  # fmt: skip
                acc = score(out, args.folder)
                rows.append({"seed": seed, "path": path, "grow_theta": g, "protocol": protocol,
                             "seconds": round(time.perf_counter() - t, 1), "accuracy": acc, **info})  # fmt: skip
                print(f"seed {seed} {tag}: {acc['mean']:.2f}% (old {acc['old']:.2f}, new {acc['new']:.2f}) "
                      f"in {time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": round(time.perf_counter() - t_all),
              "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print_table(rows)
    print(f"→ {args.out}")


def print_table(rows: list[dict]) -> None:
    """Mean over seeds (and per seed) of the one-argmax accuracy, one row per path, one column per protocol."""
    keys = sorted({(r["path"], r["grow_theta"]) for r in rows if r["path"] != "shipped"}, key=str)
    protocols = [p for p in SHOTS if any(r["protocol"] == p for r in rows)]
    print("| path | grow θ | " + " | ".join(protocols) + " |")
    print("|---|---|" + "---|" * len(protocols))
    for path, g in keys:
        cells = []
        for p in protocols:
            vals = [r["accuracy"]["mean"] for r in rows if (r["path"], r["grow_theta"], r["protocol"]) == (path, g, p)]
            cells.append(f"{np.mean(vals):.2f} ({' / '.join(f'{v:.2f}' for v in vals)})" if vals else "–")
        print(f"| {path} | {g if g is not None else '–'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
