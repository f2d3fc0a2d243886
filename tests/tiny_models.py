"""The smallest real ONNX model the tests bundle, deliver and run: ``y = x @ (scale * W)``,
4 inputs → 2 outputs (a few hundred bytes; another ``scale`` gives another model) — and a linear
classifier with softmax probabilities (:func:`logistic_onnx`) for the telemetry and drift tests."""

from __future__ import annotations

import numpy as np


def tiny_onnx(scale: float = 1.0) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array((scale * np.linspace(-1, 1, 8, dtype=np.float32)).reshape(4, 2), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def logistic_onnx(coef: np.ndarray, intercept: np.ndarray, scale: float) -> bytes:
    """``softmax(x @ (coef.T * scale) + intercept)`` as an ONNX model: input ``x`` [batch, F]."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array((coef.T * scale).astype(np.float32), "W")
    b = numpy_helper.from_array(intercept.astype(np.float32), "B")
    features, classes = coef.shape[1], coef.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "digits_logistic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
