"""Peak activation memory of an ONNX model at batch 1, measured on its graph.

The graph's nodes are in topological order (ONNX requires it); a runtime that executes them in that order and frees
each intermediate tensor after its last consumer holds, while a node runs, the tensors still needed later plus the
node's outputs. The peak is the largest such sum, with every tensor's size from ONNX shape inference at batch 1:

- the graph input counts until its last consumer, the graph outputs until the end;
- weights (initializers, ``Constant`` nodes and whatever is computed from them alone, such as the
  ``DequantizeLinear`` of int8 weights) do not count: they are budgeted separately;
- view operators (``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Identity``) share their input's buffer;
- an elementwise operator (activations, ``Add``, ``Mul``, …) writes over an input of the same size that dies there,
  as onnxruntime's planner does for its in-place kernels and device runtimes do by fusing activations into the
  convolution before them; every other output is a buffer of its own.

No fragmentation is counted, so an arena allocator needs at least this much. The budget's estimate
(:func:`edgeslice.deploy.budget.count_macs`: the largest input + output of one PyTorch layer) can differ either way:
it counts both buffers of layers a runtime runs in place (activations, dropout), and ignores tensors kept alive
across layers (residual and squeeze-excite inputs, the previous layer's output while a depthwise convolution runs).

onnxruntime's PyPI builds do not expose their arena's peak (its memory profiler is a build-time option), so the
graph is what is measured.

For an int8 QDQ file the graph is measured as written: the float tensors between ``DequantizeLinear`` and
``QuantizeLinear`` count, so the figure is an upper bound for a runtime that fuses them into int8 kernels.

Example:
    >>> from edgeslice.deploy.memory import onnx_peak_activation
    >>> onnx_peak_activation("out/model.onnx")["peak_bytes"]  # doctest: +SKIP
    18720
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ExportError

#: How :func:`onnx_peak_activation` measures, in one line (recorded beside the figure).
METHOD = (
    "ONNX graph, shape inference at batch 1: live intermediate tensors along the graph's topological order, each freed "
    "after its last consumer (views share their input's buffer, elementwise ops write over an input that dies there; "
    "weights not counted)"
)

_VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
#: Elementwise operators that may write their output over an input that dies there (onnxruntime's planner does so
#: for its in-place kernels; device runtimes fuse activations into the producing convolution).
_IN_PLACE = frozenset(
    {"Relu", "LeakyRelu", "Elu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Add", "Sub", "Mul", "Div",
     "Neg", "Abs", "Exp", "Sqrt"}
)  # fmt: skip


def _nbytes(value_info: Any) -> int | None:
    """Bytes of one tensor from its inferred type, or None when a dimension or the element type is unknown."""
    from onnx import helper

    t = value_info.type.tensor_type
    if not t.elem_type or not t.HasField("shape"):
        return None
    n = 1
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            return None  # a data-dependent size
        n *= d.dim_value
    return n * helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize


def _run_sizes(proto: Any, names: list[str], batch: int, label: str) -> dict[str, int]:
    """Bytes of the tensors ``names`` from one onnxruntime run at ``batch`` on zeros: for sizes that shape inference
    cannot tell (a ``Pad`` whose pads are computed from ``Shape``, an attention reshape), the run reads them off."""
    import copy

    import numpy as np
    import onnx

    from .export import ort_session

    m = copy.deepcopy(proto)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    sess = ort_session(m.SerializeToString())
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(i.type, np.float32)
        feeds[i.name] = np.zeros(shape, dtype)
    try:
        outs = sess.run(names, feeds)
    except Exception as e:  # noqa: BLE001 - any runtime failure is a measurement that cannot be taken
        raise ExportError(f"{label}: shapes unknown to inference, and onnxruntime could not run it: {e}") from None
    return {n: int(np.asarray(a).nbytes) for n, a in zip(names, outs, strict=True)}


def onnx_peak_activation(path: str | Path, *, batch: int = 1) -> dict[str, Any]:
    """Peak bytes of live activations while ``path`` runs at ``batch`` (see the module docstring for the rules).

    Args:
        path: an ONNX file with one graph (no ``If``/``Loop`` subgraphs).
        batch: the size every symbolic axis of the graph's inputs takes (the batch axis).

    Returns:
        ``peak_bytes``, ``peak_node`` (the node running at the peak), ``input_bytes``, ``method`` and, when shape
        inference left sizes unknown, ``sizes_from_run`` (how many tensors one onnxruntime run at ``batch`` sized).

    Raises:
        ExportError: the graph has subgraphs, or a tensor's size is unknown to shape inference and onnxruntime
            cannot run the graph to read it.
    """
    import onnx

    label = Path(path).name
    proto = onnx.load(str(path))
    graph = proto.graph
    infos = _inferred_infos_(proto, batch)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ExportError(f"{label}: graphs with subgraphs (If/Loop/Scan) are not measured")
    unknown = [o for n in graph.node for o in n.output if o and (o not in infos or _nbytes(infos[o]) is None)]
    ran = _run_sizes(proto, unknown, batch, label) if unknown else {}

    def size(name: str) -> int:
        if name in ran:
            return ran[name]
        if name not in infos or (n := _nbytes(infos[name])) is None:
            raise ExportError(f"{label}: shape inference leaves the size of tensor {name!r} unknown")
        return n

    peak, peak_node, input_bytes = _live_peak(graph, _weights_of(graph), size)
    out = {"peak_bytes": int(peak), "peak_node": peak_node, "input_bytes": int(input_bytes), "method": METHOD}
    if ran:
        out["sizes_from_run"] = len(ran)  # tensors whose size one onnxruntime run read (shape inference could not)
    return out


def _inferred_infos_(proto: Any, batch: int) -> dict[str, Any]:
    """Sets every symbolic axis of ``proto``'s inputs and outputs to ``batch`` (in place), then runs shape inference.

    Returns:
        The inferred value info of every input, intermediate and output tensor, by name.
    """
    import onnx

    graph = proto.graph
    symbols = {d.dim_param for vi in graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}
    for vi in (*graph.input, *graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in symbols:
                d.dim_value = batch  # clears dim_param (a oneof): inference then propagates concrete shapes
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True).graph
    return {vi.name: vi for vi in (*inferred.input, *inferred.value_info, *inferred.output)}


def _weights_of(graph: Any) -> set[str]:
    """Names of the weight tensors: initializers, ``Constant`` outputs and whatever is computed from them alone."""
    weights = {t.name for t in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    # Tensors computed from weights alone (e.g. DequantizeLinear of int8 weights) are weights too: constant-folded.
    for n in graph.node:
        if all(not name or name in weights for name in n.input):
            weights.update(o for o in n.output if o)
    return weights


def _live_peak(graph: Any, weights: set[str], size: Callable[[str], int]) -> tuple[int, str, int]:
    """Walks the nodes in order, allocating and freeing activation buffers by the module docstring's rules.

    Returns:
        The peak of live bytes, the node running at the peak (``input`` if none exceeds the inputs), the input bytes.
    """
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in set(n.input) - weights - {""}:
            uses[name] = uses.get(name, 0) + 1
    pinned = {o.name for o in graph.output}  # returned to the caller, never freed

    buffer_of: dict[str, str] = {}  # tensor name -> the buffer holding it
    held: dict[str, set[str]] = {}  # buffer -> the live tensor names it holds
    live: dict[str, int] = {}  # buffer -> bytes
    for vi in graph.input:
        if vi.name not in weights:
            buffer_of[vi.name], held[vi.name], live[vi.name] = vi.name, {vi.name}, size(vi.name)
    input_bytes = sum(live.values())
    peak, peak_node = input_bytes, "input"

    def dies_here(b: str, inputs: set[str]) -> bool:
        return all(t in inputs and uses[t] == 1 and t not in pinned for t in held[b])

    for i, n in enumerate(graph.node):
        if all(o in weights for o in n.output if o):
            continue
        inputs = set(n.input) - weights - {""}
        for o in (o for o in n.output if o):
            first = n.input[0] if n.input else ""
            if n.op_type in _VIEWS and first in buffer_of:
                b = buffer_of[first]
            else:
                b = next(
                    (buffer_of[t] for t in n.input if n.op_type in _IN_PLACE and t in inputs
                     and dies_here(buffer_of[t], inputs) and live[buffer_of[t]] == size(o)),
                    o,
                )  # fmt: skip
                if b == o:
                    held[o], live[o] = set(), size(o)
            buffer_of[o] = b
            held[b].add(o)
        current = sum(live.values())
        if current > peak:
            peak, peak_node = current, n.name or f"{n.op_type}#{i}"
        for t in inputs:
            uses[t] -= 1
        for t in (*inputs, *(o for o in n.output if o)):
            if uses.get(t, 0) == 0 and t not in pinned and t in buffer_of:
                b = buffer_of[t]
                held[b].discard(t)
                if not held[b]:
                    del live[b]
    return peak, peak_node, input_bytes


__all__ = ["METHOD", "onnx_peak_activation"]
