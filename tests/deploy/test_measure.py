"""ONNX cost records: latency labelled with threads/batch/size, the 224 px reference, and peak activation memory
measured on the graph (checked against a hand-built graph whose peak is computed by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeslice.deploy.export import export_onnx
from edgeslice.deploy.measure import available_threads, onnx_cost, onnx_latency, reference_latency
from edgeslice.deploy.memory import onnx_peak_activation


def _toy_graph(path, batch="N"):
    """x (1×1×4×4) → Conv → a (4 ch) → Relu → b → Conv → c (1 ch) → Add(c, x) → e → Flatten → out (1×16).

    The second conv's weight is an int8 initializer behind a DequantizeLinear: computed from weights alone, so it
    is a weight, not an activation. Per sample: x 64 B, a = b 256 B (Relu writes over a, which dies there),
    c 64 B, e over c (Add in place), out a view of e. While the second conv runs, x (needed by the Add), b and c are
    live: 64 + 256 + 64 = 384 B, the peak. Without the in-place Relu it would be 64 + 256 + 256 = 576 B.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w1")
    w2q = numpy_helper.from_array(np.ones((1, 4, 3, 3), np.int8), "w2q")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    nodes = [
        helper.make_node("DequantizeLinear", ["w2q", "scale"], ["w2"], name="dq_w2"),
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["e"], name="add"),
        helper.make_node("Flatten", ["e"], ["out"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 16])],
        [w1, w2q, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_peak_activation_by_hand(tmp_path):
    path = _toy_graph(tmp_path / "toy.onnx")
    peak = onnx_peak_activation(path)
    assert (peak["peak_bytes"], peak["peak_node"], peak["input_bytes"]) == (384, "conv2", 64)
    assert "shape inference" in peak["method"] and "last consumer" in peak["method"]
    assert onnx_peak_activation(path, batch=2)["peak_bytes"] == 768  # every live tensor doubles
    # onnxruntime runs the same graph: the hand-built file is a real model, not just a shape exercise.
    from edgeslice.deploy.export import ort_session

    sess = ort_session(path, 1)
    assert sess.run(None, {"x": np.zeros((1, 1, 4, 4), np.float32)})[0].shape == (1, 16)


def test_peak_activation_reads_sizes_inference_cannot_tell_from_one_run(tmp_path):
    """x (1×8 float, 32 B) → ReduceMax → m (4 B) → Cast → k (int64, 8 B) → Add 5 → k5 (over k, 8 B) → Range(0, k5)
    → out. Range's length depends on x's values: shape inference cannot size it; one onnxruntime run on zeros gives
    5 int64 = 40 B. Live bytes: 36 at ReduceMax (x, m), 12 at Cast (m, k), 8 at Add, 48 at Range (k5, out): the
    peak is Range's. (hgnetv2 and EfficientViT export Pad and attention reshapes that inference leaves unknown.)"""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zero", 0), ("one", 1), ("five", 5))]
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["m"], name="max", keepdims=0),
            helper.make_node("Cast", ["m"], ["k"], name="cast", to=TensorProto.INT64),
            helper.make_node("Add", ["k", "five"], ["k5"], name="add"),
            helper.make_node("Range", ["zero", "k5", "one"], ["out"], name="range"),
        ],
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, None)],
        consts,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "d.onnx"))
    peak = onnx_peak_activation(tmp_path / "d.onnx")
    assert (peak["peak_bytes"], peak["peak_node"], peak["sizes_from_run"]) == (48, "range", 1)
    assert peak["input_bytes"] == 32


def test_onnx_cost_labels_every_latency(tiny_mnv3, tmp_path):
    path = export_onnx(tiny_mnv3, torch.zeros(1, 1, 32, 32), tmp_path / "m.onnx")
    cost = onnx_cost(path, (1, 32, 32), threads=1)
    device = cost["latency_device"]
    assert {k: device[k] for k in ("threads", "batch", "input_shape", "runs")} == {
        "threads": 1, "batch": 1, "input_shape": [1, 32, 32], "runs": 50,
    }  # fmt: skip
    assert 0 < device["median_ms"] <= device["p90_ms"]
    cores = available_threads()
    assert (cost["latency"]["threads"], cost["latency"]["batch"]) == (cores, 1)
    assert (cost["latency_batch32"]["threads"], cost["latency_batch32"]["batch"]) == (cores, 32)
    peak = cost["peak_activation"]
    assert peak["peak_bytes"] >= peak["input_bytes"] == 32 * 32 * 4
    # More threads than cores are not used, and the record says what was asked.
    capped = onnx_latency(path, (1, 1, 32, 32), threads=cores + 7, runs=2, warmup=1)
    assert (capped["threads"], capped["threads_requested"]) == (cores, cores + 7)


def test_reference_latency_at_224(tiny_mnv3, tmp_path):
    ref = reference_latency(tiny_mnv3, torch.zeros(2, 1, 32, 32), threads=1)
    assert ref["input_shape"] == [1, 224, 224] and ref["threads"] == 1 and ref["batch"] == 1
    assert "224 px" in ref["reference"] and ref["median_ms"] > 0
    assert reference_latency(tiny_mnv3, torch.zeros(1, 1, 96, 96)) is None  # the input is already large
    import timm

    import edgeslice.mlp  # noqa: F401 - registers the MLP

    mlp = timm.create_model("edgeslice_mlp", num_classes=10, in_chans=1, img_size=28)
    assert "does not run at 224 px" in reference_latency(mlp, torch.zeros(1, 1, 28, 28))["skipped"]


def test_openvino_latency_record(tiny_mnv3, tmp_path):
    pytest.importorskip("openvino")
    path = export_onnx(tiny_mnv3, torch.zeros(1, 1, 32, 32), tmp_path / "m.onnx")
    rec = onnx_latency(path, (1, 1, 32, 32), threads=1, runs=3, warmup=1, runtime="openvino")
    assert (rec["runtime"], rec["threads"], rec["batch"], rec["runs"]) == ("openvino", 1, 1, 3) and rec["median_ms"] > 0
    with pytest.raises(ValueError, match="unknown runtime 'tflite'"):
        onnx_latency(path, (1, 1, 32, 32), runtime="tflite")
