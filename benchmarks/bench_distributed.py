"""Slicing time with 1 process vs ``torchrun --nproc-per-node N`` (gloo, CPU) on the same data and checkpoint.

Each configuration runs ``--repeat`` times; every run is a fresh set of processes that load the checkpoint and data,
join the process group, and then time :func:`edgeslice.pipeline.slice_model` between two barriers (the calibration
pass sharded by samples, the row exchange, the solve sharded by classes and the all-reduces of the per-class
vectors and curves; the time in those and the bytes rank 0 sends are recorded) — process start-up is reported
apart (``command_s``, whole-command wall time).
The single process uses the same per-process thread count as each rank (``--threads``, 1 by default) so the indexes
must be byte-identical; the benchmark checks it. The load average is recorded: on a shared machine the figures say
as much about the neighbours as about the code.

    nice -n 10 python benchmarks/bench_distributed.py --out benchmarks/results/bench_distributed.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def worker(args: argparse.Namespace) -> None:
    """One rank: load, barrier, time slice_model, barrier; rank 0 writes the timing and the index digest."""
    import torch
    import torch.distributed as dist

    from edgeslice import distributed
    from edgeslice.data import load_data
    from edgeslice.models import load_checkpoint
    from edgeslice.pipeline import SliceConfig, slice_model
    from edgeslice.slicing import reduction as stats  # the row exchange of calibration lives there

    comm = {"s": 0.0, "bytes": 0}  # time in the exchange + all-reduces, and the bytes this rank sends

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            comm["s"] += time.perf_counter() - t
            return out

        return wrapper

    original_batch = dist.batch_isend_irecv

    def counted_batch(ops):
        comm["bytes"] += sum(op.tensor.numel() * op.tensor.element_size() for op in ops if op.op is dist.isend)
        return original_batch(ops)

    original_reduce = distributed.all_reduce_sum_

    def counted_reduce(t):
        if distributed.world_size() > 1:
            comm["bytes"] += t.numel() * t.element_size()
        return original_reduce(t)

    dist.batch_isend_irecv = counted_batch
    distributed.all_reduce_sum_ = timed(counted_reduce)
    stats._exchange = timed(stats._exchange)
    torch.set_num_threads(args.threads)
    distributed.init_from_env(torch.device("cpu"))
    model, meta = load_checkpoint(args.checkpoint)
    bundle = load_data(args.data, image_size=meta.input_size, seed=0)
    cfg = SliceConfig(metric=args.metric, calib_per_class=args.calib_per_class)
    distributed.barrier()
    t = time.perf_counter()
    _, result, index = slice_model(model, meta, bundle, cfg, seed=0, device=torch.device("cpu"))
    distributed.barrier()
    elapsed = time.perf_counter() - t
    if distributed.is_main():
        doc = {
            "slice_s": elapsed,
            "communication_s": comm["s"],
            "rank0_sent_bytes": comm["bytes"],
            "index_sha256": hashlib.sha256(index.to_bytes()).hexdigest(),
            "critical": result.kept_channels,
            "samples": index.calibration["samples"],
            "world_size": distributed.world_size(),
        }
        Path(args.result).write_text(json.dumps(doc))
    distributed.cleanup()


def _run(nproc: int, args: argparse.Namespace, folder: Path) -> dict:
    result = folder / f"result-{nproc}-{time.monotonic_ns()}.json"
    cmd = [__file__, "--worker", "--checkpoint", str(args.checkpoint), "--data", args.data, "--metric", args.metric,
           "--calib-per-class", str(args.calib_per_class), "--threads", str(args.threads),
           "--result", str(result)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if nproc == 1:
        full = [sys.executable, *cmd]
    else:
        full = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *cmd]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(full, env=env, check=True, timeout=1800, stdout=subprocess.DEVNULL)
    doc = json.loads(result.read_text())
    doc["command_s"] = time.perf_counter() - t
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mobilenetv3")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--metric", default="taylor")
    ap.add_argument("--calib-per-class", type=int, default=100)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per process (and for the single one)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_distributed.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    from edgeslice.artifacts.files import atomic_write_json
    from edgeslice.data import load_data
    from edgeslice.models import create_model, resolve_model_name, save_checkpoint
    from edgeslice.pipeline import meta_for

    # Slicing time does not depend on the weights' quality: an untrained, seeded model keeps the run short.
    bundle = load_data(args.data, seed=0)
    name = resolve_model_name(args.model)
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(bundle.classes), in_chans=bundle.in_chans, input_size=bundle.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        args.checkpoint = folder / "model.safetensors"
        save_checkpoint(model.eval(), meta_for(name, bundle), args.checkpoint)
        load_before = _load()
        runs: dict[int, list[dict]] = {1: [], args.nproc: []}
        for _ in range(args.repeat):  # interleaved, so a change in the machine's load hits both alike
            for nproc in runs:
                runs[nproc].append(_run(nproc, args, folder))
                print(f"{nproc} process(es): slice {runs[nproc][-1]['slice_s']:.2f} s "
                      f"(communication {runs[nproc][-1]['communication_s']:.2f} s, "
                      f"rank 0 sent {runs[nproc][-1]['rank0_sent_bytes'] / 1e6:.2f} MB), "
                      f"command {runs[nproc][-1]['command_s']:.2f} s, load {_load()}", flush=True)  # fmt: skip
        load_after = _load()
    digests = {d["index_sha256"] for rs in runs.values() for d in rs}
    best = {n: min(d["slice_s"] for d in rs) for n, rs in runs.items()}
    best_cmd = {n: min(d["command_s"] for d in rs) for n, rs in runs.items()}
    report = {
        "model": name,
        "data": args.data,
        "metric": args.metric,
        "calibration_samples": runs[1][0]["samples"],
        "threads_per_process": args.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "backend": "gloo",
        "repeat": args.repeat,
        "slice_s": {str(n): [round(d["slice_s"], 3) for d in rs] for n, rs in runs.items()},
        "command_s": {str(n): [round(d["command_s"], 3) for d in rs] for n, rs in runs.items()},
        "best_slice_s": {str(n): round(v, 3) for n, v in best.items()},
        "communication_s": {str(n): [round(d["communication_s"], 3) for d in rs] for n, rs in runs.items()},
        "rank0_sent_bytes": runs[args.nproc][0]["rank0_sent_bytes"],
        "speedup_slice": round(best[1] / best[args.nproc], 3),
        "speedup_command": round(best_cmd[1] / best_cmd[args.nproc], 3),
        "index_identical": len(digests) == 1,
        "index_sha256": sorted(digests),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    print(json.dumps(report, indent=2))
    atomic_write_json(args.out, report)
    if len(digests) != 1:
        raise SystemExit("the sharded index differs from the single-process one")


if __name__ == "__main__":
    main()
