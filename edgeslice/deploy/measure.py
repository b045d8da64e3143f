"""What an ONNX artifact costs: file size (raw and gzip), onnxruntime latency and peak activation memory — the one
implementation.

``compress`` (before/after and int8), ``prune`` and the device budget search all measure through here, so their
numbers are comparable. Every latency record says how it was taken (``threads``, ``batch``, ``input_shape``):

- ``latency_device``: batch 1 at the model's input size on ``threads`` intra-op threads (1 unless a device profile
  says otherwise) — what a device running one request at a time sees;
- ``latency`` and ``latency_batch32``: batch 1 and 32 on every core this process may use;
- ``latency_reference_224`` (:func:`reference_latency`): the same weights exported at 224 px, for models whose input is
  below :data:`REFERENCE_BELOW` px, where per-operator overhead dominates and hides what removing channels saves.

Example:
    >>> from edgeslice.deploy.measure import onnx_latency
    >>> onnx_latency("out/model.onnx", (1, 1, 28, 28), threads=1)["median_ms"]  # doctest: +SKIP
    0.102
"""

from __future__ import annotations

import gzip
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..torchutil import eval_mode
from .export import DEFAULT_OPSET, export_onnx, ort_session
from .memory import onnx_peak_activation

#: Inputs smaller than this (px) are also measured at :data:`REFERENCE_SIZE` px (:func:`reference_latency`).
REFERENCE_BELOW = 96
#: The deployment resolution of the ImageNet-style architectures edgeslice compresses.
REFERENCE_SIZE = 224


