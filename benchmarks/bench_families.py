"""Generality across timm CNN families: edgeslice compress vs Torch-Pruning's MetaPruner alone (issue 15's table).

Per model, as a new user would run it, in a fresh process (peak RSS and wall time from ``/usr/bin/time``):

    edgeslice compress NAME --theta 0.95 --data digits --train-epochs 1 --out DIR --json

and read its ``report.json``: parameters removed, the restructured-vs-masked equivalence (max |Δ| of the logits,
the pipeline's guard), the ONNX parity (max |Δ| between PyTorch and onnxruntime), and the stage times. A refused
model's one-line message is recorded instead. Beside it, Torch-Pruning alone on the same untrained timm model
(``MetaPruner``, L2 magnitude, ratio 0.5, ``round_to=8``, classifier ignored, 32 px): whether it prunes, the
parameters it removes and its time. The two are not the same compression (edgeslice's θ decides its own ratio);
the columns say whether each tool handles the family at all, and what edgeslice's guarantees measure.

    python benchmarks/bench_families.py --out benchmarks/results/bench_families.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = [  # (timm name, kind)
    ("mobilenetv3_small_100", "inverted residual + SE"),
    ("mobilenetv3_large_100", "inverted residual + SE"),
    ("mobilenetv2_100", "inverted residual"),
    ("mobilenetv4_conv_small", "inverted residual (UIB)"),
    ("efficientnet_b0", "inverted residual + SE"),
    ("mnasnet_small", "inverted residual"),
    ("tinynet_a", "inverted residual + SE"),
    ("fbnetc_100", "NAS inverted residual"),
    ("lcnet_100", "depthwise-separable"),
    ("repghostnet_100", "re-parameterisable ghost"),
    ("resnet18", "plain residual"),
    ("resnet10t", "residual, deep stem, avg-down shortcut"),
    ("resnext26ts", "grouped convolutions"),
    ("regnetx_002", "grouped convolutions"),
    ("ghostnet_050", "concatenation (primary + cheap)"),
    ("hgnetv2_b0", "concatenated aggregation"),
    ("densenet121", "dense concatenation"),
    ("convnext_atto", "LayerNorm, Linear MLP, layer scale"),
    ("repvgg_a0", "re-parameterisable branches"),
    ("rexnet_100", "deep, wide inverted residual"),
    ("efficientvit_b0", "attention"),
]


def _run_group(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout the whole group is killed (``/usr/bin/time``'s child too)."""
    import signal

    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _peak_rss_mb(stats: Path) -> int | None:
    """``/usr/bin/time -f %M``'s last line (kB) in MB, if the run got that far."""
    lines = stats.read_text().split() if stats.exists() else []
    return round(int(lines[-1]) / 1024) if lines and lines[-1].isdigit() else None


def run_edgeslice(name: str, out: Path, home: Path, train_epochs: float, threads: int, timeout: float) -> dict:
    """One ``edgeslice compress`` run in a fresh process; its report's figures, or its refusal."""
    cmd = [
        sys.executable, "-m", "edgeslice", "compress", name, "--theta", "0.95", "--data", "digits",
        "--train-epochs", f"{train_epochs:g}", "--out", str(out), "--json",
    ]  # fmt: skip
    env = {**os.environ, "EDGESLICE_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = out.parent / f"{name}.time"
    t = time.perf_counter()
    try:
        proc = _run_group(["/usr/bin/time", "-f", "%M", "-o", str(stats), *cmd], env, timeout)
    except subprocess.TimeoutExpired as e:
        where = [ln for ln in (e.stderr or "").splitlines() if ln.strip()][-1:]
        return {
            "command": " ".join(["edgeslice", *cmd[3:]]),
            "rc": None,
            "wall_s": round(time.perf_counter() - t, 1),
            "peak_rss_mb": None,
            "error": f"not finished within {timeout:g} s" + (f" (last output: {where[0][:120]})" if where else ""),
        }
    row: dict = {
        "command": " ".join(["edgeslice", *cmd[3:]]),
        "rc": proc.returncode,
        "wall_s": round(time.perf_counter() - t, 1),
        "peak_rss_mb": _peak_rss_mb(stats),
    }
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        row["error"] = lines[-1] if lines else f"exit {proc.returncode}"
        row["traceback"] = "Traceback" in proc.stderr
        return row
    rep = json.loads((out / "report.json").read_text())
    row.update(
        params_before=rep["params_before"],
        params_after=rep["params_after"],
        removed=1 - rep["params_after"] / rep["params_before"],
        equivalence_max_abs=rep["restructure_equivalence_max_abs"],
        onnx_parity_max_abs=rep["onnx_parity_max_abs"],
        accuracy_before=rep["accuracy_before"],
        accuracy_after=rep["accuracy_after"],
        timings_s=rep["timings_s"],
    )
    return row


def run_torch_pruning_child(name: str, timeout: float) -> dict:
    """:func:`run_torch_pruning` in a fresh process, stopped after ``timeout`` seconds."""
    t = time.perf_counter()
    try:
        proc = _run_group([sys.executable, __file__, "--tp-child", name], dict(os.environ), timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"not finished within {timeout:g} s", "time_s": round(time.perf_counter() - t, 1)}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]
        return {"ok": False, "error": tail[0] if tail else f"exit {proc.returncode}"}
    return json.loads(lines[-1])


