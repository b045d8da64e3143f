"""The int8 artifact of ``compress``: static QDQ quantization on the calibration set, checked against fp32."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ..train import iterate_batches
from .measure import onnx_cost
from .quantize import EVAL_SUBSET, MAX_CALIBRATION_SAMPLES, check_int8_parity, quantize_int8


def numpy_inputs(dataset: Any, prepare: Callable[[torch.Tensor], torch.Tensor], limit: int | None = None):
    """Normalised (inputs, labels) of the first ``limit`` samples, as float32 numpy arrays."""
    import numpy as np

    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    xs, ys = [], []
    for x, y in iterate_batches(dataset, 512):
        xs.append(prepare(x.float()).numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def int8_artifact(
    fp32_path: Path,
    int8_path: Path,
    calib: Subset,
    test: Any,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    *,
    threads: int = 1,
) -> dict[str, Any]:
    """Quantize ``fp32_path`` to ``int8_path`` on the calibration set, then measure it against fp32 on the test subset
    (latency: :func:`.measure.onnx_cost`, ``latency_device`` on ``threads`` threads).

    Raises:
        ExportError: quantization failed or the int8 model disagrees with fp32 beyond the stated tolerance.
    """
    # The calibration set is grouped by class: a seeded shuffle keeps every class in the capped sample.
    order = torch.randperm(len(calib), generator=torch.Generator().manual_seed(0))[:MAX_CALIBRATION_SAMPLES]
    calib_x, _ = numpy_inputs(Subset(calib, order.tolist()), prepare)
    quantize_int8(fp32_path, int8_path, [calib_x[i : i + 64] for i in range(0, len(calib_x), 64)])
    test_x, test_y = numpy_inputs(test, prepare, EVAL_SUBSET)
    parity = check_int8_parity(fp32_path, int8_path, test_x, labels=test_y)
    return {
        **onnx_cost(int8_path, test_x.shape[1:], threads=threads),
        "parity": parity,
        "calibration_samples": int(len(calib_x)),
        "eval_subset": f"first {parity['samples']} test samples",
    }
