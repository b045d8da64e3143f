"""The ONNX graph of a bundle: its classifier (the node producing the one output), features, and a new head.

The classifier is the last node of the graph: a ``Gemm`` (``B`` is the (C, d) weight when ``transB=1``, the (d, C)
one otherwise; ``C`` the bias), or a ``MatMul`` by a (d, C) initializer followed by an ``Add`` of the bias. Its
data input is the d-dim feature vector the class statistics are measured on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BundleError


@dataclass(frozen=True)
class Classifier:
    """Where the classifier sits in a graph.

    Attributes:
        features: name of the (batch, d) tensor the classifier reads.
        weight: (C, d) float64 weights.
        bias: (C,) float64 bias.
        weight_init: initializer holding the weights.
        bias_init: initializer holding the bias.
        transposed: whether the weight initializer is stored (d, C).
        inner: outputs of the classifier's nodes other than the graph output (a MatMul's, before its Add).
    """

    features: str
    weight: np.ndarray
    bias: np.ndarray
    weight_init: str
    bias_init: str
    transposed: bool
    inner: tuple[str, ...] = ()


def load_model(data: bytes) -> Any:
    """Parse ``model.onnx`` bytes into an ``onnx.ModelProto``.

    Raises:
        BundleError: the bytes are not an ONNX model with exactly one input and one output.
    """
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises its own DecodeError types
        raise BundleError(f"model.onnx is not a readable ONNX model: {e}") from e
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise BundleError(f"model.onnx must have one input and one output, not {len(inputs)} and {len(graph.output)}")
    return model


def find_classifier(model: Any) -> Classifier:
    """Locate the classifier producing the graph's output.

    Raises:
        BundleError: the output is not produced by a Gemm or a MatMul + Add over initializers.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    last = producer.get(graph.output[0].name)

    def init(name: str) -> np.ndarray:
        if name not in inits:
            raise BundleError(f"the classifier's parameter {name!r} is not a stored initializer")
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    if last is not None and last.op_type == "Gemm" and len(last.input) == 3:
        attrs = {a.name: a for a in last.attribute}
        if (
            attrs.get("transA")
            and attrs["transA"].i
            or any(n in attrs and attrs[n].f != 1.0 for n in ("alpha", "beta"))
        ):
            raise BundleError("the classifier Gemm uses transA, alpha or beta; only a plain linear layer is supported")
        transposed = not (attrs.get("transB") and attrs["transB"].i)
        w = init(last.input[1])
        w = w.T if transposed else w
        return Classifier(last.input[0], w, init(last.input[2]), last.input[1], last.input[2], transposed)
    if last is not None and last.op_type == "Add":
        for mm_out, bias_name in ((last.input[0], last.input[1]), (last.input[1], last.input[0])):
            mm = producer.get(mm_out)
            if mm is not None and mm.op_type == "MatMul" and mm.input[1] in inits and bias_name in inits:
                w = init(mm.input[1]).T
                return Classifier(mm.input[0], w, init(bias_name), mm.input[1], bias_name, True, (mm_out,))
    kind = last.op_type if last is not None else "no node"
    raise BundleError(f"model.onnx ends in {kind}, not a linear classifier (Gemm, or MatMul + Add)")


def with_head(model: Any, weight: np.ndarray, bias: np.ndarray) -> Any:
    """A copy of ``model`` whose classifier is ``weight`` (C, d) and ``bias`` (C,), output dim set to C.

    Raises:
        BundleError: the head does not fit the features, or the new graph fails ``onnx.checker``.
    """
    import onnx
    from onnx import numpy_helper

    new = onnx.ModelProto()
    new.CopyFrom(model)
    head = find_classifier(new)
    w = np.asarray(weight, dtype=np.float32)
    b = np.asarray(bias, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] != head.weight.shape[1] or b.shape != (w.shape[0],):
        raise BundleError(f"a head of shape {w.shape} + {b.shape} does not fit {head.weight.shape[1]} features")
    stored = {head.weight_init: w.T if head.transposed else w, head.bias_init: b}
    for i, tensor in enumerate(new.graph.initializer):
        if tensor.name in stored:
            new.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(np.ascontiguousarray(stored[tensor.name]), tensor.name)
            )
    for inp in new.graph.input:  # old exporters also list initializers as inputs, with their shapes
        if inp.name in stored:
            _set_shape(inp, stored[inp.name].shape)
    out = new.graph.output[0]
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 2:
        dims[1].Clear()
        dims[1].dim_value = int(w.shape[0])
    keep = [v for v in new.graph.value_info if v.name not in head.inner]
    del new.graph.value_info[:]
    new.graph.value_info.extend(keep)
    try:
        onnx.checker.check_model(new)
    except onnx.checker.ValidationError as e:
        raise BundleError(f"the rewritten model fails the ONNX checker: {' '.join(str(e).split())[:300]}") from e
    return new


def _set_shape(value_info: Any, shape: tuple[int, ...]) -> None:
    dims = value_info.type.tensor_type.shape.dim
    del dims[:]
    for s in shape:
        dims.add().dim_value = int(s)


def session(model_bytes: bytes, threads: int | None = None) -> Any:
    """A quiet onnxruntime CPU session with ``threads`` intra-op threads, else ``EDGESLICE_DEVICE_THREADS``, else
    the CPUs this process may run on (``taskset``, cgroups' cpusets: onnxruntime's own default counts the machine's
    cores and would oversubscribe a pinned process).

    Raises:
        BundleError: onnxruntime cannot load the model.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    threads = threads or int(os.environ.get("EDGESLICE_DEVICE_THREADS", "0") or 0)
    if not threads and hasattr(os, "sched_getaffinity"):
        threads = len(os.sched_getaffinity(0))
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise BundleError(f"onnxruntime cannot load the model: {' '.join(str(e).split())[:300]}") from e


def feature_session(model_bytes: bytes, threads: int | None = None) -> Any:
    """A session whose outputs are ``[logits, features]``: the classifier's input added as an output, in memory.

    Example:
        >>> logits, feats = feature_session(data).run(None, {name: x})  # doctest: +SKIP
    """
    import onnx

    model = load_model(model_bytes)
    head = find_classifier(model)
    extra = onnx.helper.make_tensor_value_info(head.features, onnx.TensorProto.FLOAT, None)
    model.graph.output.append(extra)
    return session(model.SerializeToString(), threads)


def input_name(sess: Any) -> str:
    """The name of a session's one input."""
    return sess.get_inputs()[0].name


def run_features(
    sess: Any, x: np.ndarray, batch: int = 16, prepare: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run a :func:`feature_session` over ``x`` (n, C, H, W) in batches: (logits (n, C), features (n, d));
    ``prepare`` turns each batch into the model's float32 input (e.g. :meth:`Preprocess.normalize` of uint8 pixels).
    """
    name, logits, feats = input_name(sess), [], []
    for start in range(0, len(x), max(int(batch), 1)):
        part = x[start : start + batch]
        out = sess.run(None, {name: np.ascontiguousarray(prepare(part) if prepare else part, dtype=np.float32)})
        logits.append(out[0])
        feats.append(out[1].reshape(len(out[1]), -1))
    return np.concatenate(logits), np.concatenate(feats)
