"""What an ONNX artifact costs: file size (raw and gzip) and onnxruntime latency — the one implementation.

``compress`` (before/after and int8), ``prune`` and the device budget search all measure through here, so their
numbers are comparable.
"""

from __future__ import annotations

import gzip
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .export import DEFAULT_OPSET, export_onnx, ort_session


def file_sizes(path: str | Path) -> dict[str, int]:
    """Raw and gzip-compressed size in bytes (firmware images are usually compressed)."""
    raw = Path(path).read_bytes()
    return {"raw_bytes": len(raw), "gzip_bytes": gzip_size(raw)}


def gzip_size(raw: bytes) -> int:
    """Size of ``raw`` gzip-compressed at level 9 without a timestamp (same bytes, same size)."""
    return len(gzip.compress(raw, compresslevel=9, mtime=0))


def onnx_latency(
    path: str | Path, input_shape: tuple[int, ...], *, runs: int = 50, warmup: int = 5, threads: int | None = None
) -> dict[str, float]:
    """onnxruntime CPU latency of one batch of ``input_shape`` (median and p90 over ``runs``, in ms)."""
    import numpy as np

    sess = ort_session(path, threads)
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).random(input_shape, dtype=np.float32)}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))], "runs": runs}


def onnx_cost(path: str | Path, sample_shape: Sequence[int]) -> dict[str, Any]:
    """Sizes of ``path`` and its latency at batch 1 (50 runs) and batch 32 (20 runs); ``sample_shape`` = (C, H, W)."""
    shape = tuple(int(s) for s in sample_shape)
    return {
        **file_sizes(path),
        "latency": onnx_latency(path, (1, *shape)),
        "latency_batch32": onnx_latency(path, (32, *shape), runs=20),
    }


def export_and_measure(
    model: nn.Module, example: torch.Tensor, path: str | Path, opset: int | None = None
) -> dict[str, Any]:
    """Export ``model`` to ``path`` (see :func:`.export.export_onnx`) and return :func:`onnx_cost` of the file."""
    export_onnx(model, example, path, opset=opset or DEFAULT_OPSET)
    return onnx_cost(path, example.shape[1:])
