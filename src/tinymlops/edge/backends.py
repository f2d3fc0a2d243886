"""Model execution backends: one interface, two real implementations (ONNX Runtime, LiteRT).

A backend is created from model *bytes* (never a path), so a device can run a model it
decrypted in memory. Both backends speak float: :meth:`Backend.run` takes and returns float32
arrays keyed by the model's own input names; a backend whose model has quantized (int8/uint8)
I/O quantizes inputs and dequantizes outputs with the model's own scale and zero point.
:meth:`Backend.run_raw` feeds the model's native dtypes unchanged.

This module is in the edge closure: it imports numpy and the runtimes only, lazily.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tinymlops.errors import BackendError, InvalidModelError
from tinymlops.spec.model_info import TensorSpec

if TYPE_CHECKING:
    import onnxruntime as ort

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}

TFLITE_IDENTIFIER = b"TFL3"


def detect_format(data: bytes) -> str:
    """Tell an ONNX file from a TFLite flatbuffer by content, not by file name."""
    if len(data) >= 8 and data[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    # An ONNX ModelProto starts with a protobuf field tag; ir_version (field 1, varint) is
    # written first by every exporter we know of.
    if len(data) >= 2 and data[0] == 0x08:
        return "onnx"
    raise InvalidModelError("not an ONNX or TFLite model (unrecognised file header)")


class Backend(ABC):
    """A loaded model ready to run on this host."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @abstractmethod
    def run_raw(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run with inputs in the model's native dtypes; return outputs as the model gives them."""

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Run with float inputs (a single array is fed to the only input); return float32 outputs."""
        if isinstance(feeds, np.ndarray):
            if len(self.inputs) != 1:
                raise BackendError(f"model has {len(self.inputs)} inputs; pass a mapping of name to array")
            feeds = {self.inputs[0].name: feeds}
        native: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                raise BackendError(f"missing input '{spec.name}'")
            native[spec.name] = _to_native(np.asarray(feeds[spec.name]), spec)
        raw = self.run_raw(native)
        return [_to_float(arr, spec) for arr, spec in zip(raw, self.outputs, strict=True)]


def _to_native(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype in ("int8", "uint8") and spec.quantization is not None and x.dtype.kind == "f":
        scale, zero = spec.quantization
        info = np.iinfo(spec.dtype)
        q = np.round(x / scale) + zero
        return np.clip(q, info.min, info.max).astype(spec.dtype)
    return x.astype(spec.dtype, copy=False)


def _to_float(y: np.ndarray, spec: TensorSpec) -> np.ndarray:
    if spec.dtype in ("int8", "uint8") and spec.quantization is not None:
        scale, zero = spec.quantization
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
    return y.astype(np.float32, copy=False)


#: the execution providers every ONNX Runtime session here uses
ORT_PROVIDERS = ("CPUExecutionProvider",)


def ort_session_options(threads: int = 1) -> ort.SessionOptions:
    """The ``onnxruntime.SessionOptions`` of every session :class:`OnnxRuntimeBackend` creates
    (``threads`` intra-op threads, one inter-op thread, warnings and errors only; everything else,
    graph optimization level included, at ONNX Runtime's defaults). Benchmarks build their bare
    baseline from the same options."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendError("onnxruntime is not installed (pip install 'tinymlops[edge]')") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        opts = ort_session_options(threads)
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(model, sess_options=opts, providers=list(ORT_PROVIDERS))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from exc
        self.inputs = tuple(
            TensorSpec(i.name, tuple(_dim(d) for d in i.shape), _ORT_DTYPES.get(i.type, "float32"))
            for i in self.session.get_inputs()
        )
        self.outputs = tuple(
            TensorSpec(o.name, tuple(_dim(d) for d in o.shape), _ORT_DTYPES.get(o.type, "float32"))
            for o in self.session.get_outputs()
        )
        self._output_names = [o.name for o in self.outputs]
        # a failing call raises with ONNX Runtime's message (BackendError below) and is counted by the
        # health and telemetry middleware; ORT's own per-call error log would print it again on stderr
        # for every failed prediction — a flood on a device serving a broken model — so it is off
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4

    def run_raw(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self.session.run(self._output_names, dict(feeds), self._run_options))
        except Exception as exc:
            raise BackendError(f"ONNX Runtime failed to run the model: {_first_line(exc)}") from exc


class LiteRTBackend(Backend):
    name = "litert"

    def __init__(self, model: bytes, *, threads: int = 1) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise BackendError("ai-edge-litert is not installed (pip install 'tinymlops[edge]')") from exc
        try:
            self.interpreter = Interpreter(model_content=bytes(model), num_threads=threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise BackendError(f"LiteRT cannot load the model: {_first_line(exc)}") from exc
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self.inputs = tuple(_litert_spec(d) for d in self._in)
        self.outputs = tuple(_litert_spec(d) for d in self._out)

    def run_raw(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        it = self.interpreter
        try:
            for detail, spec in zip(self._in, self.inputs, strict=True):
                x = np.asarray(feeds[spec.name])
                if tuple(x.shape) != tuple(detail["shape"]):
                    it.resize_tensor_input(detail["index"], list(x.shape))
                    it.allocate_tensors()
                it.set_tensor(detail["index"], x)
            it.invoke()
            return [it.get_tensor(d["index"]).copy() for d in self._out]
        except Exception as exc:
            raise BackendError(f"LiteRT failed to run the model: {_first_line(exc)}") from exc


def _litert_spec(detail: Mapping[str, object]) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name  # type: ignore[call-overload]
    scale, zero = detail.get("quantization", (0.0, 0))  # type: ignore[misc]
    signature = detail.get("shape_signature", detail["shape"])
    shape = tuple("batch" if int(d) < 0 else int(d) for d in signature)  # type: ignore[union-attr]
    quant = (float(scale), int(zero)) if scale else None
    return TensorSpec(str(detail["name"]), shape, dtype, quant)


def _dim(d: object) -> int | str:
    return d if isinstance(d, int) else str(d or "batch")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:400]


BACKENDS_BY_FORMAT: dict[str, type[Backend]] = {"onnx": OnnxRuntimeBackend, "tflite": LiteRTBackend}


def open_backend(model: bytes, fmt: str | None = None, *, threads: int = 1) -> Backend:
    """Load model bytes into the backend that runs its format (detected when not given)."""
    fmt = fmt or detect_format(model)
    try:
        cls = BACKENDS_BY_FORMAT[fmt]
    except KeyError:
        raise BackendError(f"no backend runs format {fmt!r}; known: {', '.join(BACKENDS_BY_FORMAT)}") from None
    return cls(model, threads=threads)


def input_batch(specs: Sequence[TensorSpec], x: np.ndarray) -> dict[str, np.ndarray]:
    """Feed one array to a single-input model (a convenience for evaluation code)."""
    if len(specs) != 1:
        raise BackendError(f"model has {len(specs)} inputs; evaluation feeds single-input models only")
    return {specs[0].name: x}
