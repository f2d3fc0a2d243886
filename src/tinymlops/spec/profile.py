"""Device profiles: what a class of device can run (operators, dtypes, memory, compute, power)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import (
    check_version,
    get_choice,
    get_int,
    get_number,
    get_str,
    get_str_list,
    reject_unknown,
)

PROFILE_SPEC_MAJOR = 1
DEVICE_CLASSES = ("mcu", "sbc", "phone", "gpu-edge", "x86-edge", "custom")
BACKENDS = ("onnxruntime", "litert")
DTYPES = ("fp32", "fp16", "int8")
#: operator tables that ONNX Runtime ships with its mobile usability checker
ORT_OPERATOR_TABLES = ("nnapi", "coreml-mlprogram", "coreml-neuralnetwork")

_FIELDS = {
    "spec_version",
    "name",
    "device_class",
    "description",
    "backends",
    "dtypes",
    "onnx_operators",
    "onnx_operator_table",
    "tflite_operators",
    "min_opset",
    "max_opset",
    "ram_mb",
    "storage_mb",
    "relative_compute",
    "active_power_w",
    "idle_power_w",
    "battery_wh",
}


@dataclass(frozen=True)
class DeviceProfile:
    """A class of device. ``relative_compute`` is throughput relative to the measuring host (1.0).

    Operator support: ``onnx_operators`` lists ONNX op types (``None`` = every op ONNX Runtime's
    CPU provider has); ``onnx_operator_table`` instead takes the list from a support table that
    ONNX Runtime itself ships (NNAPI, CoreML). ``tflite_operators`` likewise for LiteRT builtins.
    """

    name: str
    device_class: str
    backends: tuple[str, ...]
    dtypes: tuple[str, ...]
    ram_mb: float
    storage_mb: float
    relative_compute: float
    active_power_w: float
    idle_power_w: float
    description: str = ""
    onnx_operators: tuple[str, ...] | None = None
    onnx_operator_table: str | None = None
    tflite_operators: tuple[str, ...] | None = None
    min_opset: int = 7
    max_opset: int = 99
    battery_wh: float | None = None
    spec_version: str = "1.0"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "profile") -> DeviceProfile:
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: a device profile must be a table, got {type(data).__name__}")
        doc = f"{source}"
        reject_unknown(doc, data, _FIELDS)
        check_version(doc, data, PROFILE_SPEC_MAJOR)
        name = get_str(doc, data, "name")
        doc = f"{source} (profile '{name}')"
        backends = get_str_list(doc, data, "backends")
        for b in backends:
            if b not in BACKENDS:
                raise SpecError(f"{doc}: unknown backend {b!r}; known: {', '.join(BACKENDS)}")
        if not backends:
            raise SpecError(f"{doc}: 'backends' must name at least one backend")
        dtypes = get_str_list(doc, data, "dtypes")
        for d in dtypes:
            if d not in DTYPES:
                raise SpecError(f"{doc}: unknown dtype {d!r}; known: {', '.join(DTYPES)}")
        onnx_ops = data.get("onnx_operators")
        table = data.get("onnx_operator_table")
        if onnx_ops is not None and table is not None:
            raise SpecError(f"{doc}: give either 'onnx_operators' or 'onnx_operator_table', not both")
        if table is not None:
            table = get_choice(doc, data, "onnx_operator_table", ORT_OPERATOR_TABLES)
        min_opset = get_int(doc, data, "min_opset", 7, minimum=1)
        max_opset = get_int(doc, data, "max_opset", 99, minimum=1)
        if min_opset > max_opset:
            raise SpecError(f"{doc}: min_opset {min_opset} is greater than max_opset {max_opset}")
        active = get_number(doc, data, "active_power_w", minimum=0.0)
        idle = get_number(doc, data, "idle_power_w", minimum=0.0)
        if idle > active:
            raise SpecError(f"{doc}: idle_power_w {idle} exceeds active_power_w {active}")
        battery = data.get("battery_wh")
        return cls(
            spec_version=str(data["spec_version"]),
            name=name,
            device_class=get_choice(doc, data, "device_class", DEVICE_CLASSES),
            description=get_str(doc, data, "description", ""),
            backends=tuple(backends),
            dtypes=tuple(dtypes),
            onnx_operators=None if onnx_ops is None else tuple(get_str_list(doc, data, "onnx_operators")),
            onnx_operator_table=table,
            tflite_operators=None
            if data.get("tflite_operators") is None
            else tuple(get_str_list(doc, data, "tflite_operators")),
            min_opset=min_opset,
            max_opset=max_opset,
            ram_mb=get_number(doc, data, "ram_mb", minimum=0.0),
            storage_mb=get_number(doc, data, "storage_mb", minimum=0.0),
            relative_compute=get_number(doc, data, "relative_compute", minimum=1e-9),
            active_power_w=active,
            idle_power_w=idle,
            battery_wh=None if battery is None else get_number(doc, data, "battery_wh", minimum=0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spec_version": self.spec_version,
            "name": self.name,
            "device_class": self.device_class,
            "description": self.description,
            "backends": list(self.backends),
            "dtypes": list(self.dtypes),
            "min_opset": self.min_opset,
            "max_opset": self.max_opset,
            "ram_mb": self.ram_mb,
            "storage_mb": self.storage_mb,
            "relative_compute": self.relative_compute,
            "active_power_w": self.active_power_w,
            "idle_power_w": self.idle_power_w,
        }
        if self.onnx_operators is not None:
            out["onnx_operators"] = list(self.onnx_operators)
        if self.onnx_operator_table is not None:
            out["onnx_operator_table"] = self.onnx_operator_table
        if self.tflite_operators is not None:
            out["tflite_operators"] = list(self.tflite_operators)
        if self.battery_wh is not None:
            out["battery_wh"] = self.battery_wh
        return out
