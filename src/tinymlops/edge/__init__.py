"""The device side: runtime backends (and, in later issues, the runtime and the agent).

Everything imported from here stays inside the edge closure: numpy, onnxruntime, LiteRT,
cryptography — never sqlalchemy, fastapi, torch, flwr or onnx.
"""

from tinymlops.edge.backends import Backend, LiteRTBackend, OnnxRuntimeBackend, detect_format, open_backend

__all__ = ["Backend", "LiteRTBackend", "OnnxRuntimeBackend", "detect_format", "open_backend"]
