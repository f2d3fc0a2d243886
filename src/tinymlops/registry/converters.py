"""Converters from training frameworks to ONNX bytes (PyTorch modules, scikit-learn estimators).

They need the ``train`` extra and are imported only when called.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from tinymlops.errors import InvalidModelError, UsageError


def onnx_from_torch(module: Any, example_input: Any, *, opset: int = 17, dynamic_batch: bool = True) -> bytes:
    """Export a ``torch.nn.Module`` to ONNX bytes (TorchScript-based exporter, deterministic)."""
    try:
        import torch
    except ImportError as exc:
        raise UsageError("PyTorch is not installed (pip install 'tinymlops[train]')") from exc
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got {type(module).__name__}")
    example = torch.as_tensor(np.asarray(example_input, dtype=np.float32))
    buf = io.BytesIO()
    module = module.eval()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                module,
                (example,),
                buf,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:
        raise InvalidModelError(f"PyTorch could not export the module to ONNX: {exc}") from exc
    return buf.getvalue()


def onnx_from_sklearn(estimator: Any, n_features: int, *, opset: int = 17) -> bytes:
    """Convert a fitted scikit-learn estimator (float32 input ``[batch, n_features]``)."""
    try:
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import FloatTensorType
    except ImportError as exc:
        raise UsageError("skl2onnx is not installed (pip install 'tinymlops[train]')") from exc
    try:
        onx = to_onnx(
            estimator,
            initial_types=[("input", FloatTensorType([None, n_features]))],
            target_opset={"": opset, "ai.onnx.ml": 3},
            options={"zipmap": False} if hasattr(estimator, "predict_proba") else None,
        )
    except Exception as exc:
        raise InvalidModelError(f"skl2onnx could not convert {type(estimator).__name__}: {exc}") from exc
    return onx.SerializeToString()
