"""What the registry records about one model file: signature, operators, size of the computation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import check_version, get_choice, get_int, get_str, reject_unknown

MODEL_INFO_SPEC_MAJOR = 1
FORMATS = ("onnx", "tflite")
#: numpy dtype names used in signatures
TENSOR_DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "bool",
    "string",
)
#: non-tensor ONNX values (e.g. scikit-learn's ZipMap output) are written "seq(...)" / "map(...)"
_COMPOSITE_PREFIXES = ("seq(", "map(", "optional(")


def _dtype(doc: str, data: Mapping[str, Any]) -> str:
    value = get_str(doc, data, "dtype")
    if value.startswith(_COMPOSITE_PREFIXES) and value.endswith(")"):
        return value
    return get_choice(doc, data, "dtype", TENSOR_DTYPES)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. Dimensions are ints, or strings for symbolic (batch) dimensions.

    ``quantization`` is ``(scale, zero_point)`` for per-tensor quantized TFLite I/O, else None.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    quantization: tuple[float, int] | None = None

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every symbolic or unknown dimension set to ``batch``."""
        return tuple(d if isinstance(d, int) and d > 0 else batch for d in self.shape)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], doc: str = "tensor") -> TensorSpec:
        reject_unknown(doc, data, {"name", "shape", "dtype", "quantization"})
        shape = data.get("shape")
        if not isinstance(shape, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool)) or isinstance(d, str) for d in shape
        ):
            raise SpecError(f"{doc}: 'shape' must be a list of ints or strings, got {shape!r}")
        q = data.get("quantization")
        if q is not None and (not isinstance(q, list) or len(q) != 2):
            raise SpecError(f"{doc}: 'quantization' must be [scale, zero_point], got {q!r}")
        return cls(
            name=get_str(doc, data, "name"),
            shape=tuple(shape),
            dtype=_dtype(doc, data),
            quantization=None if q is None else (float(q[0]), int(q[1])),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.quantization is not None:
            out["quantization"] = list(self.quantization)
        return out


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model file, computed once at registration.

    ``operators`` maps an op type (ONNX ``domain::OpType`` for non-default domains, TFLite
    builtin names such as ``CONV_2D``) to its count. ``weight_dtypes`` are the dtypes of the
    stored parameters; ``compute_dtypes`` those of the tensors the operators consume.
    ``macs`` and ``peak_activation_bytes`` are estimates for batch 1 (see ``estimates``).
    """

    format: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    operators: Mapping[str, int]
    parameters: int
    macs: int
    peak_activation_bytes: int
    weight_bytes: int
    weight_dtypes: tuple[str, ...]
    compute_dtypes: tuple[str, ...]
    opset: int | None = None
    producer: str = ""
    estimates: Mapping[str, str] = field(default_factory=dict)
    spec_version: str = "1.0"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        doc = "model info"
        reject_unknown(
            doc,
            data,
            {
                "spec_version",
                "format",
                "inputs",
                "outputs",
                "operators",
                "parameters",
                "macs",
                "peak_activation_bytes",
                "weight_bytes",
                "weight_dtypes",
                "compute_dtypes",
                "opset",
                "producer",
                "estimates",
            },
        )
        check_version(doc, data, MODEL_INFO_SPEC_MAJOR)
        ops = data.get("operators")
        if not isinstance(ops, Mapping) or not all(isinstance(v, int) for v in ops.values()):
            raise SpecError(f"{doc}: 'operators' must map op type to count")
        opset = data.get("opset")
        return cls(
            spec_version=str(data["spec_version"]),
            format=get_choice(doc, data, "format", FORMATS),
            inputs=tuple(TensorSpec.from_dict(t, f"{doc} input") for t in data.get("inputs", [])),
            outputs=tuple(TensorSpec.from_dict(t, f"{doc} output") for t in data.get("outputs", [])),
            operators=dict(ops),
            parameters=get_int(doc, data, "parameters", minimum=0),
            macs=get_int(doc, data, "macs", minimum=0),
            peak_activation_bytes=get_int(doc, data, "peak_activation_bytes", minimum=0),
            weight_bytes=get_int(doc, data, "weight_bytes", minimum=0),
            weight_dtypes=tuple(data.get("weight_dtypes", [])),
            compute_dtypes=tuple(data.get("compute_dtypes", [])),
            opset=None if opset is None else get_int(doc, data, "opset", minimum=1),
            producer=str(data.get("producer", "")),
            estimates=dict(data.get("estimates", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": self.spec_version,
            "format": self.format,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "operators": dict(sorted(self.operators.items())),
            "parameters": self.parameters,
            "macs": self.macs,
            "peak_activation_bytes": self.peak_activation_bytes,
            "weight_bytes": self.weight_bytes,
            "weight_dtypes": list(self.weight_dtypes),
            "compute_dtypes": list(self.compute_dtypes),
            "opset": self.opset,
            "producer": self.producer,
            "estimates": dict(self.estimates),
        }
