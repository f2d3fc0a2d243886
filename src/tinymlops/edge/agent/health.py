"""The health watch: runtime middleware that counts consecutive failed predictions, and records every
call into the serving statistics of the bundle it belongs to.

It sits in the runtime's middleware chain (``mw(request, call_next)``) of the active bundle. A
prediction that raises counts as a failure — except a :class:`~tinymlops.errors.UsageError`
(wrong input shape or dtype), which is the caller's mistake, not the bundle's, and a
:class:`~tinymlops.errors.MeteringRefusedError` (no license, quota used, license expired or
revoked), which is the license's answer, not the bundle's: a device out of prepaid queries must not
roll its bundle back. After
``threshold`` failures in a row it calls ``on_unhealthy(watch, reason)`` once and starts counting
again; any success resets the count. The agent answers by rolling back to the other slot.

When ``stats`` (a :class:`~tinymlops.edge.agent.serving_stats.ServingStats`) is set — the agent
sets it when the bundle becomes active and reporting is on — each call is also recorded there by
the same rule: success (with its latency, timed with ``stats.timer`` from here to the end of the
chain: the pipeline, the model and the middleware after this one), error, or rejected (a
UsageError or a metering refusal). A failing call is recorded *before* ``on_unhealthy`` runs, so
the call that triggers a rollback is counted in the window of the bundle that failed it.
"""

from __future__ import annotations

from collections.abc import Callable

from tinymlops.edge.agent.serving_stats import ServingStats
from tinymlops.edge.middleware import CallNext, Request, Response
from tinymlops.errors import MeteringRefusedError, UsageError


class HealthWatch:
    def __init__(
        self,
        threshold: int,
        on_unhealthy: Callable[[HealthWatch, str], None],
        *,
        stats: ServingStats | None = None,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise UsageError(f"the health threshold must be a positive integer, got {threshold!r}")
        self.threshold = threshold
        self.on_unhealthy = on_unhealthy
        self.stats = stats
        self.consecutive = 0
        self.failures = 0
        self.calls = 0

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        self.calls += 1
        stats = self.stats
        t0 = stats.timer() if stats is not None else 0.0
        try:
            response = call_next(request)
        except (UsageError, MeteringRefusedError):
            if stats is not None:
                stats.record_rejected()
            raise
        except Exception as exc:
            if stats is not None:
                stats.record_error()
            self.failures += 1
            self.consecutive += 1
            if self.consecutive >= self.threshold:
                self.consecutive = 0
                reason = f"{self.threshold} consecutive prediction failures (last: {type(exc).__name__}: {exc})"
                self.on_unhealthy(self, reason)
            raise
        if stats is not None:
            stats.record(stats.timer() - t0)
        self.consecutive = 0
        return response


__all__ = ["HealthWatch"]
