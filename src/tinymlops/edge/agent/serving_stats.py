"""What one bundle served: predictions, errors and latency, window by window, for health reports.

:class:`ServingStats` accumulates the calls served by ONE bundle (the agent makes one per
activation of a bundle and records into it from the runtime's
:class:`~tinymlops.edge.agent.health.HealthWatch`). It is thread-safe: concurrent predictions
record under one lock, and :meth:`ServingStats.close` swaps the window atomically, so every call
lands in exactly one window.

What counts (the rule of :class:`~tinymlops.edge.agent.health.HealthWatch`):

* a call that returns is a **prediction**, and its latency is recorded;
* a call that raises is a **prediction** and an **error** (no latency recorded);
* a call refused with a :class:`~tinymlops.errors.UsageError` (wrong input shape or dtype) is the
  caller's fault: it is **neither** a prediction nor an error — it is counted apart as
  ``rejected``, which stays on the device (the report has no field for it). Counting it as a
  prediction would let a misbehaving caller dilute a failing bundle's error rate.

Latency lives in a :class:`LatencyHistogram`: fixed log-spaced buckets from 1 µs to 1 h, each
``GAMMA = (1 + ε) / (1 − ε)`` times wider than the previous, ``ε = RELATIVE_ERROR = 1%``. A bucket
is represented by the value whose relative distance to both of its edges is ε, so a percentile
read back is within **1% relative error** of the exact sample at that rank (the nearest-rank
percentile, numpy's ``method="inverted_cdf"``) for latencies in [1 µs, 1 h]; below 1 µs the error
is under 1 µs absolute, above 1 h the latency is reported as 1 h (the report's limit). The exact
minimum and maximum are kept beside the buckets: the 0- and 1-quantiles are exact, and every other
read-back value is clamped to [min, max]. Memory is bounded by
the bucket count (``BUCKETS``, ~1,100; a sparse dict holds only the buckets used), whatever the
number of calls.

A window (:class:`Window`) is immutable once closed. Two windows of the same bundle
:meth:`merge <Window.merge>` without losing a count (sums, the union of the time spans, merged
histograms), which is how a window that could not be sent goes back — into the stats
(:meth:`ServingStats.put_back`) or into a :class:`PendingWindows` list, which keeps at most one
window per bundle and at most ``max_bundles`` bundles.

Standard library only (edge closure).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from tinymlops.errors import UsageError
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.health_report import MAX_LATENCY_MS, HealthReport

#: relative error of a percentile read back from the histogram (for latencies in [LOW_S, HIGH_S])
RELATIVE_ERROR = 0.01
GAMMA = (1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR)
#: the histogram's range: 1 µs … 1 h
LOW_S = 1e-6
HIGH_S = 3600.0
#: bucket 0 is [0, LOW_S); bucket i >= 1 is [LOW_S·GAMMA^(i-1), LOW_S·GAMMA^i); the last one is open above
BUCKETS = math.ceil(math.log(HIGH_S / LOW_S) / math.log(GAMMA)) + 1
#: bundles a PendingWindows list keeps a window for (the oldest is dropped beyond this)
MAX_PENDING_BUNDLES = 16

_INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
_INV_LOW = 1.0 / LOW_S
_log = math.log
_LAST = BUCKETS - 1
_INF = math.inf
_MIDPOINT = 2.0 * GAMMA / (1.0 + GAMMA)  # lower edge × this = the value ε from both edges


def bucket_of(seconds: float) -> int:
    """The bucket a latency falls in (NaN and negative values count as 0)."""
    if not seconds >= LOW_S:  # also NaN
        return 0
    if seconds >= HIGH_S:  # also inf (whose log would not convert to an index)
        return _LAST
    return min(_LAST, int(_log(seconds * _INV_LOW) * _INV_LOG_GAMMA) + 1)


def bucket_value(index: int) -> float:
    """The value representing bucket ``index`` (seconds)."""
    if index <= 0:
        return LOW_S / 2.0
    return LOW_S * GAMMA ** (index - 1) * _MIDPOINT


class LatencyHistogram:
    """Latencies (seconds) in fixed log-spaced buckets; see the module docstring for the error bound.

    Not thread-safe by itself (:class:`ServingStats` holds the lock)."""

    __slots__ = ("_counts", "count", "max", "min")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.min = math.inf
        self.max = 0.0

    @classmethod
    def from_buckets(
        cls, buckets: Mapping[int, int] | Iterable[Iterable[int]], min_s: float, max_s: float
    ) -> LatencyHistogram:
        """A histogram back from its non-empty buckets — index -> count as :attr:`buckets` gives them, or
        ``[index, count]`` pairs as the telemetry spec carries them — and its exact ``min_s``/``max_s``
        (seconds). No bucket at all is the empty histogram (``min_s``/``max_s`` are then ignored).
        Raises UsageError for an index outside ``[0, BUCKETS)``, a count below 1, a repeated index, or
        ``min_s > max_s``."""
        out = cls()
        items = buckets.items() if isinstance(buckets, Mapping) else buckets
        counts = out._counts
        for index, n in items:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < BUCKETS:
                raise UsageError(f"a latency bucket index must be an integer within [0, {BUCKETS}), got {index!r}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UsageError(f"latency bucket {index}: the count must be a positive integer, got {n!r}")
            if index in counts:
                raise UsageError(f"latency bucket {index} is given twice")
            counts[index] = n
            out.count += n
        if out.count:
            if not 0.0 <= min_s <= max_s:
                raise UsageError(f"a latency histogram needs 0 <= min_s <= max_s, got {min_s!r} and {max_s!r}")
            out.min, out.max = float(min_s), float(max_s)
        return out

    def add(self, seconds: float) -> None:
        if not 0.0 <= seconds < _INF:  # negative, NaN or infinite: a clock that went wrong, not a latency
            seconds = 0.0
        self._add(bucket_of(seconds), seconds)

    def _add(self, index: int, seconds: float) -> None:
        counts = self._counts
        counts[index] = counts.get(index, 0) + 1
        self.count += 1
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s latencies to this histogram (in place)."""
        counts = self._counts
        for i, n in other._counts.items():
            counts[i] = counts.get(i, 0) + n
        self.count += other.count
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LatencyHistogram:
        out = LatencyHistogram()
        out.merge(self)
        return out

    @property
    def buckets(self) -> Mapping[int, int]:
        """The non-empty buckets: index -> count."""
        return dict(self._counts)

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        """The nearest-rank ``q``-quantiles (seconds) for each ``q`` in [0, 1], within the stated
        relative error and within [min, max]. Raises UsageError when the histogram is empty."""
        wanted = list(qs)
        if self.count == 0:
            raise UsageError("an empty latency histogram has no percentiles")
        for q in wanted:
            if not 0.0 <= q <= 1.0:
                raise UsageError(f"a quantile must be within [0, 1], got {q!r}")
        ranks = [max(1, math.ceil(Fraction(q) * self.count)) for q in wanted]  # exact: 0.95 × 100 is 95
        order = sorted(range(len(wanted)), key=ranks.__getitem__)
        out = [0.0] * len(wanted)
        items = iter(sorted(self._counts.items()))
        seen, index = 0, 0
        for k in order:
            if ranks[k] in (1, self.count):  # the extremes are kept exactly
                out[k] = self.min if ranks[k] == 1 else self.max
                continue
            while seen < ranks[k]:
                index, n = next(items)
                seen += n
            out[k] = min(self.max, max(self.min, bucket_value(index)))
        return out

    def quantile(self, q: float) -> float:
        return self.quantiles([q])[0]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return (self._counts, self.count, self.min, self.max) == (other._counts, other.count, other.min, other.max)

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self.count}, buckets={len(self._counts)})"


