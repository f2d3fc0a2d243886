"""The smallest real ONNX model the tests bundle, deliver and run: ``y = x @ (scale * W)``,
4 inputs → 2 outputs (a few hundred bytes; another ``scale`` gives another model)."""

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
