"""Telemetry batches: what a device uploads about the models it runs — never a raw input.

A batch holds one or more **windows**; a window is what one bundle served between two instants:
its **performance** (requests, errors, latency histogram, peak memory, energy), a **profile of its
inputs** (per feature a KLL quantile sketch plus count/mean/variance/min/max, the predicted-class
and confidence histograms) and the **privacy** applied to it (the mechanism per histogram, the
epsilon spent). The document (an unsigned request: unknown fields are refused everywhere)::

    {
      "spec_version": "1.0",
      "device_id": "<16 hex>",
      "created_at": 1718000060.5,          # the device's clock, seconds since the epoch
      "windows": [{                        # 1 ..= MAX_WINDOWS
        "bundle_id": "<32 hex>",
        "model": "digits:1/int8-static" | null,   # the model ref the bundle carries, if known
        "window_start": 1718000000.0, "window_end": 1718000060.0,
        "performance": {
          "requests": 120,                 # calls served, failed ones included
          "errors": 1,                     # calls that raised (<= requests)
          "latency": {                     # the successful calls (requests - errors of them); null if none
            "scheme": "log-1%-1us-1h",
            "buckets": [[412, 3], [413, 116]],   # [bucket index, count], indices increasing
            "min_s": 0.00121, "max_s": 0.00190
          },
          "peak_memory_bytes": 52428800 | null,
          "energy": {"method": "rapl" | "model", "joules_per_inference": 0.0031,
                     "inferences": 119} | null     # inferences = the calls that were measured
        },
        "inputs": {                         # null when the profile is off
          "rows": 119,                      # input rows profiled (a call of batch b adds b)
          "features": [{                    # <= MAX_FEATURES
            "kind": "element" | "channel" | "projection", "index": 0,
            "count": 119, "nonfinite": 0,   # count + nonfinite == rows
            "mean": 0.1, "variance": 0.02, "min": 0.0, "max": 1.0,   # null when count == 0
            "sketch": "<base64 of a serialized KLL float sketch whose n == count>"
          }, …],
          "projection": {"seed": 0, "dims": 8, "input_size": 64} | null,
          "predictions": 119,               # output rows profiled
          "classes": [3, 10, …] | null,     # predicted-class histogram (<= MAX_CLASSES bins)
          "confidence": [0, 0, …] | null    # CONFIDENCE_BINS equal bins over [0, 1]
        },
        "privacy": {
          "classes": {"mechanism": "randomized_response", "epsilon": 1.0} | null,
          "confidence": {"mechanism": "laplace", "epsilon": 1.0, "sensitivity": 2} | null,
          "epsilon_spent": 2.0,             # the sum of the epsilons above
          "withheld": ["classes"]           # histograms left out because the budget refused
        }
      }],
      "store": {                           # optional (1.1): the device's upload store, as it was
        "status": "ok" | "full" | "unwritable",
        "pending_windows": 3,              # windows waiting on the device after this batch
        "merged_windows": 0,               # windows merged into coarser ones since the last batch
        "dropped_windows": 0,              # windows lost since the last batch (only when merging could not help)
        "error": "disk I/O error" | null   # what went wrong, when status is not ok
      } | null
    }

Rules the parser enforces beyond types and ranges: a histogram is present exactly when the privacy
section names its mechanism (``none`` for the exact counts); exact and randomized-response class
counts add up to ``predictions``, exact confidence counts too; Laplace counts (the discrete Laplace
mechanism: integers, possibly negative) add up to anything; every sketch is checked structurally
(:mod:`tinymlops.spec.kll_format`) and its ``n`` must equal the feature's ``count``; (kind, index)
pairs are unique, projection features need a ``projection`` and index below its ``dims``.

The latency histogram uses the bucket scheme of
:class:`tinymlops.edge.agent.serving_stats.LatencyHistogram` (the constants below are the same and a
test holds them together): fixed log buckets from 1 µs to 1 h, each ``(1+1%)/(1-1%)`` wider than
the previous, so p50/p95/p99 are recoverable within 1% relative error.

:meth:`TelemetryBatch.to_bytes` is canonical JSON (sorted keys, no whitespace, no NaN, UTF-8), so a
signature over it is well-defined; :meth:`TelemetryBatch.from_bytes` refuses more than
``MAX_BATCH_BYTES``, duplicate keys and non-finite numbers before building anything. Standard
library only.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import check_version, reject_unknown
from tinymlops.spec.kll_format import kll_floats_n

TELEMETRY_MAJOR = 1
TELEMETRY_VERSION = "1.1"
STORE_STATUSES = ("ok", "full", "unwritable")
MAX_STORE_ERROR_CHARS = 200
MAX_WINDOWS = 64
MAX_FEATURES = 1024
#: decoded bytes of one sketch (a k=200 float sketch stays under 3 KiB whatever it has seen)
MAX_SKETCH_BYTES = 32 * 1024
MAX_CLASSES = 1024
CONFIDENCE_BINS = 10
MAX_BATCH_BYTES = 8 * 1024 * 1024
MAX_MODEL_REF_CHARS = 256
MAX_COUNT = 10**15
MAX_PROJECTION_DIMS = 64
MAX_EPSILON = 100.0
#: the latency bucket scheme of tinymlops.edge.agent.serving_stats (1% relative error, 1 µs .. 1 h)
LATENCY_SCHEME = "log-1%-1us-1h"
LATENCY_RELATIVE_ERROR = 0.01
LATENCY_GAMMA = (1.0 + LATENCY_RELATIVE_ERROR) / (1.0 - LATENCY_RELATIVE_ERROR)
LATENCY_LOW_S = 1e-6
LATENCY_HIGH_S = 3600.0
LATENCY_BUCKETS = math.ceil(math.log(LATENCY_HIGH_S / LATENCY_LOW_S) / math.log(LATENCY_GAMMA)) + 1
ENERGY_METHODS = ("rapl", "model")
FEATURE_KINDS = ("element", "channel", "projection")
MECHANISMS = ("none", "randomized_response", "laplace")
HISTOGRAMS = ("classes", "confidence")
#: which mechanisms each histogram may use
HISTOGRAM_MECHANISMS = {"classes": ("none", "randomized_response", "laplace"), "confidence": ("none", "laplace")}

DOC = "telemetry batch"
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_MODEL_REF = re.compile(r"^[\x21-\x7e]{1,256}$")
_MAX_SKETCH_B64 = 4 * ((MAX_SKETCH_BYTES + 2) // 3)


# --- field readers (each error names where in the document it is) ---------------------------
def _obj(where: str, value: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}: must be an object, got {type(value).__name__}")
    reject_unknown(where, value, allowed)
    return value


def _need(where: str, data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise SpecError(f"{where}: missing required field '{key}'")
    return data[key]


def _int(where: str, data: Mapping[str, Any], key: str, *, low: int = 0, high: int = MAX_COUNT) -> int:
    value = _need(where, data, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: field '{key}' must be an integer, got {value!r:.40}")
    if not low <= value <= high:
        raise SpecError(f"{where}: field '{key}' must be within [{low}, {high}], got {value}")
    return value


def _float(where: str, data: Mapping[str, Any], key: str, *, low: float | None = None) -> float:
    value = _need(where, data, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}: field '{key}' must be a number, got {value!r:.40}")
    value = float(value)
    if not math.isfinite(value):
        raise SpecError(f"{where}: field '{key}' must be finite, got {value}")
    if low is not None and value < low:
        raise SpecError(f"{where}: field '{key}' must be >= {low}, got {value}")
    return value


def _opt_float(where: str, data: Mapping[str, Any], key: str, *, low: float | None = None) -> float | None:
    return None if data.get(key) is None else _float(where, data, key, low=low)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# --- performance ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyBuckets:
    """The successful calls' latencies in the log-bucket scheme of ``LatencyHistogram``."""

    buckets: tuple[tuple[int, int], ...]
    min_s: float
    max_s: float
    scheme: str = LATENCY_SCHEME

    @property
    def count(self) -> int:
        return sum(n for _, n in self.buckets)

    def __post_init__(self) -> None:
        type(self).from_dict(self._raw())  # one set of rules for documents and direct construction

    def _raw(self) -> dict[str, Any]:
        return self.to_dict()

    @classmethod
    def from_dict(cls, data: Any, where: str = "latency") -> LatencyBuckets:
        data = _obj(where, data, {"scheme", "buckets", "min_s", "max_s"})
        scheme = _need(where, data, "scheme")
        if scheme != LATENCY_SCHEME:
            raise SpecError(f"{where}: unknown latency scheme {scheme!r:.40}; this build reads {LATENCY_SCHEME!r}")
        raw = _need(where, data, "buckets")
        if not isinstance(raw, list) or not raw or len(raw) > LATENCY_BUCKETS:
            raise SpecError(f"{where}: 'buckets' must be a non-empty list of at most {LATENCY_BUCKETS} [index, count]")
        buckets: list[tuple[int, int]] = []
        for item in raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or any(isinstance(v, bool) or not isinstance(v, int) for v in item)
            ):
                raise SpecError(f"{where}: each bucket must be [index, count] integers, got {item!r:.60}")
            index, n = item
            if not 0 <= index < LATENCY_BUCKETS:
                raise SpecError(f"{where}: bucket index {index} outside [0, {LATENCY_BUCKETS})")
            if not 1 <= n <= MAX_COUNT:
                raise SpecError(f"{where}: bucket {index} count must be within [1, {MAX_COUNT}], got {n}")
            if buckets and index <= buckets[-1][0]:
                raise SpecError(
                    f"{where}: bucket indices must be strictly increasing, got {index} after {buckets[-1][0]}"
                )
            buckets.append((index, n))
        lo, hi = _float(where, data, "min_s", low=0.0), _float(where, data, "max_s", low=0.0)
        if lo > hi:
            raise SpecError(f"{where}: min_s ({lo}) exceeds max_s ({hi})")
        return _build(cls, scheme=scheme, buckets=tuple(buckets), min_s=lo, max_s=hi)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "buckets": [[i, n] for i, n in self.buckets],
            "min_s": self.min_s,
            "max_s": self.max_s,
        }


