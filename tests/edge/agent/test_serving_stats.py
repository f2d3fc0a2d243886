"""Serving statistics (tinymlops.edge.agent.serving_stats): percentiles read back from the bounded
histogram are within the stated relative error of the exact ones (on latencies of real ONNX Runtime
calls and on heavy-tailed samples); windows closed, merged and put back never lose or duplicate a
count; concurrent recording loses nothing; the reports they make are valid health reports."""

from __future__ import annotations

import math
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import tiny_onnx
from tinymlops.edge.agent.serving_stats import (
    BUCKETS,
    GAMMA,
    HIGH_S,
    LOW_S,
    RELATIVE_ERROR,
    LatencyHistogram,
    PendingWindows,
    ServingStats,
    Window,
    bucket_of,
    bucket_value,
)
from tinymlops.errors import UsageError
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.health_report import MAX_LATENCY_MS, HealthReport

BUNDLE = "ab" * 16
OTHER = "cd" * 16
QS = (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
#: the stated bound, plus float rounding at bucket edges
TOLERANCE = RELATIVE_ERROR * (1 + 1e-9)


class FakeClock:
    def __init__(self, t: float = 1_718_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def exact_quantile(sorted_values: np.ndarray, q: float) -> float:
    """The nearest-rank quantile (numpy's ``inverted_cdf``), with an exact rank."""
    rank = max(1, math.ceil(Fraction(q) * len(sorted_values)))
    return float(sorted_values[rank - 1])


def histogram_of(values: np.ndarray) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.add(float(v))
    return h


def assert_within_bound(values: np.ndarray) -> None:
    h = histogram_of(values)
    ordered = np.sort(values)
    got = h.quantiles(QS)
    for q, estimate in zip(QS, got, strict=True):
        want = exact_quantile(ordered, q)
        assert abs(estimate - want) <= TOLERANCE * want, (q, estimate, want)
    # numpy agrees on which sample each percentile is (a sample size where no q·n is an integer)
    np.testing.assert_array_equal(
        np.percentile(values, [100 * q for q in QS[1:-1]], method="inverted_cdf"),
        [exact_quantile(ordered, q) for q in QS[1:-1]],
    )
    assert h.quantile(1.0) == ordered[-1] and h.quantile(0.0) == ordered[0]  # clamped to the exact extremes
    assert h.count == len(values) and len(h.buckets) <= BUCKETS


def test_percentiles_of_real_onnxruntime_latencies_are_within_the_stated_error() -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(tiny_onnx(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    latencies = []
    for i in range(4001):  # 4001: a prime, so q·n is never a whole rank
        x = rng.standard_normal((1 + i % 64, 4)).astype(np.float32)  # batch sizes vary: a spread of latencies
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        latencies.append(time.perf_counter() - t0)
    values = np.array(latencies)
    assert values.max() / values.min() > 1.5  # a real spread, not one bucket
    assert_within_bound(values)


def test_percentiles_of_heavy_tailed_latencies_across_the_whole_range_are_within_the_stated_error() -> None:
    rng = np.random.default_rng(1)
    body = rng.lognormal(mean=math.log(2e-3), sigma=0.6, size=9_000)  # ~2 ms typical
    tail = rng.pareto(1.5, size=1_007) * 5e-3 + 1e-2  # stalls, GC pauses …
    extremes = np.array([1.0001e-6, 3e-6, 0.5, 30.0, 3599.0])
    values = np.concatenate([body, tail, extremes])
    rng.shuffle(values)
    assert_within_bound(values)


@given(st.floats(min_value=LOW_S, max_value=HIGH_S, allow_nan=False))
def test_every_value_in_range_is_represented_within_the_relative_error(seconds: float) -> None:
    i = bucket_of(seconds)
    assert 1 <= i < BUCKETS
    assert abs(bucket_value(i) - seconds) <= TOLERANCE * seconds


@given(st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), min_size=2, max_size=50))
def test_buckets_are_monotone(values: list[float]) -> None:
    ordered = sorted(values)
    indexes = [bucket_of(v) for v in ordered]
    assert indexes == sorted(indexes)
    assert all(0 <= i < BUCKETS for i in indexes)


def test_the_histogram_range_and_its_edges() -> None:
    assert math.ceil(math.log(HIGH_S / LOW_S) / math.log(GAMMA)) + 1 == BUCKETS
    assert 1000 < BUCKETS < 1200  # 1 % over 1 µs … 1 h
    h = histogram_of(np.array([0.0, 2e-7, -1.0, float("nan")]))  # a clock gone wrong counts as 0
    assert h.count == 4 and h.min == 0.0 and h.quantile(1.0) == 2e-7
    huge = histogram_of(np.array([7200.0, 7200.0]))  # two hours
    assert huge.quantile(0.5) == 7200.0
    w = Window(BUNDLE, 0.0, 1.0, 2, 0, 0, huge)
    assert w.latency_ms() == dict.fromkeys(("p50", "p95", "p99", "max"), MAX_LATENCY_MS)
    with pytest.raises(UsageError, match="empty"):
        LatencyHistogram().quantile(0.5)
    with pytest.raises(UsageError, match="within"):
        histogram_of(np.array([1.0])).quantile(1.5)


def test_memory_is_bounded_by_the_bucket_count() -> None:
    rng = np.random.default_rng(2)
    h = histogram_of(np.exp(rng.uniform(math.log(1e-7), math.log(1e4), size=200_000)))
    assert h.count == 200_000 and len(h.buckets) <= BUCKETS


# --- windows -------------------------------------------------------------------------------------
def test_a_window_counts_predictions_errors_and_latency_by_the_health_watch_rule() -> None:
    clock = FakeClock()
    stats = ServingStats(BUNDLE, clock=clock)
    assert stats.take() is None  # nothing served: no report
    start = clock.t
    clock.t += 60
    for ms in (1.0, 2.0, 3.0, 4.0):
        stats.record(ms / 1e3)
    stats.record_error()
    stats.record_rejected()  # the caller's mistake: not a prediction
    context = DeviceContext(battery=0.4, network="cellular")
    report = stats.take(context, at=clock.t + 0.5)
    assert report is not None
    assert (report.bundle_id, report.predictions, report.errors) == (BUNDLE, 5, 1)
    assert (report.window_start, report.window_end, report.at) == (start, start + 60.5, start + 60.5)  # closed at `at`
    assert report.latency_ms is not None and report.latency_ms["max"] == 4.0
    assert report.latency_ms["p50"] == pytest.approx(2.0, rel=RELATIVE_ERROR)
    assert report.latency_ms["p99"] == pytest.approx(4.0, rel=RELATIVE_ERROR)
    assert report.context == context and report.error_rate == pytest.approx(0.2)
    assert HealthReport.from_dict(report.to_dict()) == report  # a valid document
    # the next window starts where this one ended; without `at`, the clock closes it
    clock.t += 5
    stats.record_error()
    only_errors = stats.take()
    assert only_errors is not None and only_errors.latency_ms is None
    assert (only_errors.window_start, only_errors.window_end, only_errors.at) == (start + 60.5, clock.t, clock.t)


def test_a_window_with_only_rejected_calls_is_not_reported() -> None:
    stats = ServingStats(BUNDLE, clock=FakeClock())
    stats.record_rejected()
    assert stats.peek().rejected == 1
    assert stats.close() is None


def test_a_clock_set_back_never_makes_a_window_end_before_it_starts() -> None:
    clock = FakeClock(1000.0)
    stats = ServingStats(BUNDLE, clock=clock)
    clock.t = 400.0
    stats.record(0.001)
    window = stats.close()
    assert window is not None and window.start == window.end == 1000.0
    window.report()  # valid
    clock.t = -5.0  # a broken clock
    assert ServingStats(BUNDLE, clock=clock).window_start == 0.0


def test_windows_of_different_bundles_do_not_merge() -> None:
    a, b = Window(BUNDLE, 0.0, 1.0, 1), Window(OTHER, 0.0, 1.0, 1)
    with pytest.raises(UsageError, match="cannot merge"):
        a.merge(b)
    with pytest.raises(UsageError, match="does not belong"):
        ServingStats(BUNDLE).put_back(b)
    with pytest.raises(UsageError, match="bundle_id"):
        ServingStats("")


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("ok"), st.floats(min_value=0.0, max_value=10.0, allow_nan=False)),
        st.tuples(st.just("error"), st.just(0.0)),
        st.tuples(st.just("rejected"), st.just(0.0)),
        st.tuples(st.just("close"), st.floats(min_value=0.0, max_value=100.0)),
        st.tuples(st.just("put_back"), st.integers(min_value=0, max_value=50)),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_closing_and_putting_back_windows_never_loses_or_duplicates_a_count(ops: list[tuple[str, float]]) -> None:
    clock = FakeClock(0.0)
    stats = ServingStats(BUNDLE, clock=clock)
    closed: list[Window] = []  # closed and not (yet) put back: "sent"
    ok: list[float] = []
    errors = rejected = 0
    for op, arg in ops:
        if op == "ok":
            stats.record(arg)
            ok.append(arg)
        elif op == "error":
            stats.record_error()
            errors += 1
        elif op == "rejected":
            stats.record_rejected()
            rejected += 1
        elif op == "close":
            clock.t += arg
            window = stats.close()
            if window is not None:
                assert window.start <= window.end
                closed.append(window)
        elif closed:  # a send failed: put that window back
            stats.put_back(closed.pop(int(arg) % len(closed)))
    last = stats.close()
    windows = closed + ([last] if last is not None else [])
    assert sum(w.predictions for w in windows) == len(ok) + errors
    assert sum(w.errors for w in windows) == errors
    assert sum(w.rejected for w in windows) <= rejected  # rejected-only windows are not kept
    merged = LatencyHistogram()
    for w in windows:
        merged.merge(w.latency)
        assert w.latency.count == w.predictions - w.errors
        w.report()  # every window makes a valid report
    assert merged == histogram_of(np.array(ok))  # bucket for bucket, nothing lost or doubled


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([BUNDLE, OTHER, "ef" * 16, "01" * 16]),
            st.integers(min_value=0, max_value=5),
            st.booleans(),
        ),
        max_size=40,
    ),
    st.integers(min_value=1, max_value=4),
)
def test_pending_windows_keep_every_count_or_account_for_what_they_drop(
    adds: list[tuple[str, int, bool]], max_bundles: int
) -> None:
    pending = PendingWindows(max_bundles)
    total = 0
    for i, (bundle, n, put_back) in enumerate(adds):
        latency = histogram_of(np.full(n, 0.001))
        window = Window(bundle, float(i), float(i + 1), n, 0, 0, latency)
        total += n
        if put_back:
            pending.put_back([window])
        else:
            pending.add(window)
        assert len(pending) <= max_bundles
        assert len({w.bundle_id for w in pending}) == len(pending)  # one window per bundle
    drained = pending.drain()
    assert len(pending) == 0
    assert sum(w.predictions for w in drained) + pending.dropped_predictions == total
    assert all(w.latency.count == w.predictions for w in drained)