@dataclass(frozen=True, eq=False)
class Window:
    """The calls one bundle served between ``start`` and ``end`` (the device clock, seconds).

    ``latency`` holds the successful calls (``predictions - errors`` of them); do not mutate it."""

    bundle_id: str
    start: float
    end: float
    predictions: int = 0
    errors: int = 0
    rejected: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def served(self) -> bool:
        """Whether anything was served (a window that served nothing is not worth a report)."""
        return self.predictions > 0

    def merge(self, other: Window) -> Window:
        """Both windows as one: counts summed, the time span of both, latencies merged."""
        if other.bundle_id != self.bundle_id:
            raise UsageError(f"cannot merge a window of bundle {other.bundle_id} into one of bundle {self.bundle_id}")
        latency = self.latency.copy()
        latency.merge(other.latency)
        return Window(
            self.bundle_id,
            min(self.start, other.start),
            max(self.end, other.end),
            self.predictions + other.predictions,
            self.errors + other.errors,
            self.rejected + other.rejected,
            latency,
        )

    def latency_ms(self) -> dict[str, float] | None:
        """p50/p95/p99/max of the successful calls in milliseconds (capped at the report's 1 h); None if none."""
        h = self.latency
        if h.count == 0:
            return None
        p50, p95, p99 = h.quantiles((0.50, 0.95, 0.99))
        return {k: min(v * 1e3, MAX_LATENCY_MS) for k, v in (("p50", p50), ("p95", p95), ("p99", p99), ("max", h.max))}

    def report(self, context: DeviceContext | None = None, at: float | None = None) -> HealthReport:
        """This window as a :class:`~tinymlops.spec.health_report.HealthReport` (``at`` defaults to ``end``)."""
        return HealthReport(
            bundle_id=self.bundle_id,
            window_start=self.start,
            window_end=self.end,
            predictions=self.predictions,
            errors=self.errors,
            latency_ms=self.latency_ms(),
            context=context,
            at=self.end if at is None else max(0.0, at),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Window):
            return NotImplemented
        return (self.bundle_id, self.start, self.end, self.predictions, self.errors, self.rejected, self.latency) == (
            other.bundle_id,
            other.start,
            other.end,
            other.predictions,
            other.errors,
            other.rejected,
            other.latency,
        )

    __hash__ = None  # type: ignore[assignment]