@dataclass(frozen=True)
class Energy:
    """Energy per inference and how it was obtained (``rapl``: measured; ``model``: CPU time × power)."""

    method: str
    joules_per_inference: float
    inferences: int

    def __post_init__(self) -> None:
        type(self).from_dict(self._raw())  # one set of rules for documents and direct construction

    def _raw(self) -> dict[str, Any]:
        return self.to_dict()

    @classmethod
    def from_dict(cls, data: Any, where: str = "energy") -> Energy:
        data = _obj(where, data, {"method", "joules_per_inference", "inferences"})
        method = _need(where, data, "method")
        if method not in ENERGY_METHODS:
            raise SpecError(f"{where}: field 'method' must be one of {', '.join(ENERGY_METHODS)}, got {method!r:.40}")
        return _build(
            cls,
            method=method,
            joules_per_inference=_float(where, data, "joules_per_inference", low=0.0),
            inferences=_int(where, data, "inferences", low=1),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "joules_per_inference": self.joules_per_inference, "inferences": self.inferences}


@dataclass(frozen=True)
class Performance:
    requests: int
    errors: int = 0
    latency: LatencyBuckets | None = None
    peak_memory_bytes: int | None = None
    energy: Energy | None = None

    def __post_init__(self) -> None:
        type(self).from_dict(self._raw())  # one set of rules for documents and direct construction

    def _raw(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency": self.latency,
            "peak_memory_bytes": self.peak_memory_bytes,
            "energy": self.energy,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "performance") -> Performance:
        data = _obj(where, data, {"requests", "errors", "latency", "peak_memory_bytes", "energy"})
        requests = _int(where, data, "requests")
        errors = _int(where, data, "errors")
        if errors > requests:
            raise SpecError(f"{where}: errors ({errors}) exceeds requests ({requests})")
        latency = None
        if data.get("latency") is not None:
            latency = data["latency"]
            if not isinstance(latency, LatencyBuckets):
                latency = LatencyBuckets.from_dict(latency, f"{where}.latency")
            if latency.count != requests - errors:
                raise SpecError(
                    f"{where}.latency: holds {latency.count} calls, but {requests - errors} succeeded "
                    "(requests - errors)"
                )
        elif requests > errors:
            raise SpecError(f"{where}: field 'latency' is required when successful calls were served")
        memory = data.get("peak_memory_bytes")
        if memory is not None:
            memory = _int(where, data, "peak_memory_bytes", high=2**62)
        energy = data.get("energy")
        if energy is not None and not isinstance(energy, Energy):
            energy = Energy.from_dict(energy, f"{where}.energy")
        if energy is not None and energy.inferences > requests:
            raise SpecError(f"{where}.energy: measured {energy.inferences} inferences of {requests} requests")
        return _build(cls, requests=requests, errors=errors, latency=latency, peak_memory_bytes=memory, energy=energy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency": None if self.latency is None else self.latency.to_dict(),
            "peak_memory_bytes": self.peak_memory_bytes,
            "energy": None if self.energy is None else self.energy.to_dict(),
        }


