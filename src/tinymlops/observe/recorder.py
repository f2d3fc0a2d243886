"""The telemetry recorder: runtime middleware that fills one telemetry window per bundle, per period.

:class:`TelemetryRecorder` is a ``mw(request, call_next)`` (:mod:`tinymlops.edge.middleware`). For
every call it records, by the rule of :class:`~tinymlops.edge.agent.health.HealthWatch`:

* a call that returns: a **request**, its latency (from here to the end of the chain) into the
  buckets of a :class:`~tinymlops.edge.agent.serving_stats.LatencyHistogram` (the same log buckets,
  1% relative error; kept inline — a dict of counts, min and max — with the index computed as
  ``bucket_of`` computes it, a property test holds them equal; a NaN, negative or infinite
  duration (or one of 1e300 s and more) is a clock gone wrong and counts as 0), its energy (an
  :class:`~tinymlops.observe.energy.EnergyMeter` read before and after, on one call in
  ``energy_every``), its inputs and outputs into an
  :class:`~tinymlops.observe.sketches.InputProfile`;
* a call that raises: a request and an **error** (its row is not profiled);
* a call refused with a :class:`~tinymlops.errors.UsageError` (wrong shape or dtype): the
  caller's mistake, counted apart as ``rejected`` (not in the window).

**The hot path records, the buffer flush computes.** After a model call of a millisecond or more
the recorder's code and data are out of the CPU's caches, so every distinct thing it touches per
call costs several times its tight-loop cost. A call therefore only reads the timer twice (and
the energy meter, when sampled), takes the lock once and writes into preallocated buffers: its
latency and energy reading into two ``array('d')``, its input row and its score row (a batch of
one row of the shape and dtype seen before) into two float32 arrays. Everything else — latency
buckets, min and max, energy sums, argmax/softmax/confidence bins, moments, the projection, the
KLL updates — runs vectorised when the buffer is flushed: when it is full (``buffer_rows`` calls,
fewer for wide rows: at most ``InputProfile.buffer_bytes`` of rows or scores), when a window is
taken, when :attr:`TelemetryRecorder.meter` is replaced, and before a call whose input or output
takes the general path (a batch, another shape or dtype, integer labels: handed to the profile as
they are, after the buffered rows, so the profile sees the stream in order). A latency bucket is
computed with numpy's ``log`` and, where that lands within 1e-7 of a bucket edge, again with
``math.log`` as ``bucket_of`` does, so the buckets are exactly ``bucket_of``'s.

Telemetry never breaks a prediction: an input the profile cannot take (another shape, a dtype it
does not read) or an energy meter that stops reading is counted (``profile_errors``,
``energy_errors``; a failing meter is dropped) and the prediction goes on. Energy is summed only
over readings of the meter in place when the call ended, and a window whose meter changes method
keeps only the new method's readings: ``Energy.inferences`` is the number of calls that method measured.

:meth:`TelemetryRecorder.take_window` closes the window (atomically: every call lands in exactly
one — a call in flight when it closes lands in the next) and returns it as a
:class:`~tinymlops.spec.telemetry.TelemetryWindow` — or None when nothing was served. Peak memory is
read then (:mod:`tinymlops.observe.memory`), not per call. When the policy asks for local
differential privacy the histograms are privatized then too, spending from the recorder's
:class:`~tinymlops.observe.privacy.EpsilonBudget` (withheld when it refuses);
``take_window(privatize_histograms=False)`` returns the exact window instead, for a store that merges windows
before it uploads them and privatizes at upload (:func:`tinymlops.observe.privacy.privatize`).

Thread-safe: one lock around the counters, the buffers and the profile (a window closed mid-buffer
takes the buffered calls with it); a window's sketches are serialized outside it.
:meth:`TelemetryRecorder.snapshot` reads the open window's counts (buffered calls included)
without closing it.
"""

from __future__ import annotations