def run_torch_pruning(name: str) -> dict:
    """Torch-Pruning alone: MetaPruner, L2, ratio 0.5, round_to=8, on the untrained model at 32 px."""
    import timm
    import torch
    import torch_pruning as tp
    from torch import nn

    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=10).eval()
    x = torch.randn(2, 1, 32, 32)
    before = sum(p.numel() for p in model.parameters())
    head = model.get_classifier()
    ignored = [m for m in ([head] if isinstance(head, nn.Module) else []) if isinstance(m, (nn.Linear, nn.Conv2d))]
    t = time.perf_counter()
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            round_to=8,
            ignored_layers=ignored,
        )
        pruner.step()
        with torch.no_grad():
            model(x)
    except Exception as e:  # the tool's own failure is what this column reports
        return {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}",
                "time_s": round(time.perf_counter() - t, 1)}  # fmt: skip
    after = sum(p.numel() for p in model.parameters())
    spent = round(time.perf_counter() - t, 1)
    return {"ok": True, "removed": 1 - after / before, "params_after": after, "time_s": spent}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | kind | edgeslice: params removed | equivalence max abs | ONNX parity max abs "
        "| accuracy % before → after "
        "| wall s | peak RSS MB | Torch-Pruning alone (L2, 0.5, round_to=8) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e, t = r["edgeslice"], r["torch_pruning"]
        if e["rc"] == 0:
            ours = (
                f"{e['removed']:.1%} ({e['params_before']:,} → {e['params_after']:,}) | {e['equivalence_max_abs']:.2g} "
                f"| {e['onnx_parity_max_abs']:.2g} | {e['accuracy_before']:.1f} → {e['accuracy_after']:.1f}"
            )
        else:
            what = "refused" if e["rc"] is not None else "stopped"
            ours = f"{what}: {e['error']}{' (traceback!)' if e.get('traceback') else ''} | – | – | –"
        if t["ok"]:
            theirs = f"prunes, {t['removed']:.1%} removed ({t['time_s']} s)"
        else:
            theirs = f"fails: {t['error']}"
        lines.append(f"| {r['model']} | {r['kind']} | {ours} | {e['wall_s']} | {e['peak_rss_mb']} | {theirs} |")
    return "\n".join(lines) + "\n"


def render(path: Path) -> None:
    """Rewrite the .md table of an earlier run's JSON (``--render``)."""
    path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())["rows"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[m for m, _ in MODELS])
    ap.add_argument("--train-epochs", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_families.json"))
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per model and tool")
    ap.add_argument("--append", action="store_true", help="add the rows to --out's JSON instead of starting anew")
    ap.add_argument("--render", action="store_true", help="only rewrite --out's .md table from its JSON")
    ap.add_argument("--tp-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tp_child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_torch_pruning(args.tp_child)))
        return
    if args.render:
        render(args.out)
        return
    kinds = dict(MODELS)
    rows: list[dict] = json.loads(args.out.read_text())["rows"] if args.append and args.out.exists() else []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.models:
            row = {"model": name, "kind": kinds.get(name, "")}
            row["edgeslice"] = run_edgeslice(
                name, tmp / "runs" / name, tmp / "home", args.train_epochs, args.threads, args.timeout
            )
            row["torch_pruning"] = run_torch_pruning_child(name, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
