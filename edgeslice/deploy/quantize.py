"""int8 post-training static quantization of an exported ONNX model with onnxruntime, and its parity check.

``quantize_int8`` runs ``quantize_static`` (optionally after ``quant_pre_process``) in QDQ format with
per-channel symmetric int8 weights and asymmetric int8 activations, calibrated with min/max ranges over (at most
:data:`MAX_CALIBRATION_SAMPLES` of) the calibration set. The classifier head after the last global pooling stays
fp32 (see :func:`quantize_int8`'s ``head_fp32``).

Parity (:func:`int8_parity`): on a test subset, the int8 model's top-1 must agree with the fp32 ONNX model's on at
least :data:`MIN_TOP1_AGREEMENT` of the samples; the largest |Δlogit| is reported (it scales with the logits, so it
is not a pass/fail criterion).

Example:
    >>> from edgeslice.deploy.quantize import quantize_int8, int8_parity
    >>> quantize_int8("out/model.onnx", "out/model.int8.onnx", calib_batches)
    >>> int8_parity("out/model.onnx", "out/model.int8.onnx", test_inputs)["top1_agreement"]
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from .export import ort_session

#: The int8 model's top-1 must agree with the fp32 ONNX model's on at least this share of the test subset.
MIN_TOP1_AGREEMENT = 0.97
#: Test samples used for the int8-vs-fp32 accuracy and parity figures (the first ones of the test split).
EVAL_SUBSET = 2000
#: Calibration samples fed to onnxruntime's min/max calibrator at most (it holds every intermediate output of all of
#: them in memory: about 100 MB for MobileNetV3-small at 28 px).
MAX_CALIBRATION_SAMPLES = 512


#: Precisions for the classifier head after the global pooling (see :func:`quantize_int8`).
HEAD_PRECISIONS = ("int16", "fp32", "int8")


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Iterable[np.ndarray],
    *,
    per_channel: bool = True,
    max_samples: int = MAX_CALIBRATION_SAMPLES,
    preprocess: bool = False,
    head: str = "fp32",
) -> Path:
    """Write a QDQ int8 copy of ``fp32_path`` to ``out_path`` (atomically).

    Args:
        fp32_path: the float ONNX model (input named as exported by :func:`edgeslice.deploy.export.export_onnx`).
        out_path: where the int8 model goes (e.g. ``model.int8.onnx``).
        calibration: float32 input batches, already normalised the way the model expects, ``(N, C, H, W)``.
        per_channel: per-output-channel weight scales (much better on depthwise convolutions).
        max_samples: stop feeding calibration batches after this many samples.
        head: precision of the nodes from the last global pooling on (the classifier head). The pooled features
            of MobileNetV3 have channel ranges far apart that one per-tensor int8 activation scale crushes, so
            ``fp32`` (default) leaves the head unquantized; ``int16`` keeps int8 weights but gives the head's
            activations int16 (onnxruntime's com.microsoft Q/DQ; the file then needs opset 21, above every device
            profile's opset, so the default stays fp32); ``int8`` quantizes it like the rest. Measured on the dense
            MobileNetV3-small / Fashion-MNIST baseline, 2,000 test images: top-1 agreement with fp32 87.7% (int8),
            98.2% (int16), 98.2% (fp32); file 1.85 MB (int16) vs 3.63 MB (fp32).
        preprocess: run onnxruntime's ``quant_pre_process`` first. Off by default: our exports already have
            BatchNorm folded, and on MobileNetV3-small-050 / digits it lowered top-1 agreement (95.0% vs 96.4%).

    Raises:
        ExportError: no calibration data, or onnxruntime failed.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    input_name = ort_session(fp32_path).get_inputs()[0].name
    batches = _calibration_batches(calibration, max_samples)
    reader = _calibration_reader(batches, input_name)
    exclude, extra = _head_options(fp32_path, head)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=out_path.parent) as tmp:
        pre = _preprocessed(fp32_path, Path(tmp) / "pre.onnx") if preprocess else fp32_path
        staged = Path(tmp) / "int8.onnx"
        _quantize_static_quietly(pre, staged, reader, per_channel=per_channel, exclude=exclude, extra=extra)
        os.chmod(staged, 0o644)
        os.replace(staged, out_path)
    return out_path


def _calibration_batches(calibration: Iterable[np.ndarray], max_samples: int) -> list[np.ndarray]:
    """The first ``max_samples`` calibration samples as contiguous float32 batches.

    Raises:
        ExportError: the calibration set is empty.
    """
    batches: list[np.ndarray] = []
    n = 0
    for b in calibration:
        if n >= max_samples:
            break
        b = np.ascontiguousarray(b[: max_samples - n], dtype=np.float32)
        batches.append(b)
        n += len(b)
    if n == 0:
        raise ExportError("int8 quantization needs calibration data, got none")
    return batches


