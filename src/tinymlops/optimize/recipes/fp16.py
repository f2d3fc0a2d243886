"""fp16: float32 weights and compute converted to float16, float32 inputs and outputs kept
(Cast nodes at the edges), with ONNX Runtime's own converter
(``onnxruntime.transformers.float16``, pure onnx — no torch needed).

Weights outside float16's range are clamped to it (the count is recorded). Whether float16
compute is fast — or even native — depends on the host's kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tinymlops.errors import RecipeError
from tinymlops.optimize.base import Recipe, RecipeContext, RecipeOutput, register_recipe
from tinymlops.optimize.recipes._common import (
    ONNX_TOOLS,
    check_format,
    check_output,
    check_str_list,
    first_line,
    load_onnx,
    quiet,
    serialize,
    tool_versions,
    topological_sort,
)

#: the converter's own defaults (float16's smallest positive subnormal and largest finite value)
MIN_POSITIVE = 5.96e-08
MAX_FINITE = 65504.0


@register_recipe
class Fp16(Recipe):
    name = "fp16"
    summary = "float16 weights and compute, float32 inputs/outputs kept (ONNX Runtime's float16 converter)"
    input_formats = ("onnx",)
    #: op_block_list: op types kept in float32 (unset = the converter's default list)
    defaults: Mapping[str, Any] = {"op_block_list": None}

    def check_params(self, params: Mapping[str, Any]) -> None:
        check_str_list(self.name, params, "op_block_list")

    def apply(self, ctx: RecipeContext, params: Mapping[str, Any]) -> RecipeOutput:
        check_format(self.name, ctx, self.input_formats)
        model = load_onnx(self.name, ctx.model)
        clamped = _out_of_range(model)
        block = None if params["op_block_list"] is None else sorted(set(params["op_block_list"]))
        try:
            from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

            with quiet("onnxruntime", "onnxruntime.transformers"):
                converted = convert_float_to_float16(
                    model,
                    min_positive_val=MIN_POSITIVE,
                    max_finite_val=MAX_FINITE,
                    keep_io_types=True,
                    op_block_list=block,
                )
        except Exception as exc:
            raise RecipeError(
                f"recipe '{self.name}': float16 conversion failed: {type(exc).__name__}: {first_line(exc)}",
                recipe=self.name,
            ) from exc
        # the converter appends its input Casts after the nodes that read them
        topological_sort(converted)
        data = serialize(converted)
        check_output(self.name, data)
        return RecipeOutput(
            model=data,
            format="onnx",
            params=dict(params),
            tools=tool_versions(*ONNX_TOOLS, "onnxruntime"),
            notes={
                "keep_io_types": True,
                "op_block_list": block if block is not None else sorted(DEFAULT_OP_BLOCK_LIST),
                "clamped_weight_values": clamped,
            },
        )


def _out_of_range(model: Any) -> int:
    """How many float32 initializer values float16 cannot hold (clamped by the converter)."""
    from onnx import TensorProto, numpy_helper

    count = 0
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        a = np.abs(numpy_helper.to_array(init))
        count += int(np.count_nonzero((a > MAX_FINITE) | ((a > 0) & (a < MIN_POSITIVE))))
    return count
