"""What the two ONNX Runtime quantization recipes share: pre-processing and running the
quantizer on files in a private temporary directory."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinymlops.errors import RecipeError
from tinymlops.optimize.recipes._common import first_line, quiet, serialize

#: the loggers ONNX Runtime's quantization tools talk through
QUANT_LOGGERS = ("onnxruntime", "onnxruntime.quantization")


def quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[name]


def run_quantizer(recipe: str, model: Any, quantize: Callable[[Path, Path], None]) -> tuple[bytes, str]:
    """Write ``model`` to a temporary directory, pre-process it (ONNX Runtime's
    ``quant_pre_process``: shape inference and graph clean-up, as its docs recommend), call
    ``quantize(input_path, output_path)`` and return the output bytes and what pre-processing did.

    Pre-processing is skipped (and said so) when it fails, e.g. on a model whose shapes symbolic
    inference cannot follow; the quantizer then runs on the model as given.
    """
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="tinymlops-quant-") as tmp:
        src = Path(tmp) / "model.onnx"
        pre = Path(tmp) / "model.pre.onnx"
        out = Path(tmp) / "model.quant.onnx"
        src.write_bytes(serialize(model))
        preprocessing = "quant_pre_process"
        with quiet(*QUANT_LOGGERS):
            try:
                quant_pre_process(str(src), str(pre))
                quant_input = pre
            except Exception as exc:
                preprocessing = f"skipped ({type(exc).__name__}: {first_line(exc)})"
                quant_input = src
            try:
                quantize(quant_input, out)
            except Exception as exc:
                raise RecipeError(
                    f"recipe '{recipe}': ONNX Runtime's quantizer failed: {type(exc).__name__}: {first_line(exc)}",
                    recipe=recipe,
                ) from exc
        if not out.exists():
            raise RecipeError(f"recipe '{recipe}': the quantizer wrote no model", recipe=recipe)
        return out.read_bytes(), preprocessing
