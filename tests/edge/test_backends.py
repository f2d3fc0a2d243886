"""Both runtime backends on real models: ONNX Runtime and LiteRT."""

from __future__ import annotations

import numpy as np
import pytest

from mlperf_models import mlperf
from tinymlops.edge.backends import (
    ORT_PROVIDERS,
    LiteRTBackend,
    OnnxRuntimeBackend,
    detect_format,
    open_backend,
    ort_session_options,
)
from tinymlops.errors import BackendError, InvalidModelError


def test_onnx_backend_runs_digits(digits_model) -> None:
    b = open_backend(digits_model.onnx)
    assert isinstance(b, OnnxRuntimeBackend)
    out = np.concatenate([b.run(digits_model.x_test[i : i + 1])[0] for i in range(100)])
    assert (out.argmax(1) == digits_model.y_test[:100]).mean() > 0.9


@pytest.mark.parametrize("threads", [1, 2])
def test_onnx_sessions_use_the_shared_session_options(digits_model, threads: int) -> None:
    """The options benchmarks give their bare baseline are the ones every backend session gets."""
    import onnxruntime as ort

    b = open_backend(digits_model.onnx, threads=threads)
    assert isinstance(b, OnnxRuntimeBackend) and b.session.get_providers() == list(ORT_PROVIDERS)
    got, want = b.session.get_session_options(), ort_session_options(threads)
    for attr in ("intra_op_num_threads", "inter_op_num_threads", "log_severity_level", "execution_mode"):
        assert getattr(got, attr) == getattr(want, attr), attr
    assert (got.intra_op_num_threads, got.inter_op_num_threads) == (threads, 1)
    assert got.graph_optimization_level == ort.SessionOptions().graph_optimization_level  # ONNX Runtime's default


def test_litert_backend_quantizes_int8_io() -> None:
    data = mlperf("kws_ref_model.tflite").read_bytes()
    b = open_backend(data)
    assert isinstance(b, LiteRTBackend) and b.inputs[0].dtype == "int8"
    x = np.random.default_rng(0).normal(size=b.inputs[0].concrete_shape()).astype(np.float32)
    (y,) = b.run(x)
    assert y.dtype == np.float32 and y.shape == (1, 12)
    assert abs(float(y.sum()) - 1.0) < 0.05  # softmax output, dequantized


def test_int8_and_float_kws_agree_often() -> None:
    f = open_backend(mlperf("kws_ref_model_float32.tflite").read_bytes())
    q = open_backend(mlperf("kws_ref_model.tflite").read_bytes())
    rng = np.random.default_rng(1)
    xs = rng.normal(0, 10, size=(30, *f.inputs[0].concrete_shape()[1:])).astype(np.float32)
    agree = np.mean([f.run(x[None])[0].argmax() == q.run(x[None])[0].argmax() for x in xs])
    assert agree > 0.6


@pytest.mark.parametrize("data", [b"", b"hello", b"\x08\x01" + b"\xff" * 30])
def test_garbage_is_refused(data: bytes) -> None:
    with pytest.raises((InvalidModelError, BackendError)):
        open_backend(data)


def test_detect_format() -> None:
    assert detect_format(b"\x00\x00\x00\x00TFL3rest") == "tflite"
    with pytest.raises(InvalidModelError):
        detect_format(b"PK\x03\x04")
