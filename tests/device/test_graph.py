"""Finding the classifier in an ONNX graph, reading features, and writing a head with another class count."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from edgeslice_device.graph import feature_session, find_classifier, load_model, run_features, session, with_head
from onnx import TensorProto, helper, numpy_helper

from . import _build


def test_gemm_classifier_and_features_match_torch(base_bundle, digit_data):
    from safetensors.torch import load_file

    data = (base_bundle / "model.onnx").read_bytes()
    head = find_classifier(load_model(data))
    state = load_file(base_bundle / "model.safetensors")
    np.testing.assert_array_equal(head.weight, state["classifier.weight"].double().numpy())
    np.testing.assert_array_equal(head.bias, state["classifier.bias"].double().numpy())
    model = _build.TinyCNN(5)
    model.load_state_dict(state)
    x = _build.to_input(digit_data["images"][:20])
    logits, feats = run_features(feature_session(data), x, batch=7)
    with torch.no_grad():
        np.testing.assert_allclose(feats, model.eval().features(torch.from_numpy(x)).numpy(), atol=1e-4)
    np.testing.assert_allclose(logits, feats @ head.weight.T + head.bias, atol=1e-4)


def test_with_head_grows_the_output(base_bundle):
    model = load_model((base_bundle / "model.onnx").read_bytes())
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(7, 48)), rng.normal(size=7)
    new = with_head(model, w, b)
    assert new.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 7
    x = np.zeros((3, 1, 16, 16), np.float32)
    logits, feats = run_features(feature_session(new.SerializeToString()), x)
    np.testing.assert_allclose(logits, feats @ w.T.astype(np.float32) + b.astype(np.float32), atol=1e-4)
    assert find_classifier(model).weight.shape == (5, 48)  # the original is untouched


def test_matmul_add_classifier():
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10  # (d, C)
    b = np.array([1.0, -1.0, 0.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["mm"]),
         helper.make_node("Add", ["mm", "B"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    head = find_classifier(model)
    assert head.features == "f" and head.weight.shape == (3, 4)
    np.testing.assert_allclose(head.weight, w.T)
    new = with_head(model, np.ones((5, 4)), np.zeros(5))
    onnx.checker.check_model(new)
    out = session(new.SerializeToString()).run(None, {"x": np.ones((2, 4), np.float32)})[0]
    np.testing.assert_allclose(out, np.full((2, 5), 4.0))
    with pytest.raises(Exception, match="does not fit"):
        with_head(model, np.ones((5, 3)), np.zeros(5))
