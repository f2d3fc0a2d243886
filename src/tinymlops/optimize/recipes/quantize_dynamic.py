"""quantize-dynamic: int8 weights, activations quantized on the fly at run time (ONNX Runtime's
``quantize_dynamic``). Needs no calibration data; whether it runs faster than float depends on
the model and the host's kernels — measure it on the target."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinymlops.optimize.base import Recipe, RecipeContext, RecipeOutput, register_recipe
from tinymlops.optimize.recipes._common import (
    ONNX_TOOLS,
    check_bool,
    check_choice,
    check_format,
    check_output,
    check_str_list,
    load_onnx,
    tool_versions,
)
from tinymlops.optimize.recipes._ort_quant import quant_type, run_quantizer

WEIGHT_TYPES = ("qint8", "quint8")


@register_recipe
class QuantizeDynamic(Recipe):
    name = "quantize-dynamic"
    summary = "int8/uint8 weights, activations quantized at run time (ONNX Runtime quantize_dynamic)"
    input_formats = ("onnx",)
    defaults: Mapping[str, Any] = {"weight_type": "qint8", "per_channel": False, "op_types": None}

    def check_params(self, params: Mapping[str, Any]) -> None:
        check_choice(self.name, params, "weight_type", WEIGHT_TYPES)
        check_bool(self.name, params, "per_channel")
        check_str_list(self.name, params, "op_types")

    def apply(self, ctx: RecipeContext, params: Mapping[str, Any]) -> RecipeOutput:
        check_format(self.name, ctx, self.input_formats)
        model = load_onnx(self.name, ctx.model)
        op_types = None if params["op_types"] is None else sorted(set(params["op_types"]))

        def quantize(src: Any, dst: Any) -> None:
            from onnxruntime.quantization import quantize_dynamic

            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=op_types,
                per_channel=params["per_channel"],
                weight_type=quant_type(params["weight_type"]),
            )

        data, preprocessing = run_quantizer(self.name, model, quantize)
        check_output(self.name, data)
        return RecipeOutput(
            model=data,
            format="onnx",
            params=dict(params),
            tools=tool_versions(*ONNX_TOOLS, "onnxruntime"),
            notes={"preprocessing": preprocessing, "op_types": op_types or "onnxruntime default"},
        )
