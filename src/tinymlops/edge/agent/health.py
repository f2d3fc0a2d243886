"""The health watch: runtime middleware that counts consecutive failed predictions.

It sits in the runtime's middleware chain (``mw(request, call_next)``) of the active bundle. A
prediction that raises counts as a failure — except a :class:`~tinymlops.errors.UsageError`
(wrong input shape or dtype), which is the caller's mistake, not the bundle's. After
``threshold`` failures in a row it calls ``on_unhealthy(watch, reason)`` once and starts counting
again; any success resets the count. The agent answers by rolling back to the other slot.
"""

from __future__ import annotations

from collections.abc import Callable

from tinymlops.edge.middleware import CallNext, Request, Response
from tinymlops.errors import UsageError


class HealthWatch:
    def __init__(self, threshold: int, on_unhealthy: Callable[[HealthWatch, str], None]) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise UsageError(f"the health threshold must be a positive integer, got {threshold!r}")
        self.threshold = threshold
        self.on_unhealthy = on_unhealthy
        self.consecutive = 0
        self.failures = 0
        self.calls = 0

    def __call__(self, request: Request, call_next: CallNext) -> Response:
        self.calls += 1
        try:
            response = call_next(request)
        except UsageError:
            raise
        except Exception as exc:
            self.failures += 1
            self.consecutive += 1
            if self.consecutive >= self.threshold:
                self.consecutive = 0
                reason = f"{self.threshold} consecutive prediction failures (last: {type(exc).__name__}: {exc})"
                self.on_unhealthy(self, reason)
            raise
        self.consecutive = 0
        return response


__all__ = ["HealthWatch"]
