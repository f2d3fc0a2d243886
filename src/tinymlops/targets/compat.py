"""Can this model file run on that class of device? A static check, with every reason it cannot.

The check looks only at facts recorded at registration (:class:`~tinymlops.spec.ModelInfo`)
and the target's :class:`~tinymlops.spec.DeviceProfile`:

``backend``/``format``
    the model's format needs a runtime the device has (``onnx`` -> ``onnxruntime``,
    ``tflite`` -> ``litert``).
``operator``
    every operator is in the profile's list, or in the ONNX Runtime support table it names
    (see :mod:`tinymlops.targets.ort_tables`); one issue per unsupported operator. A profile with
    no list accepts every operator of that runtime (for ONNX: every op of a domain ONNX Runtime's
    CPU provider implements). Ops of a non-default ONNX domain must be listed with their domain.
``opset``
    ONNX only: the default-domain opset lies within ``[min_opset, max_opset]``.
``dtype``
    weight and compute dtypes, mapped to the profile vocabulary (float32 -> fp32,
    float16 -> fp16, int8/uint8 -> int8; int32/int64/uint32/uint64/bool/string and composite
    seq/map values are index or auxiliary types and always allowed), are in ``profile.dtypes``;
    one issue per unsupported dtype (bfloat16, float64, int16, uint16 have no profile equivalent).
``memory``
    the RAM estimate ``peak_activation_bytes + weight_bytes`` fits in ``ram_mb``.
``storage``
    the file fits in ``storage_mb``.

Latency on the target is an *estimate*: the host p50 divided by ``relative_compute``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.spec.model_info import ModelInfo
from tinymlops.spec.profile import DeviceProfile
from tinymlops.targets.ort_tables import canonical_op, load_table, split_op

#: which runtime runs which model format
FORMAT_BACKENDS: Mapping[str, str] = {"onnx": "onnxruntime", "tflite": "litert"}
#: numpy dtype -> profile dtype vocabulary
DTYPE_VOCABULARY: Mapping[str, str] = {"float32": "fp32", "float16": "fp16", "int8": "int8", "uint8": "int8"}
#: index / auxiliary dtypes every runtime handles (indices, shapes, masks, labels)
AUXILIARY_DTYPES = frozenset({"int32", "int64", "uint32", "uint64", "bool", "string"})
#: non-tensor ONNX values ("seq(...)", "map(...)", "optional(...)"), e.g. scikit-learn's ZipMap output
_COMPOSITE_PREFIXES = ("seq(", "map(", "optional(")
#: op domains ONNX Runtime's CPU execution provider implements ("" = ai.onnx)
ORT_CPU_DOMAINS = frozenset({"", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc"})
ISSUE_KINDS = ("backend", "format", "operator", "opset", "dtype", "memory", "storage")

LATENCY_BASIS = "estimate: host p50 × 1/relative_compute"
RAM_BASIS = "estimate: peak_activation_bytes + weight_bytes (static, batch 1; excludes runtime overhead)"

_MIB = 2**20


@dataclass(frozen=True)
class CompatIssue:
    """One reason a model cannot run on a target. ``subject`` names the offending thing
    (operator, dtype, backend, ...) so callers can group issues without parsing ``message``."""

    kind: str
    message: str
    subject: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ISSUE_KINDS:
            known = ", ".join(ISSUE_KINDS)
            raise ValueError(f"unknown compatibility issue kind {self.kind!r}; known: {known}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "message": self.message}


@dataclass(frozen=True)
class CompatReport:
    target: str
    compatible: bool
    issues: list[CompatIssue]
    ram_needed_bytes: int
    storage_needed_bytes: int
    estimated_latency_ms: float | None = None
    latency_basis: str = LATENCY_BASIS
    ram_basis: str = RAM_BASIS
    #: partial-support caveats ONNX Runtime's table lists for ops the model uses (not checked)
    caveats: dict[str, str] = field(default_factory=dict)

    def issues_of(self, kind: str) -> list[CompatIssue]:
        return [i for i in self.issues if i.kind == kind]

    def summary(self) -> str:
        if self.compatible:
            return f"compatible with {self.target}"
        return f"incompatible with {self.target}: " + "; ".join(i.message for i in self.issues)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "compatible": self.compatible,
            "issues": [i.to_dict() for i in self.issues],
            "estimated_latency_ms": self.estimated_latency_ms,
            "latency_basis": self.latency_basis,
            "ram_needed_bytes": self.ram_needed_bytes,
            "ram_basis": self.ram_basis,
            "storage_needed_bytes": self.storage_needed_bytes,
            "caveats": dict(sorted(self.caveats.items())),
        }


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", _MIB), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def _check_operators(info: ModelInfo, profile: DeviceProfile, caveats: dict[str, str]) -> list[CompatIssue]:
    issues: list[CompatIssue] = []
    ops = sorted(info.operators)
    if info.format == "onnx":
        if profile.onnx_operator_table is not None:
            table = load_table(profile.onnx_operator_table)
            for op in ops:
                if table.supports(op):
                    if table.note(op):
                        caveats[canonical_op(op)] = table.note(op)
                else:
                    issues.append(
                        CompatIssue(
                            "operator",
                            f"operator {canonical_op(op)} (used {info.operators[op]}×) is not in ONNX "
                            f"Runtime's {profile.onnx_operator_table} support table ({table.path.name})",
                            canonical_op(op),
                        )
                    )
            return issues
        if profile.onnx_operators is None:
            # every op of ONNX Runtime's CPU provider: ops of the domains it implements
            for op in ops:
                domain = split_op(op)[0]
                if domain not in ORT_CPU_DOMAINS:
                    issues.append(
                        CompatIssue(
                            "operator",
                            f"operator {canonical_op(op)} is in domain {domain!r}, which ONNX Runtime's CPU "
                            "provider does not implement (it needs a custom-op library)",
                            canonical_op(op),
                        )
                    )
            return issues
        allowed = {canonical_op(o) for o in profile.onnx_operators}
        source = f"profile {profile.name}'s onnx_operators"
        for op in ops:
            if canonical_op(op) not in allowed:
                issues.append(
                    CompatIssue(
                        "operator",
                        f"operator {canonical_op(op)} (used {info.operators[op]}×) is not in {source}",
                        canonical_op(op),
                    )
                )
        return issues
    if info.format == "tflite" and profile.tflite_operators is not None:
        allowed_tfl = set(profile.tflite_operators)
        for op in ops:
            if op not in allowed_tfl:
                issues.append(
                    CompatIssue(
                        "operator",
                        f"operator {op} (used {info.operators[op]}×) is not in profile {profile.name}'s "
                        "tflite_operators",
                        op,
                    )
                )
    return issues


def _check_dtypes(info: ModelInfo, profile: DeviceProfile) -> list[CompatIssue]:
    # profile dtype (or raw name if it has none) -> where it occurs, which source dtypes
    wanted: dict[str, dict[str, set[str]]] = {}
    for where, dtypes in (("weights", info.weight_dtypes), ("compute", info.compute_dtypes)):
        for dt in dtypes:
            if dt in AUXILIARY_DTYPES or dt.startswith(_COMPOSITE_PREFIXES):
                continue
            key = DTYPE_VOCABULARY.get(dt, dt)
            entry = wanted.setdefault(key, {"where": set(), "source": set()})
            entry["where"].add(where)
            entry["source"].add(dt)
    issues = []
    for key in sorted(wanted):
        if key in profile.dtypes:
            continue
        where = " and ".join(sorted(wanted[key]["where"]))
        source = ", ".join(sorted(wanted[key]["source"]))
        if key in DTYPE_VOCABULARY.values():
            msg = f"dtype {key} ({source} in {where}) is not supported; {profile.name} runs {', '.join(profile.dtypes)}"
        else:
            msg = (
                f"dtype {key} (in {where}) has no equivalent among fp32, fp16, int8; "
                f"{profile.name} runs {', '.join(profile.dtypes)}"
            )
        issues.append(CompatIssue("dtype", msg, key))
    return issues


def check_compatibility(
    info: ModelInfo, size_bytes: int, profile: DeviceProfile, *, host_latency_ms: float | None = None
) -> CompatReport:
    """Check a model (its ModelInfo and file size) against a target; report every issue found."""
    issues: list[CompatIssue] = []
    caveats: dict[str, str] = {}

    backend = FORMAT_BACKENDS.get(info.format)
    if backend is None:
        issues.append(
            CompatIssue(
                "format",
                f"model format {info.format!r} is not runnable by any known backend "
                f"(known formats: {', '.join(FORMAT_BACKENDS)})",
                info.format,
            )
        )
    elif backend not in profile.backends:
        issues.append(
            CompatIssue(
                "backend",
                f"{info.format} models need {backend}, but {profile.name} has only {', '.join(profile.backends)}",
                backend,
            )
        )
    else:
        issues.extend(_check_operators(info, profile, caveats))
        if (
            info.format == "onnx"
            and info.opset is not None
            and not (profile.min_opset <= info.opset <= profile.max_opset)
        ):
            issues.append(
                CompatIssue(
                    "opset",
                    f"ONNX opset {info.opset} is outside {profile.name}'s supported range "
                    f"[{profile.min_opset}, {profile.max_opset}]",
                    str(info.opset),
                )
            )
    issues.extend(_check_dtypes(info, profile))

    ram_needed = info.peak_activation_bytes + info.weight_bytes
    ram_available = profile.ram_mb * _MIB
    if ram_needed > ram_available:
        issues.append(
            CompatIssue(
                "memory",
                f"needs ~{_fmt_bytes(ram_needed)} of RAM ({RAM_BASIS.removeprefix('estimate: ')}), "
                f"{profile.name} has {_fmt_bytes(ram_available)}",
                "ram",
            )
        )
    storage_available = profile.storage_mb * _MIB
    if size_bytes > storage_available:
        issues.append(
            CompatIssue(
                "storage",
                f"model file is {_fmt_bytes(size_bytes)}, {profile.name} has {_fmt_bytes(storage_available)} "
                "of storage for models",
                "storage",
            )
        )

    estimate = None if host_latency_ms is None else host_latency_ms / profile.relative_compute
    return CompatReport(
        target=profile.name,
        compatible=not issues,
        issues=issues,
        ram_needed_bytes=ram_needed,
        storage_needed_bytes=size_bytes,
        estimated_latency_ms=estimate,
        caveats=caveats,
    )


__all__ = [
    "AUXILIARY_DTYPES",
    "DTYPE_VOCABULARY",
    "FORMAT_BACKENDS",
    "ISSUE_KINDS",
    "LATENCY_BASIS",
    "ORT_CPU_DOMAINS",
    "RAM_BASIS",
    "CompatIssue",
    "CompatReport",
    "check_compatibility",
]
