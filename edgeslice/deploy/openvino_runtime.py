"""OpenVINO as a second runtime for the ONNX artifacts (optional extra: ``pip install 'edgeslice[openvino]'``).

OpenVINO reads ``.onnx`` files directly. Its CPU plugin picks its own inference precision: on a CPU with bf16 units
(AVX512-BF16, AMX) it computes a float model in bf16 unless told otherwise — a different model from the fp32 one
edgeslice ships (reported for the headline MobileNetV3-small ``model.onnx`` on such a CPU: max |Δ| 0.64 and 99.8 %
top-1 agreement with onnxruntime in bf16, 3.4e-5 and 100 % in f32; this project's CPUs have no bf16 units, so it is
not re-measured here). So everything here compiles with
``INFERENCE_PRECISION_HINT=f32`` and records the precision the CPU would have used by default. For an int8 QDQ file
the quantized operators still run in int8; the hint sets the precision of the rest.

Example:
    >>> from edgeslice.deploy.openvino_runtime import run_openvino
    >>> logits, info = run_openvino("out/model.onnx", inputs)  # doctest: +SKIP
    >>> info["precision"], info["cpu_default_precision"]  # doctest: +SKIP
    ('f32', 'bf16')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingExtraError

#: How to get the runtime (named in the error when it is missing).
INSTALL = "pip install 'edgeslice[openvino]'"
#: The precision every compile asks for, and why.
PRECISION = "f32"
WHY_F32 = (
    "the shipped model is fp32; OpenVINO's CPU plugin computes in bf16 by default on CPUs with bf16 units, which is "
    "another model, so parity is checked with INFERENCE_PRECISION_HINT=f32"
)


def import_openvino():
    """The ``openvino`` module.

    Raises:
        MissingExtraError: it is not installed (the message names the extra to install).
    """
    try:
        import openvino
    except ImportError:
        raise MissingExtraError(f"--runtime openvino needs OpenVINO, which is not installed: {INSTALL}") from None
    return openvino


def compile_openvino(path: str | Path, *, shape: Sequence[int] | None = None, threads: int | None = None):
    """Compile ``path`` for OpenVINO's CPU plugin in f32.

    Args:
        path: an ONNX file.
        shape: a static input shape ``(N, C, H, W)`` to compile for (as a deployment would); None keeps the file's
            dynamic batch axis.
        threads: inference threads with one stream and the latency hint (for timing); None: OpenVINO's defaults.

    Returns:
        ``(compiled_model, info)``; ``info`` has ``runtime``, ``device``, ``precision`` (what the compiled model
        reports), ``cpu_default_precision``, ``forced`` and ``why``.
    """
    ov = import_openvino()
    core = ov.Core()
    default = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    model = core.read_model(str(path))
    if shape is not None:
        model.reshape({model.inputs[0]: ov.PartialShape([int(s) for s in shape])})
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION}
    if threads is not None:
        config.update({"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
    compiled = core.compile_model(model, "CPU", config)
    info = {
        "runtime": f"openvino {ov.__version__.split('-')[0]}",
        "device": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
        "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "cpu_default_precision": default,
        "forced": f"INFERENCE_PRECISION_HINT={PRECISION}",
        "why": WHY_F32,
    }
    return compiled, info


def run_openvino(path: str | Path, inputs) -> tuple[Any, dict[str, Any]]:
    """Outputs of ``path`` on ``inputs`` (a float32 numpy batch) with OpenVINO in f32, and :func:`compile_openvino`'s
    ``info``."""
    compiled, info = compile_openvino(path)
    out = compiled.create_infer_request().infer({0: inputs})[compiled.outputs[0]]
    return out, info


__all__ = ["INSTALL", "PRECISION", "WHY_F32", "compile_openvino", "import_openvino", "run_openvino"]
