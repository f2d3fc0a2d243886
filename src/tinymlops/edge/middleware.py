"""Runtime middleware: an ordered chain of ``mw(request, call_next) -> response`` functions, as in
Flower's mods or ASGI. Each can time, refuse, short-circuit or rewrite a prediction.

The bundle's manifest says which run (its ``policies`` table; a policy runs when its table has
``enabled = true``). Each policy name maps to a
factory registered here with a fixed *position*, so the chain order is the one DESIGN.md gives
(meter → guard → model → telemetry → prover) whatever order the manifest lists them in. A
manifest naming a policy this runtime does not know is refused: silently skipping, say, a
metering policy would let an old runtime give away what a newer release charges for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinymlops.errors import SpecError

#: chain positions of the manifest's policies (the ones later issues add included)
POSITIONS = {"metering": 10, "guard": 20, "telemetry": 40, "proof": 50}


@dataclass
class Request:
    """One prediction on its way through the chain."""

    inputs: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Response:
    outputs: dict[str, Any]
    models_called: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


CallNext = Callable[[Request], Response]
Middleware = Callable[[Request, CallNext], Response]
#: a factory gets the policy's table from the manifest and returns the middleware
MiddlewareFactory = Callable[[Mapping[str, Any]], Middleware]

_FACTORIES: dict[str, MiddlewareFactory] = {}


def register_middleware(name: str, factory: MiddlewareFactory) -> None:
    if name not in POSITIONS:
        raise ValueError(f"middleware '{name}' needs a position in POSITIONS")
    _FACTORIES[name] = factory


def build_chain(policies: Mapping[str, Any], extra: list[Middleware] | None = None) -> list[Middleware]:
    """The middleware the manifest's policies enable, in canonical order (then ``extra``)."""
    enabled = []
    for name, table in policies.items():
        if not isinstance(table, Mapping) or table.get("enabled") is not True:
            continue
        if name not in _FACTORIES:
            raise SpecError(
                f"the bundle requires policy '{name}', which this runtime does not implement "
                f"(known: {', '.join(sorted(_FACTORIES)) or 'none'}); update the runtime",
                policy=name,
            )
        enabled.append((POSITIONS[name], name, table))
    chain = [_FACTORIES[name](table) for _, name, table in sorted(enabled)]
    return chain + list(extra or [])


def compose(chain: list[Middleware], endpoint: CallNext) -> CallNext:
    """Fold the chain around the endpoint once, so a call walks no list at run time."""
    handler = endpoint
    for mw in reversed(chain):
        handler = _bind(mw, handler)
    return handler


def _bind(mw: Middleware, nxt: CallNext) -> CallNext:
    def call(request: Request) -> Response:
        return mw(request, nxt)

    return call


class LatencyRecorder:
    """Records the wall-clock latency of every call (errors counted apart) in a bounded ring
    buffer; percentiles are computed when asked, never on the hot path."""

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise SpecError("telemetry policy: latency_window must be >= 1")
        self._buf = np.zeros(capacity, dtype=np.float64)
        self.count = 0
        self.errors = 0
        self._clock = time.perf_counter

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        t0 = self._clock()
        try:
            response = call_next(request)
        except Exception:
            self.errors += 1
            raise
        self._buf[self.count % self._buf.shape[0]] = self._clock() - t0
        self.count += 1
        return response

    def summary(self) -> dict[str, float | int]:
        n = min(self.count, self._buf.shape[0])
        out: dict[str, float | int] = {"count": self.count, "errors": self.errors, "window": n}
        if n:
            ms = self._buf[:n] * 1e3
            p50, p95, p99 = np.percentile(ms, [50, 95, 99])
            out.update(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99), mean_ms=float(ms.mean()))
        return out


def _telemetry_factory(table: Mapping[str, Any]) -> Middleware:
    """The telemetry policy; today it records latency (``latency_window`` calls kept)."""
    unknown = set(table) - {"enabled", "latency_window"}
    if unknown:
        raise SpecError(f"telemetry policy: this runtime does not implement {', '.join(sorted(unknown))}")
    capacity = table.get("latency_window", 4096)
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise SpecError(f"telemetry policy: latency_window must be an integer, got {capacity!r}")
    return LatencyRecorder(capacity)


register_middleware("telemetry", _telemetry_factory)