def test_pending_windows_put_back_goes_first_and_merges() -> None:
    pending = PendingWindows()
    pending.add(Window(OTHER, 10.0, 20.0, 1))
    pending.put_back([Window(BUNDLE, 0.0, 5.0, 2), Window(OTHER, 0.0, 9.0, 3)])
    first, second = pending.drain()
    assert (first.bundle_id, first.predictions) == (BUNDLE, 2)
    assert (second.bundle_id, second.predictions, second.start, second.end) == (OTHER, 4, 0.0, 20.0)
    with pytest.raises(UsageError, match="max_bundles"):
        PendingWindows(0)


def test_concurrent_recording_while_windows_close_loses_nothing() -> None:
    stats = ServingStats(BUNDLE)
    threads, calls = 4, 5_000
    rng = np.random.default_rng(3)
    plans = [rng.choice(["ok", "error", "rejected"], size=calls, p=[0.85, 0.1, 0.05]) for _ in range(threads)]
    latencies = [rng.uniform(1e-4, 1e-2, size=calls) for _ in range(threads)]
    closed: list[Window] = []
    done = threading.Event()
    barrier = threading.Barrier(threads + 1)

    def serve(plan: np.ndarray, seconds: np.ndarray) -> None:
        barrier.wait()
        for op, s in zip(plan.tolist(), seconds.tolist(), strict=True):
            if op == "ok":
                stats.record(s)
            elif op == "error":
                stats.record_error()
            else:
                stats.record_rejected()

    def close_windows() -> None:
        barrier.wait()
        while not done.is_set():
            window = stats.close()
            if window is not None:
                closed.append(window)

    workers = [threading.Thread(target=serve, args=args) for args in zip(plans, latencies, strict=True)]
    closer = threading.Thread(target=close_windows)
    for t in [*workers, closer]:
        t.start()
    for t in workers:
        t.join()
    done.set()
    closer.join()
    last = stats.close()
    windows = closed + ([last] if last is not None else [])
    assert len(windows) > 1  # windows really closed while calls were being recorded
    ok = np.concatenate([s[p == "ok"] for p, s in zip(plans, latencies, strict=True)])
    errors = sum(int((p == "error").sum()) for p in plans)
    assert sum(w.predictions for w in windows) == len(ok) + errors
    assert sum(w.errors for w in windows) == errors
    merged = LatencyHistogram()
    for w in windows:
        merged.merge(w.latency)
    assert merged == histogram_of(ok)


def test_an_infinite_or_absurd_latency_never_raises_and_never_poisons_the_window() -> None:
    """A clock that jumps gives a duration of inf (or 1e300 s): counted as 0, like NaN — before, the
    bucket index overflowed and the prediction it was measuring raised."""
    histogram = LatencyHistogram()
    for seconds in (math.inf, 1e300, math.nan, -1.0):
        histogram.add(seconds)
    assert histogram.count == 4 and histogram.max == 1e300  # finite: kept as it was, in the top bucket
    assert bucket_of(math.inf) == bucket_of(1e300) == bucket_of(HIGH_S) == BUCKETS - 1