import math
import re
import threading
import time
from array import array
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tinymlops.edge.middleware import CallNext, Request, Response
from tinymlops.errors import UsageError
from tinymlops.observe.energy import EnergyMeter
from tinymlops.observe.memory import peak_rss_bytes, reset_peak
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.privacy import EpsilonBudget, privatize
from tinymlops.observe.sketches import DEFAULT_BUFFER_BYTES, DEFAULT_BUFFER_ROWS, InputProfile
from tinymlops.spec.telemetry import (
    LATENCY_BUCKETS,
    LATENCY_GAMMA,
    LATENCY_LOW_S,
    Energy,
    HistogramPrivacy,
    LatencyBuckets,
    Performance,
    Privacy,
    TelemetryWindow,
)

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
# serving_stats.bucket_of's constants, computed as it computes them (the spec's are held equal to its by a test)
_LOW_S = LATENCY_LOW_S
_INV_LOW = 1.0 / LATENCY_LOW_S
_INV_LOG_GAMMA = 1.0 / math.log(LATENCY_GAMMA)
_LAST = LATENCY_BUCKETS - 1
#: a duration at or above this (infinite included) is a clock gone wrong, as NaN is (and would overflow the index)
_ABSURD_S = 1e300
#: numpy's log may differ from math.log by an ulp or two: an index this close to an edge is recomputed with math.log
_EDGE = 1e-7
_NDARRAY = np.ndarray


def latency_buckets(histogram: Any) -> LatencyBuckets | None:
    """A :class:`~tinymlops.edge.agent.serving_stats.LatencyHistogram` as the spec's buckets."""
    if histogram.count == 0:
        return None
    return LatencyBuckets(buckets=tuple(sorted(histogram.buckets.items())), min_s=histogram.min, max_s=histogram.max)


def latency_histogram(buckets: LatencyBuckets) -> Any:
    """The spec's buckets back as a ``LatencyHistogram`` (for its percentiles: ``quantiles``)."""
    from tinymlops.edge.agent.serving_stats import LatencyHistogram

    # the same scheme (a test holds the spec's constants to serving_stats'): counts go in as they are
    return LatencyHistogram.from_buckets(buckets.buckets, buckets.min_s, buckets.max_s)


