"""What a simulated fleet counts: per device, then per profile and in total.

Per device (:class:`DeviceStats`, written by its own thread, read as a plain dict by
:meth:`DeviceStats.to_dict` — what crosses a process boundary on Ray): agent cycles by action
(``installed`` ones are the installs), predictions served (and how many while offline),
*refusals* (calls the device could not serve: no bundle installed yet, or the runtime refused the
call as a usage error), prediction *errors* (calls that raised anything else — what the agent's
health watch counts), the digits answered right,
a latency histogram, the time spent per network state and flat, the battery, the bundle it runs.
:func:`summarize` folds those dicts into per-profile rows and a total row.

Latencies go into a fixed log-spaced histogram (:class:`LatencyHistogram`): a few hundred bytes
per device however long it runs, and histograms add, so percentiles over a profile are exact up to
the bucket width (~19%).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: bucket upper bounds in ms: 0.01 ms .. ~100 s, four per doubling
BUCKETS_MS: tuple[float, ...] = tuple(0.01 * 2 ** (i / 4) for i in range(94))


class LatencyHistogram:
    def __init__(self, counts: Sequence[int] | None = None) -> None:
        self.counts = list(counts) if counts is not None else [0] * (len(BUCKETS_MS) + 1)
        if len(self.counts) != len(BUCKETS_MS) + 1:
            raise ValueError(f"a latency histogram has {len(BUCKETS_MS) + 1} buckets, got {len(self.counts)}")

    def add(self, ms: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_MS, ms)] += 1

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q``-quantile (None when empty)."""
        n = self.total
        if n == 0:
            return None
        rank = max(1, math.ceil(q * n))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return BUCKETS_MS[i] if i < len(BUCKETS_MS) else math.inf
        return math.inf  # pragma: no cover - unreachable: seen reaches n

    def to_list(self) -> list[int]:
        return list(self.counts)


class DeviceStats:
    """One simulated device's counters (thread-safe: its device thread writes, anyone reads)."""

    def __init__(self, name: str, entry: str, profile: str) -> None:
        self.name = name
        self.entry = entry
        self.profile = profile
        self.device_id: str | None = None
        self.state = "starting"
        self.cycles: dict[str, int] = {}
        self.predictions = 0
        self.offline_predictions = 0
        self.refused = 0
        self.errors = 0
        self.labelled = 0
        self.correct = 0
        self.latency = LatencyHistogram()
        self.bundle_id: str | None = None
        self.ref: str | None = None
        self.workload: str | None = None
        self.connect_attempts = 0
        self.context: dict[str, Any] = {}
        self.last_error: str | None = None
        self.reports_pending = 0
        self.reports_sent = {"install": 0, "health": 0}
        self._lock = threading.Lock()

    def __enter__(self) -> DeviceStats:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name,
                "entry": self.entry,
                "profile": self.profile,
                "device_id": self.device_id,
                "state": self.state,
                "cycles": dict(self.cycles),
                "installs": self.cycles.get("installed", 0),
                "predictions": self.predictions,
                "offline_predictions": self.offline_predictions,
                "refused": self.refused,
                "errors": self.errors,
                "labelled": self.labelled,
                "correct": self.correct,
                "accuracy": (self.correct / self.labelled) if self.labelled else None,
                "latency_hist": self.latency.to_list(),
                "bundle_id": self.bundle_id,
                "ref": self.ref,
                "workload": self.workload,
                "connect_attempts": self.connect_attempts,
                "context": dict(self.context),
                "last_error": self.last_error,
                "reports_pending": self.reports_pending,
                "reports_sent": dict(self.reports_sent),
            }


def _sum(devices: Iterable[Mapping[str, Any]], key: str) -> int:
    return sum(int(d.get(key) or 0) for d in devices)


def _row(name: str, devices: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    hist = LatencyHistogram()
    for d in devices:
        hist.merge(LatencyHistogram(d["latency_hist"]))
    labelled, correct = _sum(devices, "labelled"), _sum(devices, "correct")
    net: dict[str, float] = {}
    for d in devices:
        for k, v in (d.get("context", {}).get("network_s") or {}).items():
            net[k] = net.get(k, 0.0) + float(v)
    batteries = [d["context"]["battery"] for d in devices if d.get("context", {}).get("battery") is not None]
    cycles: dict[str, int] = {}
    for d in devices:
        for k, v in d["cycles"].items():
            cycles[k] = cycles.get(k, 0) + int(v)
    states: dict[str, int] = {}
    for d in devices:
        states[d["state"]] = states.get(d["state"], 0) + 1
    p50, p95 = hist.percentile(0.5), hist.percentile(0.95)
    return {
        "profile": name,
        "devices": len(devices),
        "enrolled": sum(1 for d in devices if d.get("device_id")),
        "serving": sum(1 for d in devices if d.get("bundle_id")),
        "states": states,
        "installs": cycles.get("installed", 0),
        "cycles": cycles,
        "cycle_errors": cycles.get("error", 0),
        "predictions": _sum(devices, "predictions"),
        "offline_predictions": _sum(devices, "offline_predictions"),
        "refused": _sum(devices, "refused"),
        "errors": _sum(devices, "errors"),
        "labelled": labelled,
        "accuracy": (correct / labelled) if labelled else None,
        "latency_ms": {"p50": p50, "p95": p95},
        "network_s": {k: round(v, 3) for k, v in sorted(net.items())},
        "offline_s": round(net.get("offline", 0.0), 3),
        "flat_s": round(sum(float(d.get("context", {}).get("flat_s") or 0.0) for d in devices), 3),
        "battery_mean": (sum(batteries) / len(batteries)) if batteries else None,
        "refs": sorted({d["ref"] for d in devices if d.get("ref")}),
        "reports_sent": {
            kind: sum(int((d.get("reports_sent") or {}).get(kind, 0)) for d in devices)
            for kind in ("install", "health")
        },
    }


def summarize(devices: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-entry rows (in order of first appearance) and the total over all devices."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for d in devices:
        groups.setdefault(d["entry"], []).append(d)
    return {
        "profiles": [_row(name, group) for name, group in groups.items()],
        "total": _row("total", list(devices)),
    }


__all__ = ["BUCKETS_MS", "DeviceStats", "LatencyHistogram", "summarize"]