def _calibration_reader(batches: list[np.ndarray], input_name: str) -> Any:
    """An onnxruntime ``CalibrationDataReader`` that feeds ``batches`` to the input ``input_name``."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._it = iter(batches)

    return _Reader()


def _head_options(fp32_path: Path, head: str) -> tuple[list[str], dict[str, Any]]:
    """The nodes to leave fp32 and the ``extra_options`` of ``quantize_static`` for the head precision ``head``.

    Raises:
        ValueError: ``head`` is not one of :data:`HEAD_PRECISIONS`.
    """
    from onnxruntime.quantization import QuantType

    if head not in HEAD_PRECISIONS:
        raise ValueError(f"unknown head precision {head!r}; valid: {', '.join(HEAD_PRECISIONS)}")
    head_names = head_nodes(fp32_path) if head != "int8" else []
    exclude = head_names if head == "fp32" else []
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if head == "int16" and head_names:
        extra["TensorQuantOverrides"] = {
            t: [{"quant_type": QuantType.QInt16}] for t in _activations_of(fp32_path, head_names)
        }
        extra["UseQDQContribOps"] = True  # int16 Q/DQ live in the com.microsoft domain
    return exclude, extra


def _preprocessed(fp32_path: Path, pre: Path) -> Path:
    """``fp32_path`` after onnxruntime's ``quant_pre_process``, written to ``pre``; ``fp32_path`` if that fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the plain model instead
        return fp32_path
    return pre


def _quantize_static_quietly(
    pre: Path, staged: Path, reader: Any, *, per_channel: bool, exclude: list[str], extra: dict[str, Any]
) -> None:
    """Run onnxruntime's ``quantize_static`` (QDQ, int8, min/max) from ``pre`` to ``staged``, its warnings muted.

    Raises:
        ExportError: onnxruntime failed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # onnxruntime logs "please consider pre-processing" on the root logger
    try:
        quantize_static(
            str(pre),
            str(staged),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=exclude,
            # No "CalibMaxIntermediateOutputs": onnxruntime 1.32's min/max calibrator drops the batches it
            # flushes instead of merging their ranges (and fails when the count divides evenly). Memory is
            # bounded by max_samples instead: all intermediate outputs of that many samples are held at once.
            extra_options=extra,
        )
    except Exception as e:  # noqa: BLE001 - onnxruntime raises many types; the CLI needs one
        raise ExportError(f"int8 quantization failed: {e}") from e
    finally:
        logging.disable(previous)


def _activations_of(path: str | Path, names: list[str]) -> list[str]:
    """Activation tensors (not initializers) that the named nodes read or write, sorted."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    wanted, inits = set(names), {i.name for i in graph.initializer}
    tensors = {t for n in graph.node if n.name in wanted for t in (*n.input, *n.output) if t and t not in inits}
    return sorted(tensors)


def head_nodes(path: str | Path) -> list[str]:
    """Names of the nodes from the last global pooling to the output (empty when the graph has no pooling)."""
    import onnx

    nodes = list(onnx.load(str(path), load_external_data=False).graph.node)  # topologically sorted
    pools = [i for i, n in enumerate(nodes) if n.op_type in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean")]
    if not pools:
        return []
    return [n.name for n in nodes[pools[-1] :] if n.name]


def onnx_logits(path: str | Path, inputs: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits of an ONNX model on ``inputs`` ``(N, C, H, W)``, batch by batch (CPU)."""
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: np.ascontiguousarray(inputs[i : i + batch_size], dtype=np.float32)})[0]
           for i in range(0, len(inputs), batch_size)]  # fmt: skip
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def int8_parity(
    fp32_path: str | Path,
    int8_path: str | Path,
    inputs: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    min_agreement: float = MIN_TOP1_AGREEMENT,
) -> dict[str, Any]:
    """Compare the int8 model with the fp32 ONNX model on ``inputs``.

    Args:
        fp32_path: the float model.
        int8_path: its quantized copy.
        inputs: normalised inputs ``(N, C, H, W)``.
        labels: ``(N,)`` true classes; when given, both accuracies (percent) are reported.
        min_agreement: required share of samples whose top-1 class is the same in both models.

    Returns:
        ``samples``, ``top1_agreement``, ``max_abs_logit_diff``, ``min_top1_agreement``, ``ok`` (and
        ``accuracy_fp32`` / ``accuracy_int8``).
    """
    ref = onnx_logits(fp32_path, inputs)
    got = onnx_logits(int8_path, inputs)
    agree = float((ref.argmax(1) == got.argmax(1)).mean()) if len(ref) else 1.0
    result: dict[str, Any] = {
        "samples": int(len(inputs)),
        "top1_agreement": agree,
        "max_abs_logit_diff": float(np.abs(ref - got).max()) if len(ref) else 0.0,
        "max_abs_logit": float(np.abs(ref).max()) if len(ref) else 0.0,
        "min_top1_agreement": min_agreement,
        "ok": agree >= min_agreement,
    }
    if labels is not None and len(labels):
        result["accuracy_fp32"] = 100.0 * float((ref.argmax(1) == labels).mean())
        result["accuracy_int8"] = 100.0 * float((got.argmax(1) == labels).mean())
    return result


def check_int8_parity(fp32_path: str | Path, int8_path: str | Path, inputs: np.ndarray, **kwargs: Any) -> dict:
    """:func:`int8_parity`, raising ExportError when the top-1 agreement is below the tolerance."""
    result = int8_parity(fp32_path, int8_path, inputs, **kwargs)
    if not result["ok"]:
        raise ExportError(
            f"int8 parity failed: top-1 agrees with fp32 ONNX on {result['top1_agreement']:.1%} of "
            f"{result['samples']} test samples (< {result['min_top1_agreement']:.0%})"
        )
    return result


__all__ = [
    "EVAL_SUBSET",
    "MAX_CALIBRATION_SAMPLES",
    "MIN_TOP1_AGREEMENT",
    "check_int8_parity",
    "head_nodes",
    "int8_parity",
    "onnx_logits",
    "quantize_int8",
]