def bucket_indices(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latencies (float64) as (bucket index per latency, the latency as counted): ``bucket_of``'s
    buckets, vectorised; a NaN, negative, infinite or absurd (>= 1e300 s) latency counts as 0."""
    s = np.array(seconds, dtype=np.float64)  # a copy: the caller's buffer is reused
    with np.errstate(invalid="ignore"):
        s[~((s >= 0.0) & (s < _ABSURD_S))] = 0.0
    index = np.zeros(s.shape[0], np.int64)
    up = np.flatnonzero(s >= _LOW_S)
    if up.size:
        scaled = s[up] * _INV_LOW
        v = np.log(scaled) * _INV_LOG_GAMMA
        i = v.astype(np.int64) + 1  # truncation toward zero, as int() does
        near = np.flatnonzero(np.abs(v - np.rint(v)) < _EDGE)
        for j in near.tolist():  # at an edge: exactly as bucket_of computes it
            i[j] = int(math.log(float(scaled[j])) * _INV_LOG_GAMMA) + 1
        np.minimum(i, _LAST, out=i)
        index[up] = i
    return index, s


def _add_counts(counts: dict[int, int], index: np.ndarray) -> None:
    buckets, n = np.unique(index, return_counts=True)
    for b, c in zip(buckets.tolist(), n.tolist(), strict=True):
        counts[b] = counts.get(b, 0) + c


class TelemetryRecorder:
    """Telemetry middleware for one bundle (see the module doc).

    ``clock`` (wall clock, seconds since the epoch) stamps windows; ``timer`` (monotonic) times
    calls; ``budget`` defaults to the policy's caps; ``rng`` is for tests of the privacy step;
    ``buffer_rows`` is how many calls the buffer holds before it is flushed (fewer for wide rows).
    """

    def __init__(
        self,
        bundle_id: str,
        *,
        model: str | None = None,
        policy: TelemetryPolicy | None = None,
        meter: EnergyMeter | None = None,
        budget: EpsilonBudget | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
        rng: np.random.Generator | None = None,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
    ) -> None:
        if not isinstance(bundle_id, str) or not _HEX32.match(bundle_id):
            raise UsageError(f"bundle_id must be 32 lower-case hex digits, got {bundle_id!r:.80}")
        if isinstance(buffer_rows, bool) or not isinstance(buffer_rows, int) or not 1 <= buffer_rows <= 1 << 16:
            raise UsageError(f"buffer_rows must be an integer within [1, {1 << 16}], got {buffer_rows!r}")
        self.bundle_id = bundle_id
        self.model = model
        self.policy = policy or TelemetryPolicy()
        self.budget = budget if budget is not None else self.policy.privacy.budget()
        self.clock = clock
        self.timer = timer
        self.rng = rng
        self._lock = threading.Lock()
        self._output_name: str | None = self.policy.output
        self._calls = 0
        self._energy_every = self.policy.energy_every
        self.rejected = 0
        self.profile_errors = 0
        self.energy_errors = 0
        self._meter = meter
        #: the method of the meter whose readings are in the buffer (readings of another meter are not taken)
        self._buffer_method: str | None = None if meter is None else meter.method
        # the call buffer: one slot per call (latency, energy reading or -1), flushed when full
        self._buffer_rows = buffer_rows
        self._cap = buffer_rows
        self._seconds = array("d", bytes(8 * buffer_rows))
        self._readings = array("d", bytes(8 * buffer_rows))
        self._n = 0
        # input rows (batches of one, of the shape and dtype below) and score rows ([1, classes] floats),
        # each call's as its bytes (``tobytes``: the shortest copy numpy has), joined into one array at the flush
        self._rows: list[bytes] = []
        self._row_shape: tuple[int, ...] | None = None
        self._row_dtype: np.dtype[Any] | None = None
        self._row_cap = buffer_rows
        self._outs: list[bytes] = []
        self._out_shape: tuple[int, ...] | None = None
        self._out_dtype: np.dtype[Any] | None = None
        self._out_cap = buffer_rows
        self._open(self._now())

    def _now(self) -> float:
        now = self.clock()
        return now if now >= 0.0 else 0.0  # also NaN -> 0

    def _new_profile(self) -> InputProfile | None:
        p = self.policy
        if not p.inputs:
            return None
        return InputProfile(
            max_features=p.max_features,
            projection_dims=p.projection_dims,
            seed=p.projection_seed,
            k=p.sketch_k,
            outputs=p.outputs,
            classes=p.classes,
            buffer_rows=self._buffer_rows,
        )

    def _open(self, start: float) -> None:
        self._start = start
        self._errors = 0
        # the latency histogram, kept inline: LatencyHistogram's buckets, counts, min and max
        self._counts: dict[int, int] = {}
        self._served = 0
        self._min = math.inf
        self._max = 0.0
        self._joules = 0.0
        self._measured = 0
        self._energy_method: str | None = None
        self._profile = self._new_profile()

    @property
    def meter(self) -> EnergyMeter | None:
        """The energy meter (None: no energy recorded). Replacing it flushes the buffer first, so
        every reading is summed under the method of the meter that took it."""
        return self._meter

    @meter.setter
    def meter(self, meter: EnergyMeter | None) -> None:
        with self._lock:
            if meter is self._meter:
                return
            self._flush()
            self._meter = meter
            if meter is not None:
                self._buffer_method = meter.method

    # --- the hot path ---------------------------------------------------------------------------
    def __call__(self, request: Request, call_next: CallNext) -> Response:
        meter = self._meter
        e0 = 0.0
        if meter is not None:
            every = self._energy_every
            if every != 1:
                calls = self._calls
                self._calls = calls + 1
                if calls % every:
                    meter = None  # not measured this time
            if meter is not None:
                try:
                    e0 = meter.read()
                except Exception:
                    self._drop_meter(meter)
                    meter = None
        timer = self.timer
        t0 = timer()
        try:
            response = call_next(request)
        except UsageError:
            with self._lock:
                self.rejected += 1
            raise
        except Exception:
            with self._lock:
                self._errors += 1
            raise
        seconds = timer() - t0
        joules = -1.0
        if meter is not None:
            try:
                joules = meter.read() - e0
            except Exception:
                self._drop_meter(meter)
                joules = -1.0
        x = request.inputs
        with self._lock:
            if self._profile is not None:
                try:
                    if type(x) is _NDARRAY and x.shape == self._row_shape and x.dtype is self._row_dtype:
                        self._rows.append(x.tobytes())
                    else:
                        self._add_slow(x)
                    name = self._output_name
                    y = response.outputs[name] if name is not None else self._scores(response.outputs)
                    if type(y) is _NDARRAY and y.shape == self._out_shape and y.dtype is self._out_dtype:
                        self._outs.append(y.tobytes())
                    elif y is not None:
                        self._observe_slow(y)
                except Exception:
                    self.profile_errors += 1
            n = self._n
            self._seconds[n] = seconds
            # a reading of a meter replaced (or dropped) while the call ran is not taken
            self._readings[n] = joules if meter is self._meter else -1.0
            n += 1
            self._n = n
            if n >= self._cap:
                self._flush()
        return response

    def _drop_meter(self, meter: EnergyMeter) -> None:
        with self._lock:
            self.energy_errors += 1
            if self._meter is meter:
                self._meter = None

    def _scores(self, outputs: Mapping[str, Any]) -> Any:
        """The first output that looks like scores or labels (remembered), or None."""
        for key, value in outputs.items():  # the first output that looks like scores or labels
            if isinstance(value, np.ndarray) and (
                (value.dtype.kind == "f" and value.ndim == 2) or (value.dtype.kind in "iu" and value.ndim == 1)
            ):
                self._output_name = key
                return value
        return None

    # --- the general path (under the lock) ------------------------------------------------------
    def _row_capacity(self, values_per_row: int) -> int:
        return max(1, min(self._buffer_rows, DEFAULT_BUFFER_BYTES // (4 * max(1, values_per_row))))

    def _add_slow(self, x: Any) -> None:
        """An input the buffer does not take as it is: to the profile after the buffered rows; a batch
        of one row the profile took becomes the buffer's row shape and dtype."""
        profile = self._profile
        assert profile is not None
        self._flush_rows()
        profile.add(x)
        if type(x) is not _NDARRAY or x.ndim == 0 or x.shape[0] != 1:
            return
        self._row_shape, self._row_dtype = x.shape, x.dtype
        self._row_cap = self._row_capacity(math.prod(x.shape[1:]))
        self._resize()

    def _observe_slow(self, y: Any) -> None:
        """Outputs the buffer does not take as they are (labels, a batch, other scores): to the profile
        after the buffered scores; a row of float scores it took becomes the buffer's shape and dtype."""
        profile = self._profile
        assert profile is not None
        self._flush_outputs()
        profile.observe(y)
        if type(y) is not _NDARRAY or y.ndim != 2 or y.shape[0] != 1 or y.dtype.kind != "f":
            return
        self._out_shape, self._out_dtype = y.shape, y.dtype
        self._out_cap = self._row_capacity(y.shape[1])
        self._resize()

    def _resize(self) -> None:
        self._cap = min(self._buffer_rows, self._row_cap, self._out_cap)
        if self._n >= self._cap:
            self._flush()

    # --- the flush (under the lock) ---------------------------------------------------------------
    def _flush(self) -> None:
        """Reduce the buffered calls into the open window: latency buckets, energy, the profile."""
        n = self._n
        if n:
            self._n = 0
            index, seconds = bucket_indices(np.frombuffer(self._seconds, np.float64, n))
            _add_counts(self._counts, index)
            self._served += n
            self._min = min(self._min, float(seconds.min()))
            self._max = max(self._max, float(seconds.max()))
            readings = np.frombuffer(self._readings, np.float64, n)
            measured = readings >= 0.0  # -1: not measured (NaN: a reading gone wrong)
            count = int(np.count_nonzero(measured))
            if count:
                method = self._buffer_method
                if self._energy_method != method:  # another method: the window keeps the newer one's readings
                    self._joules, self._measured, self._energy_method = 0.0, 0, method
                self._joules += float(readings[measured].sum())
                self._measured += count
        self._flush_rows()
        self._flush_outputs()

    def _flush_rows(self) -> None:
        rows = self._rows
        if not rows:
            return
        assert self._row_shape is not None and self._profile is not None
        block = np.frombuffer(b"".join(rows), self._row_dtype).reshape(len(rows), *self._row_shape[1:])
        rows.clear()
        try:
            self._profile.add(block)
        except Exception:
            self.profile_errors += block.shape[0]

    def _flush_outputs(self) -> None:
        outs = self._outs
        if not outs:
            return
        assert self._out_shape is not None and self._profile is not None
        block = np.frombuffer(b"".join(outs), self._out_dtype).reshape(len(outs), self._out_shape[1])
        outs.clear()
        try:
            self._profile.observe(block)
        except Exception:
            self.profile_errors += block.shape[0]

    # --- windows -----------------------------------------------------------------------------------
    @property
    def window_start(self) -> float:
        return self._start

    def snapshot(self) -> tuple[int, int, Any]:
        """The open window so far, without closing it: (requests, errors, a copy of its latency histogram)."""
        from tinymlops.edge.agent.serving_stats import LatencyHistogram  # at run time: no import cycle

        histogram = LatencyHistogram()
        with self._lock:
            counts, served, low, high = dict(self._counts), self._served, self._min, self._max
            n = self._n
            if n:
                index, seconds = bucket_indices(np.frombuffer(self._seconds, np.float64, n))
                _add_counts(counts, index)
                served += n
                low, high = min(low, float(seconds.min())), max(high, float(seconds.max()))
            errors = self._errors
        histogram._counts = counts
        histogram.count, histogram.min, histogram.max = served, low, high
        return served + errors, errors, histogram

    def take_window(self, at: float | None = None, *, privatize_histograms: bool = True) -> TelemetryWindow | None:
        """Close the open window at ``at`` (default: the clock), open the next one there, and return
        the closed one — None when it served nothing. See the module doc for privacy."""
        with self._lock:
            end = self._now() if at is None else at
            end = end if end >= self._start else self._start  # a clock set back never ends a window early
            self._flush()  # the buffered calls belong to this window
            start, served, errors = self._start, self._served, self._errors
            counts, low, high = self._counts, self._min, self._max
            joules, measured, profile = self._joules, self._measured, self._profile
            method = self._energy_method
            self._open(end)
        requests = served + errors
        if requests == 0:
            return None
        memory = peak_rss_bytes() or None
        if self.policy.memory == "window":
            reset_peak()
        energy = None
        if measured and method is not None and math.isfinite(joules):
            energy = Energy(method=method, joules_per_inference=max(0.0, joules / measured), inferences=measured)
        performance = Performance(
            requests=requests,
            errors=errors,
            latency=LatencyBuckets(buckets=tuple(sorted(counts.items())), min_s=low, max_s=high) if served else None,
            peak_memory_bytes=memory,
            energy=energy,
        )
        inputs = None
        if profile is not None:
            inputs = profile.summary()
        window = TelemetryWindow(
            bundle_id=self.bundle_id,
            model=self.model,
            window_start=start,
            window_end=end,
            performance=performance,
            inputs=inputs,
            privacy=_exact_privacy(inputs),
        )
        if privatize_histograms and self.policy.privacy.active:
            window = privatize(window, self.policy.privacy, self.budget, at=end, rng=self.rng)
            self.budget.next_window()
        return window


def _exact_privacy(inputs: Any) -> Privacy:
    exact = HistogramPrivacy("none")
    if inputs is None:
        return Privacy()
    return Privacy(
        classes=None if inputs.classes is None else exact,
        confidence=None if inputs.confidence is None else exact,
    )


__all__ = ["TelemetryRecorder", "bucket_indices", "latency_buckets", "latency_histogram"]