# --- inputs ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSummary:
    """One input feature: its moments and its KLL sketch (bytes, as DataSketches serializes them)."""

    kind: str
    index: int
    count: int
    sketch: bytes
    nonfinite: int = 0
    mean: float | None = None
    variance: float | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        type(self).from_dict(self._raw())  # one set of rules for documents and direct construction

    def _raw(self) -> dict[str, Any]:
        return {**self.to_dict(), "sketch": self.sketch}

    @classmethod
    def from_dict(cls, data: Any, where: str = "feature") -> FeatureSummary:
        data = _obj(where, data, {"kind", "index", "count", "nonfinite", "mean", "variance", "min", "max", "sketch"})
        kind = _need(where, data, "kind")
        if kind not in FEATURE_KINDS:
            raise SpecError(f"{where}: field 'kind' must be one of {', '.join(FEATURE_KINDS)}, got {kind!r:.40}")
        index = _int(where, data, "index", high=2**31)
        count = _int(where, data, "count")
        nonfinite = _int(where, data, "nonfinite")
        moments = {key: _opt_float(where, data, key) for key in ("mean", "variance", "min", "max")}
        if count == 0:
            if any(v is not None for v in moments.values()):
                raise SpecError(f"{where}: mean, variance, min and max must be null when count is 0")
        else:
            missing = [key for key, v in moments.items() if v is None]
            if missing:
                raise SpecError(f"{where}: {', '.join(missing)} required when count > 0")
            lo, hi, mean, var = moments["min"], moments["max"], moments["mean"], moments["variance"]
            assert lo is not None and hi is not None and mean is not None and var is not None
            if lo > hi:
                raise SpecError(f"{where}: min ({lo}) exceeds max ({hi})")
            slack = 1e-6 * max(1.0, abs(lo), abs(hi))  # the running mean may round just past an extreme
            if not lo - slack <= mean <= hi + slack:
                raise SpecError(f"{where}: mean ({mean}) is outside [min, max] = [{lo}, {hi}]")
            if var < 0:
                raise SpecError(f"{where}: variance must be >= 0, got {var}")
        sketch = _need(where, data, "sketch")
        if not isinstance(sketch, bytes):
            if not isinstance(sketch, str) or len(sketch) > _MAX_SKETCH_B64:
                raise SpecError(f"{where}: 'sketch' must be base64 of at most {MAX_SKETCH_BYTES} bytes")
            try:
                sketch = base64.b64decode(sketch, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise SpecError(f"{where}: 'sketch' is not valid base64 ({exc})") from exc
        if len(sketch) > MAX_SKETCH_BYTES:
            raise SpecError(f"{where}: sketch is {len(sketch)} bytes, more than {MAX_SKETCH_BYTES}")
        n = kll_floats_n(sketch, f"{where}.sketch")
        if n != count:
            raise SpecError(f"{where}: the sketch has seen {n} values, but count is {count}")
        return _build(cls, kind=kind, index=index, count=count, nonfinite=nonfinite, sketch=sketch, **moments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "count": self.count,
            "nonfinite": self.nonfinite,
            "mean": self.mean,
            "variance": self.variance,
            "min": self.min,
            "max": self.max,
            "sketch": base64.b64encode(self.sketch).decode("ascii"),
        }


@dataclass(frozen=True)
class Projection:
    """The fixed random projection the ``projection`` features come from (same seed, same matrix)."""

    seed: int
    dims: int
    input_size: int

    def __post_init__(self) -> None:
        type(self).from_dict(self._raw())  # one set of rules for documents and direct construction

    def _raw(self) -> dict[str, Any]:
        return self.to_dict()

    @classmethod
    def from_dict(cls, data: Any, where: str = "projection") -> Projection:
        data = _obj(where, data, {"seed", "dims", "input_size"})
        return _build(
            cls,
            seed=_int(where, data, "seed", high=2**63 - 1),
            dims=_int(where, data, "dims", low=1, high=MAX_PROJECTION_DIMS),
            input_size=_int(where, data, "input_size", low=1, high=2**40),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "dims": self.dims, "input_size": self.input_size}


def _histogram(where: str, data: Mapping[str, Any], key: str, *, size: int | None) -> tuple[int, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    limit = size if size is not None else MAX_CLASSES
    if not isinstance(value, list) or not value or len(value) > limit or (size is not None and len(value) != size):
        wanted = f"exactly {size}" if size is not None else f"1 to {MAX_CLASSES}"
        raise SpecError(f"{where}: '{key}' must be a list of {wanted} integer counts")
    for n in value:
        if isinstance(n, bool) or not isinstance(n, int) or not -MAX_COUNT <= n <= MAX_COUNT:
            raise SpecError(f"{where}: '{key}' counts must be integers within ±{MAX_COUNT}, got {n!r:.40}")
    return tuple(value)


@dataclass(frozen=True)
class InputsSummary:
    """The profile of a window's inputs and outputs (never the inputs themselves)."""

    rows: int
    features: tuple[FeatureSummary, ...] = ()
    projection: Projection | None = None
    predictions: int = 0
    classes: tuple[int, ...] | None = None
    confidence: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        type(self).from_dict(self._raw())  # one set of rules for documents and direct construction

    def _raw(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "features": list(self.features),
            "projection": self.projection,
            "predictions": self.predictions,
            "classes": None if self.classes is None else list(self.classes),
            "confidence": None if self.confidence is None else list(self.confidence),
        }

    def feature(self, kind: str, index: int) -> FeatureSummary:
        for f in self.features:
            if (f.kind, f.index) == (kind, index):
                return f
        raise KeyError((kind, index))

    @classmethod
    def from_dict(cls, data: Any, where: str = "inputs") -> InputsSummary:
        data = _obj(where, data, {"rows", "features", "projection", "predictions", "classes", "confidence"})
        rows = _int(where, data, "rows")
        raw_features = _need(where, data, "features")
        if not isinstance(raw_features, list | tuple) or len(raw_features) > MAX_FEATURES:
            raise SpecError(f"{where}: 'features' must be a list of at most {MAX_FEATURES} features")
        projection = data.get("projection")
        if projection is not None and not isinstance(projection, Projection):
            projection = Projection.from_dict(projection, f"{where}.projection")
        features: list[FeatureSummary] = []
        seen: set[tuple[str, int]] = set()
        for i, raw in enumerate(raw_features):
            feat = raw if isinstance(raw, FeatureSummary) else FeatureSummary.from_dict(raw, f"{where}.features[{i}]")
            key = (feat.kind, feat.index)
            if key in seen:
                raise SpecError(f"{where}.features[{i}]: a second {feat.kind} feature {feat.index}")
            seen.add(key)
            if feat.count + feat.nonfinite != rows:
                raise SpecError(
                    f"{where}.features[{i}]: count + nonfinite = {feat.count + feat.nonfinite}, "
                    f"but {rows} rows were profiled"
                )
            if feat.kind == "projection" and (projection is None or feat.index >= projection.dims):
                raise SpecError(
                    f"{where}.features[{i}]: projection feature {feat.index} without a projection that has it"
                )
            features.append(feat)
        predictions = _int(where, data, "predictions")
        classes = _histogram(where, data, "classes", size=None)
        confidence = _histogram(where, data, "confidence", size=CONFIDENCE_BINS)
        return _build(
            cls,
            rows=rows,
            features=tuple(features),
            projection=projection,
            predictions=predictions,
            classes=classes,
            confidence=confidence,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "features": [f.to_dict() for f in self.features],
            "projection": None if self.projection is None else self.projection.to_dict(),
            "predictions": self.predictions,
            "classes": None if self.classes is None else list(self.classes),
            "confidence": None if self.confidence is None else list(self.confidence),
        }


# --- privacy --------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistogramPrivacy:
    """How one histogram was released: exact (``none``), k-ary randomized response, or the discrete
    Laplace mechanism with L1 ``sensitivity`` (``epsilon`` is null exactly for ``none``)."""

    mechanism: str
    epsilon: float | None = None
    sensitivity: int | None = None

    def __post_init__(self) -> None:
        type(self).from_dict(self._raw())  # one set of rules for documents and direct construction

    def _raw(self) -> dict[str, Any]:
        return self.to_dict()

    @classmethod
    def from_dict(cls, data: Any, where: str = "histogram privacy") -> HistogramPrivacy:
        data = _obj(where, data, {"mechanism", "epsilon", "sensitivity"})
        mechanism = _need(where, data, "mechanism")
        if mechanism not in MECHANISMS:
            raise SpecError(f"{where}: 'mechanism' must be one of {', '.join(MECHANISMS)}, got {mechanism!r:.40}")
        epsilon = _opt_float(where, data, "epsilon")
        sensitivity = data.get("sensitivity")
        if mechanism == "none":
            if epsilon is not None or sensitivity is not None:
                raise SpecError(f"{where}: mechanism 'none' takes no epsilon or sensitivity")
        else:
            if epsilon is None or not 0.0 < epsilon <= MAX_EPSILON:
                raise SpecError(f"{where}: mechanism '{mechanism}' needs an epsilon within (0, {MAX_EPSILON}]")
            if mechanism == "laplace":
                sensitivity = _int(where, data, "sensitivity", low=1, high=MAX_CLASSES)
            elif sensitivity is not None:
                raise SpecError(f"{where}: mechanism '{mechanism}' takes no sensitivity")
        return _build(cls, mechanism=mechanism, epsilon=epsilon, sensitivity=sensitivity)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mechanism": self.mechanism, "epsilon": self.epsilon}
        if self.sensitivity is not None:
            out["sensitivity"] = self.sensitivity
        return out


@dataclass(frozen=True)
class Privacy:
    classes: HistogramPrivacy | None = None
    confidence: HistogramPrivacy | None = None
    epsilon_spent: float = 0.0
    withheld: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        type(self).from_dict(self._raw())  # one set of rules for documents and direct construction

    def _raw(self) -> dict[str, Any]:
        return {
            "classes": self.classes,
            "confidence": self.confidence,
            "epsilon_spent": self.epsilon_spent,
            "withheld": list(self.withheld),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "privacy") -> Privacy:
        data = _obj(where, data, {"classes", "confidence", "epsilon_spent", "withheld"})
        out: dict[str, Any] = {}
        for name in HISTOGRAMS:
            value = data.get(name)
            if value is not None and not isinstance(value, HistogramPrivacy):
                value = HistogramPrivacy.from_dict(value, f"{where}.{name}")
            if value is not None and value.mechanism not in HISTOGRAM_MECHANISMS[name]:
                raise SpecError(f"{where}.{name}: mechanism '{value.mechanism}' is not used for this histogram")
            out[name] = value
        spent = _float(where, data, "epsilon_spent", low=0.0)
        total = math.fsum(p.epsilon or 0.0 for p in (out["classes"], out["confidence"]) if p is not None)
        if not _close(spent, total):
            raise SpecError(f"{where}: epsilon_spent ({spent}) is not the sum of the histograms' epsilons ({total})")
        withheld = data.get("withheld", [])
        if (
            not isinstance(withheld, list | tuple)
            or any(w not in HISTOGRAMS for w in withheld)
            or len(set(withheld)) != len(withheld)
        ):
            raise SpecError(f"{where}: 'withheld' must list distinct histogram names out of {', '.join(HISTOGRAMS)}")
        for name in withheld:
            if out[name] is not None:
                raise SpecError(f"{where}: histogram '{name}' is both released and withheld")
        return _build(cls, epsilon_spent=spent, withheld=tuple(withheld), **out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": None if self.classes is None else self.classes.to_dict(),
            "confidence": None if self.confidence is None else self.confidence.to_dict(),
            "epsilon_spent": self.epsilon_spent,
            "withheld": list(self.withheld),
        }


# --- window and batch -----------------------------------------------------------------------
@dataclass(frozen=True)
class TelemetryWindow:
    bundle_id: str
    window_start: float
    window_end: float
    performance: Performance
    inputs: InputsSummary | None = None
    privacy: Privacy = field(default_factory=Privacy)
    model: str | None = None

    def __post_init__(self) -> None:
        TelemetryWindow.from_dict(self._fields())  # one set of rules for documents and direct construction

    def _fields(self) -> dict[str, Any]:
        # the parts as objects: from_dict takes them as they are (already checked when they were built)
        return {
            "bundle_id": self.bundle_id,
            "model": self.model,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "performance": self.performance,
            "inputs": self.inputs,
            "privacy": self.privacy,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "window") -> TelemetryWindow:
        data = _obj(
            where, data, {"bundle_id", "model", "window_start", "window_end", "performance", "inputs", "privacy"}
        )
        bundle_id = _need(where, data, "bundle_id")
        if not isinstance(bundle_id, str) or not _HEX32.match(bundle_id):
            raise SpecError(f"{where}: field 'bundle_id' must be 32 lower-case hex digits, got {bundle_id!r:.80}")
        model = data.get("model")
        if model is not None and (not isinstance(model, str) or not _MODEL_REF.match(model)):
            raise SpecError(
                f"{where}: field 'model' must be null or a model ref of printable characters, got {model!r:.80}"
            )
        start, end = _float(where, data, "window_start", low=0.0), _float(where, data, "window_end", low=0.0)
        if end < start:
            raise SpecError(f"{where}: window_end ({end}) is before window_start ({start})")
        performance = _need(where, data, "performance")
        if not isinstance(performance, Performance):
            performance = Performance.from_dict(performance, f"{where}.performance")
        inputs = data.get("inputs")
        if inputs is not None and not isinstance(inputs, InputsSummary):
            inputs = InputsSummary.from_dict(inputs, f"{where}.inputs")
        privacy = data.get("privacy", Privacy())
        if not isinstance(privacy, Privacy):
            privacy = Privacy.from_dict(privacy, f"{where}.privacy")
        _check_histograms(where, inputs, privacy)
        return _build(
            cls,
            bundle_id=bundle_id,
            model=model,
            window_start=start,
            window_end=end,
            performance=performance,
            inputs=inputs,
            privacy=privacy,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id,
            "model": self.model,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "performance": self.performance.to_dict(),
            "inputs": None if self.inputs is None else self.inputs.to_dict(),
            "privacy": self.privacy.to_dict(),
        }


def _check_histograms(where: str, inputs: InputsSummary | None, privacy: Privacy) -> None:
    for name in HISTOGRAMS:
        counts = None if inputs is None else getattr(inputs, name)
        mech: HistogramPrivacy | None = getattr(privacy, name)
        if (counts is None) != (mech is None):
            raise SpecError(
                f"{where}: histogram '{name}' and privacy.{name} must be both present or both absent "
                "(an exact histogram says mechanism 'none')"
            )
        if counts is None or mech is None or inputs is None:
            continue
        if mech.mechanism == "laplace":
            continue  # noisy counts: any integers
        if any(n < 0 for n in counts):
            raise SpecError(f"{where}: histogram '{name}' released with '{mech.mechanism}' has a negative count")
        if sum(counts) != inputs.predictions:
            raise SpecError(
                f"{where}: histogram '{name}' counts {sum(counts)} predictions, but {inputs.predictions} were profiled"
            )


@dataclass(frozen=True)
class StoreStatus:
    """The device's upload store when the batch was made: a full or unwritable store is a condition
    the server shows (predictions go on; windows may have been merged or, at worst, dropped)."""

    status: str = "ok"
    pending_windows: int = 0
    merged_windows: int = 0
    dropped_windows: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        type(self).from_dict(self.to_dict())  # one set of rules for documents and direct construction

    @classmethod
    def from_dict(cls, data: Any, where: str = f"{DOC}: store") -> StoreStatus:
        data = _obj(where, data, {"status", "pending_windows", "merged_windows", "dropped_windows", "error"})
        status = _need(where, data, "status")
        if status not in STORE_STATUSES:
            raise SpecError(f"{where}: field 'status' must be one of {', '.join(STORE_STATUSES)}, got {status!r:.40}")
        error = data.get("error")
        if error is not None and (not isinstance(error, str) or len(error) > MAX_STORE_ERROR_CHARS):
            raise SpecError(f"{where}: field 'error' must be null or a string of at most {MAX_STORE_ERROR_CHARS}")
        if status == "ok" and error is not None:
            raise SpecError(f"{where}: an 'ok' store has no error")
        return _build(
            cls,
            status=status,
            pending_windows=_int(where, data, "pending_windows"),
            merged_windows=_int(where, data, "merged_windows"),
            dropped_windows=_int(where, data, "dropped_windows"),
            error=error,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pending_windows": self.pending_windows,
            "merged_windows": self.merged_windows,
            "dropped_windows": self.dropped_windows,
            "error": self.error,
        }


@dataclass(frozen=True)
class TelemetryBatch:
    device_id: str
    created_at: float
    windows: tuple[TelemetryWindow, ...]
    spec_version: str = TELEMETRY_VERSION
    store: StoreStatus | None = None

    def __post_init__(self) -> None:
        doc: dict[str, Any] = {
            "spec_version": self.spec_version,
            "device_id": self.device_id,
            "created_at": self.created_at,
            "windows": list(self.windows),
        }
        if self.store is not None:
            doc["store"] = self.store
        TelemetryBatch.from_dict(doc)

    @classmethod
    def from_dict(cls, data: Any) -> TelemetryBatch:
        data = _obj(DOC, data, {"spec_version", "device_id", "created_at", "windows", "store"})
        version = check_version(DOC, data, TELEMETRY_MAJOR)
        device_id = _need(DOC, data, "device_id")
        if not isinstance(device_id, str) or not _HEX16.match(device_id):
            raise SpecError(f"{DOC}: field 'device_id' must be 16 lower-case hex digits, got {device_id!r:.80}")
        created_at = _float(DOC, data, "created_at", low=0.0)
        raw = _need(DOC, data, "windows")
        if not isinstance(raw, list | tuple) or not 1 <= len(raw) <= MAX_WINDOWS:
            raise SpecError(f"{DOC}: 'windows' must be a list of 1 to {MAX_WINDOWS} windows")
        windows = tuple(
            w if isinstance(w, TelemetryWindow) else TelemetryWindow.from_dict(w, f"{DOC}: windows[{i}]")
            for i, w in enumerate(raw)
        )
        store = data.get("store")
        if store is not None and not isinstance(store, StoreStatus):
            store = StoreStatus.from_dict(store)
        return _build(
            cls, spec_version=version, device_id=device_id, created_at=created_at, windows=windows, store=store
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spec_version": self.spec_version,
            "device_id": self.device_id,
            "created_at": self.created_at,
            "windows": [w.to_dict() for w in self.windows],
        }
        if self.store is not None:  # absent, not null, so a 1.0 batch stays byte-for-byte what it was
            out["store"] = self.store.to_dict()
        return out

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, no whitespace, no NaN, UTF-8 — what a signature covers."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> TelemetryBatch:
        """Parse a batch received as bytes (size, encoding, duplicate keys and numbers checked first)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SpecError(f"{DOC}: expected bytes, got {type(data).__name__}")
        if len(data) > MAX_BATCH_BYTES:
            raise SpecError(f"{DOC}: {len(data)} bytes is more than the {MAX_BATCH_BYTES} a batch may have")
        try:
            text = bytes(data).decode("utf-8")
            doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except SpecError:
            raise
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SpecError(f"{DOC}: not valid JSON ({type(exc).__name__}: {str(exc)[:120]})") from exc
        return cls.from_dict(doc)


def canonical_json(doc: Any) -> bytes:
    """Sorted keys, no whitespace, no NaN/Infinity, UTF-8."""
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
    except ValueError as exc:
        raise SpecError(f"{DOC}: cannot be written as canonical JSON ({exc})") from exc


def _no_duplicates(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"{DOC}: duplicate key {key!r:.40} in a JSON object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise SpecError(f"{DOC}: {name} is not a number JSON allows")


def _build(cls: type[Any], **values: Any) -> Any:
    obj = object.__new__(cls)
    for key, value in values.items():
        object.__setattr__(obj, key, value)
    return obj


__all__ = [
    "CONFIDENCE_BINS",
    "ENERGY_METHODS",
    "FEATURE_KINDS",
    "HISTOGRAMS",
    "LATENCY_BUCKETS",
    "LATENCY_SCHEME",
    "MAX_BATCH_BYTES",
    "MAX_CLASSES",
    "MAX_FEATURES",
    "MAX_SKETCH_BYTES",
    "MAX_WINDOWS",
    "MECHANISMS",
    "STORE_STATUSES",
    "TELEMETRY_VERSION",
    "Energy",
    "FeatureSummary",
    "HistogramPrivacy",
    "InputsSummary",
    "LatencyBuckets",
    "Performance",
    "Privacy",
    "Projection",
    "StoreStatus",
    "TelemetryBatch",
    "TelemetryWindow",
    "canonical_json",
]
