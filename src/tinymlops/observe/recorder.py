"""The telemetry recorder: runtime middleware that fills one telemetry window per bundle, per period.

:class:`TelemetryRecorder` is a ``mw(request, call_next)`` (:mod:`tinymlops.edge.middleware`). For
every call it records, by the rule of :class:`~tinymlops.edge.agent.health.HealthWatch`:

* a call that returns: a **request**, its latency (from here to the end of the chain) into the
  buckets of a :class:`~tinymlops.edge.agent.serving_stats.LatencyHistogram` (the same log buckets,
  1% relative error; kept inline — a dict of counts, min and max — and the index computed as
  ``bucket_of`` computes it, a property test holds them equal; a NaN, negative or infinite
  duration (or one of 1e300 s and more) is a clock gone wrong and counts as 0), its energy (an
  :class:`~tinymlops.observe.energy.EnergyMeter` read before and after, on one call in
  ``energy_every``), its inputs and outputs into an
  :class:`~tinymlops.observe.sketches.InputProfile` (buffered: a row copy per call);
* a call that raises: a request and an **error**;
* a call refused with a :class:`~tinymlops.errors.UsageError` (wrong shape or dtype): the
  caller's mistake, counted apart as ``rejected`` (not in the window).

Telemetry never breaks a prediction: an input the profile cannot take (another shape, a dtype it
does not read) or an energy meter that stops reading is counted (``profile_errors``,
``energy_errors``; a failing meter is dropped) and the prediction goes on.

:meth:`TelemetryRecorder.take_window` closes the window (atomically: every call lands in exactly
one) and returns it as a :class:`~tinymlops.spec.telemetry.TelemetryWindow` — or None when nothing
was served. Peak memory is read then (:mod:`tinymlops.observe.memory`), not per call. When the
policy asks for local differential privacy the histograms are privatized then too, spending from
the recorder's :class:`~tinymlops.observe.privacy.EpsilonBudget` (withheld when it refuses);
``take_window(privatize_histograms=False)`` returns the exact window instead, for a store that merges windows
before it uploads them and privatizes at upload (:func:`tinymlops.observe.privacy.privatize`).

Thread-safe: one lock around the counters and the profile's buffer (a window closed mid-buffer
takes the buffered rows with it); a window's sketches are serialized outside it.
:meth:`TelemetryRecorder.snapshot` reads the open window's counts without closing it.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from tinymlops.edge.middleware import CallNext, Request, Response
from tinymlops.errors import UsageError
from tinymlops.observe.energy import EnergyMeter
from tinymlops.observe.memory import peak_rss_bytes, reset_peak
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.privacy import EpsilonBudget, privatize
from tinymlops.observe.sketches import InputProfile
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
_log = math.log
#: a duration at or above this (infinite included) is a clock gone wrong, as NaN is (and would overflow the index)
_ABSURD_S = 1e300


def latency_buckets(histogram: Any) -> LatencyBuckets | None:
    """A :class:`~tinymlops.edge.agent.serving_stats.LatencyHistogram` as the spec's buckets."""
    if histogram.count == 0:
        return None
    return LatencyBuckets(buckets=tuple(sorted(histogram.buckets.items())), min_s=histogram.min, max_s=histogram.max)


def latency_histogram(buckets: LatencyBuckets) -> Any:
    """The spec's buckets back as a ``LatencyHistogram`` (for its percentiles: ``quantiles``)."""
    from tinymlops.edge.agent.serving_stats import LatencyHistogram

    histogram = LatencyHistogram()
    # the same scheme (a test holds the spec's constants to serving_stats'): counts go in as they are
    histogram._counts = dict(buckets.buckets)
    histogram.count = buckets.count
    histogram.min, histogram.max = buckets.min_s, buckets.max_s
    return histogram


