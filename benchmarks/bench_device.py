"""Device budgets: what growing and running a shipped bundle costs on one core, torch-free and with torch.

Every figure is one command as a device runs it, start-up included, pinned to one core (``taskset -c 0``): wall
seconds and the peak resident memory of that process (``ru_maxrss`` through GNU time or a bare launcher), median
wall and largest RSS of ``--repeats`` runs, each ``add-class`` / ``increment`` on a fresh copy of the bundle (the
copy is not timed).

* ``edgeslice-device add-class`` (torch-free, from a venv holding only ``pip install ./device``) of one new class
  from 20 images; ``edgeslice-device predict`` of one image; the venv's size on disk.
* The torch path: ``edgeslice increment BUNDLE --new-data NEW`` (defaults) from the same 20 images, and
  ``edgeslice-device predict`` run by the host interpreter (the same runtime; there is no torch predict command).

Bundles: the headline run's (``edgeslice compress mobilenetv3 --theta 0.95``: Fashion-MNIST, 28 px) and a 224-px one
(``edgeslice compress mobilenetv3`` on a Fashion-MNIST RGB folder read at ``--image-size 224``; a short run: its
accuracy is not the point, its size and input are). The new class is scikit-learn's digit 7, as PNGs at the bundle's
input size. Budgets (issue 30): add-class ≤ 2 s and ≤ 120 MB, predict ≤ 0.5 s, venv ≤ 250 MB.

    python benchmarks/bench_device.py --work /tmp/bench-device            # builds what it lacks (≈ 10 min)
    python benchmarks/bench_device.py --work /tmp/bench-device --bundle28 edgeslice-out/mobilenetv3_small_100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGETS = {"add_class_s": 2.0, "add_class_mb": 120.0, "predict_s": 0.5, "venv_mb": 250.0}
N_IMAGES = 20


# A small launcher measures each command. Linux carries a parent's peak RSS into ``ru_maxrss`` of the child it forks
# (the high-water mark survives fork and exec), so ``wait4`` from this process, which holds Pillow and scikit-learn,
# would report its own ~120 MB for every command. GNU time (about 2 MB) or, without it, an isolated bare interpreter
# (about 9 MB) forks instead; ``floor_mb`` measures that floor with ``true`` and is printed beside the table.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:], stdout=open(sys.argv[1], 'wb'), stderr=subprocess.STDOUT)\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(usage.ru_maxrss, file=sys.stderr)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def measure_rss(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``cmd`` pinned to CPU 0 (``taskset`` execs it: same process); exits on
    failure."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    log, rss_file = tmp / f"bench-device-{os.getpid()}.log", tmp / f"bench-device-{os.getpid()}.rss"
    pinned = ["taskset", "-c", "0", *cmd]
    gnu_time = Path("/usr/bin/time").is_file()
    if gnu_time:  # the command's output to the log, its peak RSS (KB) to rss_file
        launcher = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *pinned]
    else:  # the launcher writes the command's output to the log and its peak RSS (KB) on its own stderr
        launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(log), *pinned]
    with open(log if gnu_time else rss_file, "wb") as out:
        t = time.perf_counter()
        if gnu_time:
            proc = subprocess.run(launcher, stdout=out, stderr=subprocess.STDOUT, env=env)
        else:
            proc = subprocess.run(launcher, stderr=out, env=env)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{log.read_text(errors='replace')[-2000:]}")
    return wall, int(rss_file.read_text().split()[-1]) / 1024.0


def floor_mb() -> float:
    """Peak RSS the launcher reports for ``true``: the most it can add to any figure."""
    return measure_rss(["true"])[1]


def repeated(make_cmd, repeats: int, env: dict | None = None, before=None) -> dict:
    walls, rss = [], []
    for i in range(repeats):
        if before is not None:
            before(i)
        w, r = measure_rss([str(c) for c in make_cmd(i)], env)
        walls.append(w)
        rss.append(r)
    return {"wall_s": statistics.median(walls), "peak_rss_mb": max(rss), "walls": walls, "rss": rss}


def sh(cmd: list, **kw) -> None:
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def device_venv(work: Path) -> Path:
    """A clean venv (no system site-packages) with only ``pip install ./device``; torch must not import there."""
    venv = work / "device-venv"
    if not (venv / "bin" / "edgeslice-device").exists():
        sh([sys.executable, "-m", "venv", venv])
        sh([venv / "bin" / "pip", "install", "-q", REPO / "device"])
    probe = subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        sys.exit(f"{venv} can import torch: not a device venv")
    return venv


def new_class_images(folder: Path, size: int, channels: int) -> Path:
    """``folder/digit7/*.png``: the first 20 of scikit-learn's digit 7, at ``size`` px, gray or RGB."""
    from PIL import Image
    from sklearn.datasets import load_digits

    target = folder / "digit7"
    if target.is_dir() and len(list(target.glob("*.png"))) == N_IMAGES:
        return target
    target.mkdir(parents=True, exist_ok=True)
    d = load_digits()
    sevens = d.images[d.target == 7][:N_IMAGES]
    for i, img in enumerate(sevens):
        im = Image.fromarray((img / 16.0 * 255).round().astype("uint8"), "L").resize((size, size), Image.BICUBIC)
        (im.convert("RGB") if channels == 3 else im).save(target / f"{i:03d}.png")
    return target


def build_bundle28(work: Path) -> Path:
    out = work / "headline"
    if not (out / "bundle.json").is_file():
        sh(["edgeslice", "compress", "mobilenetv3", "--theta", "0.95", "--out", out, "--quiet"])
    return out


def build_bundle224(work: Path) -> Path:
    out = work / "b224"
    if not (out / "bundle.json").is_file():
        data = work / "fmnist-rgb-small"
        if not (data / "train").is_dir():
            sh([sys.executable, REPO / "benchmarks" / "fmnist_folder.py", data, "--train-per-class", "100",
                "--val-per-class", "20"])  # fmt: skip
        sh(["edgeslice", "compress", "mobilenetv3", "--data", data, "--image-size", "224", "--theta", "0.95",
            "--train-epochs", "1", "--finetune-epochs", "0", "--calib-per-class", "20", "--no-dense-control",
            "--batch-size", "64", "--out", out, "--quiet"])  # fmt: skip
    return out


def bench_bundle(label: str, bundle: Path, work: Path, venv: Path, repeats: int) -> dict:
    pre = json.loads((bundle / "preprocess.json").read_text())
    size, channels = int(pre["input_size"][-1]), int(pre["channels"])
    images = new_class_images(work / f"new-{label}", size, channels)
    one = sorted(images.glob("*.png"))[0]
    dev = venv / "bin" / "edgeslice-device"
    host_device = [sys.executable, "-m", "edgeslice_device"]
    copy = work / f"copy-{label}"
    out = work / f"grown-{label}"

    def fresh(_i: int) -> None:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(bundle, copy)

    env1 = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = {
        "device add-class (20 images)": repeated(
            lambda i: [dev, "add-class", copy, images, "--name", "digit7"], repeats, before=fresh
        ),
        "device predict (1 image)": repeated(lambda i: [dev, "predict", bundle, one], repeats),
        "torch increment (20 images)": repeated(
            lambda i: [
                "edgeslice",
                "increment",
                copy,
                "--new-data",
                images.parent,
                "--out",
                out,
                "--device-type",
                "cpu",
                "--quiet",
            ],
            repeats,
            env=env1,
            before=fresh,
        ),  # fmt: skip
        "host-python predict (1 image)": repeated(lambda i: [*host_device, "predict", bundle, one], repeats, env=env1),
    }
    head = json.loads((out / "report.json").read_text()).get("head") if (out / "report.json").is_file() else None
    onnx_mb = (bundle / "model.onnx").stat().st_size / 1e6
    return {"bundle": str(bundle), "input": f"{channels}×{size}×{size}", "onnx_mb": onnx_mb, "torch_head": head,
            "rows": rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-device"))
    ap.add_argument("--bundle28", type=Path, help="the headline run's output folder (built when omitted)")
    ap.add_argument("--bundle224", type=Path, help="a 224-px bundle (built when omitted)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    venv = device_venv(args.work)
    venv_mb = dir_mb(venv)
    bundles = {
        "28 px": args.bundle28 or build_bundle28(args.work),
        "224 px": args.bundle224 or build_bundle224(args.work),
    }
    results = {k: bench_bundle(k.replace(" ", ""), b, args.work, venv, args.repeats) for k, b in bundles.items()}

    floor = floor_mb()
    lines = [
        f"device venv (`pip install ./device`, no torch): {venv_mb:.0f} MB on disk (budget {BUDGETS['venv_mb']:.0f})",
        f"launcher floor (peak RSS reported for `true`): {floor:.1f} MB",
        "",
        "| bundle | command | wall s (median) | peak RSS MB | budget |",
        "|---|---|---|---|---|",
    ]
    verdicts = {"venv_mb": venv_mb <= BUDGETS["venv_mb"]}
    for label, res in results.items():
        for name, row in res["rows"].items():
            budget = ""
            if name.startswith("device add-class"):
                budget = f"≤ {BUDGETS['add_class_s']} s, ≤ {BUDGETS['add_class_mb']:.0f} MB"
                ok = row["wall_s"] <= BUDGETS["add_class_s"] and row["peak_rss_mb"] <= BUDGETS["add_class_mb"]
                verdicts[f"{label} add-class"] = ok
                budget += " ✓" if ok else " ✗"
            elif name.startswith("device predict"):
                budget = f"≤ {BUDGETS['predict_s']} s"
                ok = row["wall_s"] <= BUDGETS["predict_s"]
                verdicts[f"{label} predict"] = ok
                budget += " ✓" if ok else " ✗"
            lines.append(f"| {label} ({res['input']}, ONNX {res['onnx_mb']:.2f} MB) | {name} | {row['wall_s']:.2f} | "
                         f"{row['peak_rss_mb']:.0f} | {budget} |")  # fmt: skip
    print("\n".join(lines))
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")  # fmt: skip
    doc = {"cpu": cpu, "pinned": "taskset -c 0", "venv_mb": venv_mb, "floor_mb": floor, "budgets": BUDGETS,
           "verdicts": verdicts, "bundles": results}  # fmt: skip
    path = args.json_out or args.work / "bench_device.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
