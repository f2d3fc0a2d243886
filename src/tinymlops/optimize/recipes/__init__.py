"""The built-in recipes, one per module; importing this package registers every one of them."""

from tinymlops.optimize.recipes import fp16, prune, quantize_dynamic, quantize_static, tflite_to_onnx

__all__ = ["fp16", "prune", "quantize_dynamic", "quantize_static", "tflite_to_onnx"]
