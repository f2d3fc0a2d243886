"""Model inspection: the static facts (:class:`~tinymlops.spec.model_info.ModelInfo`) the
registry records about a model file when it is registered.

Works on bytes, never on paths, and detects the format from the content. Nothing is run:
ONNX models are parsed, checked and shape-inferred with the ``onnx`` package; TFLite models
are verified and loaded (not invoked) by the LiteRT interpreter. ``macs`` and
``peak_activation_bytes`` are batch-1 estimates whose method is described in
``ModelInfo.estimates``.

Every way a file can be broken (empty, truncated, corrupt, not a model) raises
:class:`~tinymlops.errors.InvalidModelError`.
"""

from __future__ import annotations

from tinymlops.edge.backends import detect_format
from tinymlops.errors import InvalidModelError
from tinymlops.spec.model_info import ModelInfo


def inspect_model(data: bytes) -> ModelInfo:
    """Inspect an ONNX or TFLite model given as bytes (format detected from the content)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"inspect_model takes the model's bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise InvalidModelError("not an ONNX or TFLite model: the file is empty")
    fmt = detect_format(data)
    if fmt == "onnx":
        from tinymlops.registry.inspect.onnx_model import inspect_onnx

        return inspect_onnx(data)
    from tinymlops.registry.inspect.tflite_model import inspect_tflite

    return inspect_tflite(data)


def __getattr__(name: str) -> object:
    # the per-format inspectors import heavy libraries (onnx, LiteRT); load them on first use
    if name == "inspect_onnx":
        from tinymlops.registry.inspect.onnx_model import inspect_onnx

        return inspect_onnx
    if name == "inspect_tflite":
        from tinymlops.registry.inspect.tflite_model import inspect_tflite

        return inspect_tflite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["inspect_model", "inspect_onnx", "inspect_tflite"]