class TelemetryRecorder:
    """Telemetry middleware for one bundle (see the module doc).

    ``clock`` (wall clock, seconds since the epoch) stamps windows; ``timer`` (monotonic) times
    calls; ``budget`` defaults to the policy's caps; ``rng`` is for tests of the privacy step.
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
    ) -> None:
        if not isinstance(bundle_id, str) or not _HEX32.match(bundle_id):
            raise UsageError(f"bundle_id must be 32 lower-case hex digits, got {bundle_id!r:.80}")
        self.bundle_id = bundle_id
        self.model = model
        self.policy = policy or TelemetryPolicy()
        self.meter = meter
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
        )

    def _open(self, start: float) -> None:
        self._start = start
        self._errors = 0
        # the latency histogram, kept inline (the hot path): LatencyHistogram's buckets, counts, min and max
        self._counts: dict[int, int] = {}
        self._served = 0
        self._min = math.inf
        self._max = 0.0
        self._joules = 0.0
        self._measured = 0
        self._energy_method: str | None = None
        self._profile = self._new_profile()

    # --- the hot path ---------------------------------------------------------------------------
    def __call__(self, request: Request, call_next: CallNext) -> Response:
        meter = self.meter
        e0 = 0.0
        if meter is not None:
            calls = self._calls
            self._calls = calls + 1
            if calls % self._energy_every:
                meter = None  # not measured this time
            else:
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
        # the histogram's bucket (serving_stats.bucket_of, inline; a test holds them equal)
        if _LOW_S <= seconds < _ABSURD_S:
            index = int(_log(seconds * _INV_LOW) * _INV_LOG_GAMMA) + 1
            if index > _LAST:
                index = _LAST
        else:
            index = 0
            if not 0.0 <= seconds < _ABSURD_S:  # negative, NaN, infinite: a clock that went wrong, not a latency
                seconds = 0.0
        with self._lock:
            counts = self._counts
            counts[index] = counts.get(index, 0) + 1
            self._served += 1
            if seconds < self._min:
                self._min = seconds
            if seconds > self._max:
                self._max = seconds
            if joules >= 0.0:
                assert meter is not None
                self._joules += joules
                self._measured += 1
                self._energy_method = meter.method
            profile = self._profile
            if profile is not None:
                try:
                    profile.add(request.inputs)
                    name = self._output_name
                    scores = response.outputs[name] if name is not None else self._scores(response.outputs)
                    if scores is not None:
                        profile.observe(scores)
                except Exception:
                    self.profile_errors += 1
        return response

    def _drop_meter(self, meter: EnergyMeter) -> None:
        with self._lock:
            self.energy_errors += 1
            if self.meter is meter:
                self.meter = None

    def _scores(self, outputs: Mapping[str, Any]) -> Any:
        """The first output that looks like scores or labels (remembered), or None."""
        for key, value in outputs.items():  # the first output that looks like scores or labels
            if isinstance(value, np.ndarray) and (
                (value.dtype.kind == "f" and value.ndim == 2) or (value.dtype.kind in "iu" and value.ndim == 1)
            ):
                self._output_name = key
                return value
        return None

    # --- windows -----------------------------------------------------------------------------------
    @property
    def window_start(self) -> float:
        return self._start

    def snapshot(self) -> tuple[int, int, Any]:
        """The open window so far, without closing it: (requests, errors, a copy of its latency histogram)."""
        from tinymlops.edge.agent.serving_stats import LatencyHistogram  # at run time: no import cycle

        histogram = LatencyHistogram()
        with self._lock:
            histogram._counts = dict(self._counts)
            histogram.count, histogram.min, histogram.max = self._served, self._min, self._max
            return self._served + self._errors, self._errors, histogram

    def take_window(self, at: float | None = None, *, privatize_histograms: bool = True) -> TelemetryWindow | None:
        """Close the open window at ``at`` (default: the clock), open the next one there, and return
        the closed one — None when it served nothing. See the module doc for privacy."""
        with self._lock:
            end = self._now() if at is None else at
            end = end if end >= self._start else self._start  # a clock set back never ends a window early
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


__all__ = ["TelemetryRecorder", "latency_buckets", "latency_histogram"]
