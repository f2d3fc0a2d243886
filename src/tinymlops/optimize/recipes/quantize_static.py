"""quantize-static: int8 weights and activations with ranges calibrated on the model's
calibration rows (ONNX Runtime's ``quantize_static``, QDQ format by default).

The activation/weight type pair and the format are real choices, not details: ONNX Runtime's
int8 kernels differ by pair and by host (on x86 some pairs run several times slower than
others, and than float). Which one is fast on a device is for the benchmark to say.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tinymlops.errors import ConfigError, RecipeError
from tinymlops.optimize.base import Recipe, RecipeContext, RecipeOutput, register_recipe
from tinymlops.optimize.recipes._common import (
    ONNX_TOOLS,
    check_bool,
    check_choice,
    check_format,
    check_int,
    check_output,
    default_opset,
    first_line,
    graph_inputs,
    load_onnx,
    tool_versions,
)
from tinymlops.optimize.recipes._ort_quant import quant_type, run_quantizer

TYPES = ("quint8", "qint8")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMATS = ("qdq", "qoperator")
PER_CHANNEL_QDQ_OPSET = 13
#: said with every entropy-calibrated variant, because it surprises
ENTROPY_NOTE = (
    "quantize_static runs entropy calibration with as many quantized bins as histogram bins (128), "
    "so the KL search usually has a single candidate, the whole histogram range: expect ranges close "
    "to minmax (on a small CNN the variant came out byte-identical to minmax)"
)


@register_recipe
class QuantizeStatic(Recipe):
    name = "quantize-static"
    summary = (
        "int8/uint8 weights and activations, ranges calibrated on the calibration data "
        "(ONNX Runtime quantize_static); kernel speed depends on the type pair and host"
    )
    input_formats = ("onnx",)
    defaults: Mapping[str, Any] = {
        "activation_type": "quint8",
        "weight_type": "qint8",
        "per_channel": False,
        "calibrate_method": "minmax",
        "quant_format": "qdq",
        "calibration_samples": 128,
    }

    def check_params(self, params: Mapping[str, Any]) -> None:
        check_choice(self.name, params, "activation_type", TYPES)
        check_choice(self.name, params, "weight_type", TYPES)
        check_bool(self.name, params, "per_channel")
        check_choice(self.name, params, "calibrate_method", CALIBRATE_METHODS)
        check_choice(self.name, params, "quant_format", QUANT_FORMATS)
        check_int(self.name, params, "calibration_samples", minimum=1)
        if params["activation_type"] == "qint8" and params["weight_type"] == "quint8":
            raise ConfigError(
                f"recipe '{self.name}': ONNX Runtime does not support activation_type=qint8 with "
                "weight_type=quint8; use weight_type=qint8, or activation_type=quint8",
                param="weight_type",
            )

    def apply(self, ctx: RecipeContext, params: Mapping[str, Any]) -> RecipeOutput:
        import onnx

        check_format(self.name, ctx, self.input_formats)
        model = load_onnx(self.name, ctx.model)
        inputs = graph_inputs(model)
        if len(inputs) != 1:
            raise RecipeError(
                f"recipe '{self.name}' calibrates single-input models; this one has {len(inputs)} inputs",
                recipe=self.name,
            )
        spec = inputs[0]
        rows = _calibration_rows(self.name, ctx.calibration, spec, params["calibration_samples"])
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(spec.type.tensor_type.elem_type)
        except Exception:
            dtype = np.dtype(np.float32)
        opset_note = None
        if params["per_channel"] and params["quant_format"] == "qdq" and default_opset(model) < PER_CHANNEL_QDQ_OPSET:
            # per-axis QuantizeLinear/DequantizeLinear exist from opset 13 on
            before = default_opset(model)
            try:
                model = onnx.version_converter.convert_version(model, PER_CHANNEL_QDQ_OPSET)
            except Exception as exc:
                raise RecipeError(
                    f"recipe '{self.name}': per-channel QDQ needs opset {PER_CHANNEL_QDQ_OPSET}, and this "
                    f"opset {before} model cannot be upgraded: {type(exc).__name__}: {first_line(exc)}",
                    recipe=self.name,
                ) from exc
            opset_note = f"upgraded from {before} to {PER_CHANNEL_QDQ_OPSET} for per-channel QDQ"
        feeds = [{spec.name: np.ascontiguousarray(rows[i : i + 1], dtype=dtype)} for i in range(len(rows))]

        def quantize(src: Any, dst: Any) -> None:
            from onnxruntime.quantization import (
                CalibrationDataReader,
                CalibrationMethod,
                QuantFormat,
                quantize_static,
            )

            class Rows(CalibrationDataReader):
                def __init__(self) -> None:
                    self._it = iter(feeds)

                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(self._it, None)

                def rewind(self) -> None:
                    self._it = iter(feeds)

            quantize_static(
                str(src),
                str(dst),
                Rows(),
                quant_format={"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[params["quant_format"]],
                per_channel=params["per_channel"],
                activation_type=quant_type(params["activation_type"]),
                weight_type=quant_type(params["weight_type"]),
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[params["calibrate_method"]],
                calibration_providers=["CPUExecutionProvider"],
            )

        data, preprocessing = run_quantizer(self.name, model, quantize)
        check_output(self.name, data)
        notes: dict[str, Any] = {
            "calibration_source": ctx.calibration_source,
            "calibration_samples_used": len(rows),
            "preprocessing": preprocessing,
            "type_pair": f"activations {params['activation_type']}, weights {params['weight_type']}",
            "kernels": "ONNX Runtime's int8 kernel speed depends on the type pair, format and host; "
            "benchmark this variant on the target before preferring it",
        }
        if opset_note:
            notes["opset"] = opset_note
        if params["calibrate_method"] == "entropy":
            notes["calibrate_method_note"] = ENTROPY_NOTE
        return RecipeOutput(
            model=data,
            format="onnx",
            params=dict(params),
            tools=tool_versions(*ONNX_TOOLS, "onnxruntime"),
            notes=notes,
        )


def _calibration_rows(recipe: str, calibration: np.ndarray, spec: Any, limit: int) -> np.ndarray:
    x = np.asarray(calibration)
    if x.ndim == 0 or x.shape[0] == 0:
        raise RecipeError(f"recipe '{recipe}': no calibration rows to calibrate on", recipe=recipe)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in spec.type.tensor_type.shape.dim]
    expected = dims[1:]
    if x.ndim != len(dims) or any(
        e is not None and e > 0 and e != a for e, a in zip(expected, x.shape[1:], strict=True)
    ):
        shown = ["?" if d is None else d for d in dims]
        raise RecipeError(
            f"recipe '{recipe}': calibration rows of shape {list(x.shape)} do not fit input "
            f"'{spec.name}' of shape {shown}",
            recipe=recipe,
            calibration_shape=list(x.shape),
        )
    return x[:limit]