def available_threads() -> int:
    """Cores this process may run on (its CPU affinity), the thread count of the multi-thread figures."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def file_sizes(path: str | Path) -> dict[str, int]:
    """Raw and gzip-compressed size in bytes (firmware images are usually compressed)."""
    raw = Path(path).read_bytes()
    return {"raw_bytes": len(raw), "gzip_bytes": gzip_size(raw)}


def gzip_size(raw: bytes) -> int:
    """Size of ``raw`` gzip-compressed at level 9 without a timestamp (same bytes, same size)."""
    return len(gzip.compress(raw, compresslevel=9, mtime=0))


#: Runtimes :func:`onnx_latency` times (OpenVINO needs the ``openvino`` extra).
RUNTIMES = ("onnxruntime", "openvino")


def onnx_latency(
    path: str | Path,
    input_shape: tuple[int, ...],
    *,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    runtime: str = "onnxruntime",
) -> dict[str, Any]:
    """CPU latency of one batch of ``input_shape`` (median and p90 over ``runs``, in ms).

    Args:
        path: the ONNX file.
        input_shape: ``(batch, C, H, W)``.
        runs: timed runs after ``warmup`` untimed ones.
        threads: intra-op threads; None: every available core. More than the available cores are not used (the
            record then also has ``threads_requested``).
        runtime: ``onnxruntime``, or ``openvino`` (compiled for this static shape in f32, one stream, see
            :func:`.openvino_runtime.compile_openvino`).

    Returns:
        ``runtime``, ``threads``, ``batch``, ``input_shape`` (one sample's), ``median_ms``, ``p90_ms``, ``runs``.

    Raises:
        ValueError: an unknown runtime; MissingExtraError: ``openvino`` without the extra.
    """
    import numpy as np

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    cores = available_threads()
    used = cores if threads is None else min(int(threads), cores)
    x = np.random.default_rng(0).random(input_shape, dtype=np.float32)
    if runtime == "openvino":
        from .openvino_runtime import compile_openvino

        compiled, _ = compile_openvino(path, shape=input_shape, threads=used)
        request = compiled.create_infer_request()

        def run() -> None:
            request.infer({0: x})
    else:
        sess = ort_session(path, used)
        feed = {sess.get_inputs()[0].name: x}

        def run() -> None:
            sess.run(None, feed)

    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    record: dict[str, Any] = {"runtime": runtime, "threads": used}
    if threads is not None and used != threads:
        record["threads_requested"] = int(threads)
    return {
        **record,
        "batch": int(input_shape[0]),
        "input_shape": [int(s) for s in input_shape[1:]],
        "median_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "runs": runs,
    }


def onnx_cost(path: str | Path, sample_shape: Sequence[int], *, threads: int = 1) -> dict[str, Any]:
    """Sizes of ``path``, its latency and its peak activation memory (see the module docstring for the records).

    Args:
        path: the ONNX file.
        sample_shape: ``(C, H, W)`` of one sample.
        threads: intra-op threads of ``latency_device`` (a device profile's ``threads``).

    Returns:
        ``raw_bytes``, ``gzip_bytes``, ``latency_device`` (batch 1, ``threads``), ``latency`` (batch 1, 50 runs) and
        ``latency_batch32`` (20 runs) on every core, ``peak_activation`` (:func:`.memory.onnx_peak_activation`).
    """
    shape = tuple(int(s) for s in sample_shape)
    return {
        **file_sizes(path),
        "latency_device": onnx_latency(path, (1, *shape), threads=threads),
        "latency": onnx_latency(path, (1, *shape)),
        "latency_batch32": onnx_latency(path, (32, *shape), runs=20),
        "peak_activation": onnx_peak_activation(path),
    }


def reference_latency(
    model: nn.Module, example: torch.Tensor, *, threads: int = 1, opset: int = DEFAULT_OPSET
) -> dict[str, Any] | None:
    """Batch-1 latency of ``model`` exported at :data:`REFERENCE_SIZE` px when its input is below
    :data:`REFERENCE_BELOW` px; None for larger inputs.

    The same architecture and weights at the resolution such models are deployed at: at 28 px per-operator overhead
    dominates onnxruntime's time and hides most of what removing channels saves. A model that cannot run at that size
    (an MLP's first layer is sized for its input) gets ``{"skipped": reason}``.

    Args:
        model: the model (CPU; left unchanged).
        example: an input batch at the model's own size, ``(N, C, H, W)``.
        threads: intra-op threads.
        opset: ONNX opset of the export.
    """
    if min(example.shape[-2:]) >= REFERENCE_BELOW:
        return None
    x = torch.zeros(1, example.shape[1], REFERENCE_SIZE, REFERENCE_SIZE)
    try:
        with eval_mode(model), torch.no_grad():
            model.to("cpu")(x)
    except Exception as e:  # noqa: BLE001 - any model that refuses another input size
        reason = str(e).splitlines()[0] if str(e) else repr(e)
        return {"skipped": f"the model does not run at {REFERENCE_SIZE} px: {reason}"}
    with tempfile.TemporaryDirectory(prefix="edgeslice-reference-") as tmp:  # never beside the artifacts
        path = export_onnx(model, x, Path(tmp) / f"reference{REFERENCE_SIZE}.onnx", opset=opset)
        record = onnx_latency(path, tuple(x.shape), threads=threads)
    return {**record, "reference": f"the same weights exported at {REFERENCE_SIZE} px, not the shipped input size"}


def export_and_measure(
    model: nn.Module, example: torch.Tensor, path: str | Path, opset: int | None = None, *, threads: int = 1
) -> dict[str, Any]:
    """Export ``model`` to ``path`` (see :func:`.export.export_onnx`) and return :func:`onnx_cost` of the file, with
    ``latency_reference_224`` (:func:`reference_latency`) when the input is below :data:`REFERENCE_BELOW` px."""
    opset = opset or DEFAULT_OPSET
    export_onnx(model, example, path, opset=opset)
    cost = onnx_cost(path, example.shape[1:], threads=threads)
    reference = reference_latency(model, example, threads=threads, opset=opset)
    if reference is not None:
        cost[f"latency_reference_{REFERENCE_SIZE}"] = reference
    return cost