class ServingStats:
    """The open window of the calls ONE bundle serves (thread-safe).

    ``clock`` (wall clock, seconds since the epoch) stamps the windows; ``timer`` (monotonic) is
    what :class:`~tinymlops.edge.agent.health.HealthWatch` times calls with. Both are injectable.
    """

    def __init__(
        self,
        bundle_id: str,
        *,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(bundle_id, str) or not bundle_id:
            raise UsageError(f"bundle_id must be a non-empty string, got {bundle_id!r}")
        self.bundle_id = bundle_id
        self.clock = clock
        self.timer = timer
        self._lock = threading.Lock()
        self._start = self._now()
        self._predictions = 0
        self._errors = 0
        self._rejected = 0
        self._latency = LatencyHistogram()

    def _now(self) -> float:
        now = self.clock()
        return now if now >= 0.0 else 0.0  # also NaN -> 0

    # --- recording (the hot path) -----------------------------------------------------------
    def record(self, seconds: float) -> None:
        """A successful call that took ``seconds``."""
        if seconds >= LOW_S:  # the bucket is found outside the lock
            index = int(_log(seconds * _INV_LOW) * _INV_LOG_GAMMA) + 1
            if index > _LAST:
                index = _LAST
        else:
            index = 0
            if not seconds >= 0.0:  # negative or NaN: a clock that went wrong, not a latency
                seconds = 0.0
        with self._lock:  # LatencyHistogram._add, inlined: this runs on every prediction
            self._predictions += 1
            h = self._latency
            counts = h._counts
            counts[index] = counts.get(index, 0) + 1
            h.count += 1
            if seconds < h.min:
                h.min = seconds
            if seconds > h.max:
                h.max = seconds

    def record_error(self) -> None:
        """A call that raised (not a UsageError)."""
        with self._lock:
            self._predictions += 1
            self._errors += 1

    def record_rejected(self) -> None:
        """A call refused as the caller's mistake (a UsageError): not a prediction."""
        with self._lock:
            self._rejected += 1

    # --- windows ------------------------------------------------------------------------------
    @property
    def window_start(self) -> float:
        return self._start

    def peek(self) -> Window:
        """A copy of the open window, ending now (the window stays open)."""
        with self._lock:
            return self._snapshot(max(self._start, self._now()), self._latency.copy())

    def _snapshot(self, end: float, latency: LatencyHistogram) -> Window:
        return Window(self.bundle_id, self._start, end, self._predictions, self._errors, self._rejected, latency)

    def close(self, at: float | None = None) -> Window | None:
        """Close the open window at ``at`` (default: the clock) and open the next one there.
        Returns the closed window, or None when it served nothing (its rejected calls are then
        dropped with it)."""
        with self._lock:
            end = self._now() if at is None else at
            end = max(self._start, end)  # a clock set back never makes a window end before it starts
            window = self._snapshot(end, self._latency)
            self._start = end
            self._predictions = self._errors = self._rejected = 0
            self._latency = LatencyHistogram()
        return window if window.served else None

    def take(self, context: DeviceContext | None = None, at: float | None = None) -> HealthReport | None:
        """Close the window (at ``at``, default the clock) and return its report, or None when
        nothing was served. To keep a report that could not be sent, use :meth:`close`,
        :meth:`Window.report`, and :meth:`put_back` the window."""
        window = self.close(at)
        return None if window is None else window.report(context, at)

    def put_back(self, window: Window) -> None:
        """Merge a closed window that could not be sent into the open one (nothing is lost; the
        open window then starts where ``window`` started)."""
        if window.bundle_id != self.bundle_id:
            raise UsageError(f"a window of bundle {window.bundle_id} does not belong to bundle {self.bundle_id}")
        with self._lock:
            self._start = min(self._start, window.start)
            self._predictions += window.predictions
            self._errors += window.errors
            self._rejected += window.rejected
            self._latency.merge(window.latency)


class PendingWindows:
    """Closed windows waiting to be reported, oldest first (thread-safe): at most one per bundle —
    a second window of a bundle merges into the first — and at most ``max_bundles`` bundles; beyond
    that the oldest bundle's window is dropped and counted in ``dropped_predictions``."""

    def __init__(self, max_bundles: int = MAX_PENDING_BUNDLES) -> None:
        if isinstance(max_bundles, bool) or not isinstance(max_bundles, int) or max_bundles < 1:
            raise UsageError(f"max_bundles must be a positive integer, got {max_bundles!r}")
        self.max_bundles = max_bundles
        self._windows: OrderedDict[str, Window] = OrderedDict()
        self._lock = threading.Lock()
        self.dropped_windows = 0
        self.dropped_predictions = 0

    def add(self, window: Window) -> None:
        """Queue ``window`` behind the others (merged into its bundle's pending window, if any)."""
        self._add([window], front=False)

    def put_back(self, windows: Iterable[Window]) -> None:
        """Return windows that could not be sent to the front of the queue, in their order."""
        self._add(list(windows), front=True)

    def _add(self, windows: list[Window], *, front: bool) -> None:
        with self._lock:
            for window in reversed(windows) if front else windows:
                if not window.served:
                    continue
                known = self._windows.get(window.bundle_id)
                self._windows[window.bundle_id] = window if known is None else known.merge(window)
                if front:
                    self._windows.move_to_end(window.bundle_id, last=False)
            while len(self._windows) > self.max_bundles:
                _, old = self._windows.popitem(last=False)
                self.dropped_windows += 1
                self.dropped_predictions += old.predictions

    def drain(self) -> list[Window]:
        """Take every pending window out, oldest first."""
        with self._lock:
            out = list(self._windows.values())
            self._windows.clear()
            return out

    def __len__(self) -> int:
        return len(self._windows)

    def __iter__(self) -> Iterator[Window]:
        with self._lock:
            return iter(list(self._windows.values()))

    def predictions(self) -> int:
        with self._lock:
            return sum(w.predictions for w in self._windows.values())


__all__ = [
    "BUCKETS",
    "GAMMA",
    "RELATIVE_ERROR",
    "LatencyHistogram",
    "PendingWindows",
    "ServingStats",
    "Window",
    "bucket_of",
    "bucket_value",
]
