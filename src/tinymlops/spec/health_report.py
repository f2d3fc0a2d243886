"""What a device's agent reports about the bundle it runs (``POST /v1/devices/me/health``).

One report covers one window of predictions served by one bundle — the numbers a rollout's health
gate judges (error rate, latency against the previous release) and the dashboard charts per device
class. No inputs and no outputs are ever in it. The document (an unsigned request: unknown fields
are refused)::

    {
      "spec_version": "1.0",
      "bundle_id": "<32 hex>",          # the bundle that served the predictions
      "window_start": 1718000000.0,     # the device's clock, seconds since the epoch
      "window_end": 1718000060.0,       # >= window_start
      "predictions": 120,               # calls served (including the failed ones)
      "errors": 0,                      # calls that raised (<= predictions)
      "latency_ms": {"p50": 1.2, "p95": 2.0, "p99": 3.1, "max": 4.0},  # null when predictions == 0
      "context": {…} | null,            # the device's moment (tinymlops.spec.context), optional
      "at": 1718000060.5                # when the report was made
    }

Percentiles are of the successful calls' end-to-end latency in milliseconds and non-decreasing
(``p50 <= p95 <= p99 <= max``). Standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import check_version, get_int, get_number, reject_unknown
from tinymlops.spec.context import DeviceContext

HEALTH_REPORT_MAJOR = 1
HEALTH_REPORT_VERSION = "1.0"
LATENCY_KEYS = ("p50", "p95", "p99", "max")
#: a report covers at most this many calls (a device sends one per poll, far fewer)
MAX_PREDICTIONS = 10**12
#: latencies above an hour are not latencies
MAX_LATENCY_MS = 3_600_000.0
DOC = "health report"

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_FIELDS = {
    "spec_version",
    "bundle_id",
    "window_start",
    "window_end",
    "predictions",
    "errors",
    "latency_ms",
    "context",
    "at",
}


def _seconds(data: Mapping[str, Any], key: str) -> float:
    value = get_number(DOC, data, key, minimum=0.0)
    if not math.isfinite(value):
        raise SpecError(f"{DOC}: field '{key}' must be a finite number of seconds")
    return float(value)


def _latency(value: Any, predictions: int, errors: int) -> dict[str, float] | None:
    if value is None:
        if predictions > errors:
            raise SpecError(f"{DOC}: field 'latency_ms' is required when successful predictions were served")
        return None
    if not isinstance(value, Mapping):
        raise SpecError(f"{DOC}: field 'latency_ms' must be null or an object with {', '.join(LATENCY_KEYS)}")
    reject_unknown(f"{DOC} latency_ms", value, set(LATENCY_KEYS))
    out: dict[str, float] = {}
    for key in LATENCY_KEYS:
        if key not in value:
            raise SpecError(f"{DOC}: latency_ms is missing '{key}'")
        ms = value[key]
        if isinstance(ms, bool) or not isinstance(ms, int | float) or not math.isfinite(ms):
            raise SpecError(f"{DOC}: latency_ms '{key}' must be a finite number of milliseconds, got {ms!r:.40}")
        if not 0.0 <= ms <= MAX_LATENCY_MS:
            raise SpecError(f"{DOC}: latency_ms '{key}' must be within [0, {MAX_LATENCY_MS:.0f}], got {ms}")
        out[key] = float(ms)
    ordered = [out[k] for k in LATENCY_KEYS]
    if any(a > b for a, b in pairwise(ordered)):
        raise SpecError(f"{DOC}: latency_ms must be non-decreasing p50 <= p95 <= p99 <= max, got {out}")
    return out


@dataclass(frozen=True)
class HealthReport:
    bundle_id: str
    window_start: float
    window_end: float
    predictions: int
    errors: int = 0
    latency_ms: Mapping[str, float] | None = None
    context: DeviceContext | None = None
    at: float = 0.0
    spec_version: str = HEALTH_REPORT_VERSION

    def __post_init__(self) -> None:
        HealthReport.from_dict(self.to_dict())  # one set of rules for documents and direct construction

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.predictions if self.predictions else None

    @classmethod
    def from_dict(cls, data: Any) -> HealthReport:
        if not isinstance(data, Mapping):
            raise SpecError(f"{DOC}: must be an object, got {type(data).__name__}")
        reject_unknown(DOC, data, _FIELDS)
        version = check_version(DOC, data, HEALTH_REPORT_MAJOR)
        bundle_id = data.get("bundle_id")
        if not isinstance(bundle_id, str) or not _HEX32.match(bundle_id):
            raise SpecError(f"{DOC}: field 'bundle_id' must be 32 lower-case hex digits, got {bundle_id!r:.80}")
        start, end = _seconds(data, "window_start"), _seconds(data, "window_end")
        if end < start:
            raise SpecError(f"{DOC}: window_end ({end}) is before window_start ({start})")
        predictions = get_int(DOC, data, "predictions", minimum=0)
        errors = get_int(DOC, data, "errors", 0, minimum=0)
        if predictions > MAX_PREDICTIONS:
            raise SpecError(f"{DOC}: field 'predictions' must be at most {MAX_PREDICTIONS}, got {predictions}")
        if errors > predictions:
            raise SpecError(f"{DOC}: errors ({errors}) exceeds predictions ({predictions})")
        latency = _latency(data.get("latency_ms"), predictions, errors)
        raw_context = data.get("context")
        if raw_context is None or isinstance(raw_context, DeviceContext):
            context = raw_context
        else:
            try:
                context = DeviceContext.from_dict(raw_context)
            except SpecError as exc:
                raise SpecError(f"{DOC}: field 'context': {exc.message}") from exc
        at = _seconds(data, "at") if "at" in data else 0.0
        report = object.__new__(cls)
        for key, value in (
            ("spec_version", version),
            ("bundle_id", bundle_id),
            ("window_start", start),
            ("window_end", end),
            ("predictions", predictions),
            ("errors", errors),
            ("latency_ms", latency),
            ("context", context),
            ("at", at),
        ):
            object.__setattr__(report, key, value)
        return report

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": self.spec_version,
            "bundle_id": self.bundle_id,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "predictions": self.predictions,
            "errors": self.errors,
            "latency_ms": None if self.latency_ms is None else dict(self.latency_ms),
            "context": None if self.context is None else self.context.to_dict(),
            "at": self.at,
        }


__all__ = ["HEALTH_REPORT_VERSION", "LATENCY_KEYS", "HealthReport"]
