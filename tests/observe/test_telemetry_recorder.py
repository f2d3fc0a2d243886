"""The telemetry recorder as runtime middleware around a real model (the digits CNN in ONNX Runtime,
and a real bundle through Runtime.open): what a window holds, errors and rejected calls, telemetry
that fails without failing predictions, atomic windows under concurrent calls, privacy by policy."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.edge.agent.serving_stats import GAMMA, LOW_S, LatencyHistogram
from tinymlops.edge.backends import open_backend
from tinymlops.edge.middleware import Request, Response, compose
from tinymlops.errors import InputMismatchError, SpecError, UsageError
from tinymlops.observe.energy import EnergyMeter, PowerModelMeter
from tinymlops.observe.memory import peak_rss_bytes, reset_peak
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.privacy import PrivacyPolicy
from tinymlops.observe.recorder import TelemetryRecorder, latency_buckets, latency_histogram
from tinymlops.observe.sketches import InputProfile
from tinymlops.spec.telemetry import TelemetryBatch

BUNDLE = "d1" * 16


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _endpoint(backend):
    def endpoint(request: Request) -> Response:
        (logits,) = backend.run(request.inputs)
        return Response(outputs={"logits": logits}, models_called=("main",))

    return endpoint


def test_a_window_over_the_digits_cnn(digits_model) -> None:
    backend = open_backend(digits_model.onnx)
    clock = Clock()
    recorder = TelemetryRecorder(BUNDLE, model="digits:1", meter=PowerModelMeter(5.0), clock=clock)
    predict = compose([recorder], _endpoint(backend))
    x = digits_model.x_test
    want = []
    for i in range(len(x)):
        want.append(int(predict(Request(x[i : i + 1])).outputs["logits"].argmax()))
    clock.now = 1_060.0
    window = recorder.take_window()
    assert window is not None and (window.window_start, window.window_end) == (1_000.0, 1_060.0)
    perf = window.performance
    assert (perf.requests, perf.errors) == (len(x), 0) and perf.latency is not None
    assert perf.latency.count == len(x) and perf.latency.min_s > 0
    assert perf.energy is not None and perf.energy.method == "model" and perf.energy.inferences == len(x)
    assert perf.energy.joules_per_inference > 0
    assert perf.peak_memory_bytes is not None and perf.peak_memory_bytes >= 10 * 2**20
    inputs = window.inputs
    assert inputs is not None and inputs.rows == len(x) and inputs.predictions == len(x)
    # [batch, 1, 8, 8]: 64 values per row, so every pixel is an element feature, and the 8 projections
    assert [(f.kind, f.index) for f in inputs.features] == [("element", i) for i in range(64)] + [
        ("projection", j) for j in range(8)
    ]
    pixel_means = x.reshape(len(x), -1).mean(axis=0, dtype=np.float64)
    for i in (0, 19, 36):  # a corner pixel that is always blank, two that the strokes cross
        assert inputs.features[i].mean == pytest.approx(float(pixel_means[i]), rel=1e-6, abs=1e-9)
    assert inputs.classes == tuple(np.bincount(want, minlength=10))
    assert inputs.confidence is not None and sum(inputs.confidence) == len(x)
    assert window.privacy.classes is not None and window.privacy.classes.mechanism == "none"
    # it is a valid document, and the next window starts where this one ended, empty
    batch = TelemetryBatch("0123456789abcdef", 1_061.0, (window,))
    assert TelemetryBatch.from_bytes(batch.to_bytes()) == batch
    assert recorder.take_window() is None and recorder.window_start == 1_060.0


def test_the_latency_histogram_round_trips_with_its_percentiles(digits_model) -> None:
    from tinymlops.edge.agent.serving_stats import LatencyHistogram

    h = LatencyHistogram()
    for s in np.random.default_rng(0).lognormal(-7, 0.5, 2000):
        h.add(float(s))
    back = latency_histogram(latency_buckets(h))
    assert back == h and back.quantiles((0.5, 0.95, 0.99)) == h.quantiles((0.5, 0.95, 0.99))
    assert latency_buckets(LatencyHistogram()) is None


def test_errors_and_rejected_calls(digits_model) -> None:
    backend = open_backend(digits_model.onnx)
    recorder = TelemetryRecorder(BUNDLE)
    predict = compose([recorder], _endpoint(backend))
    x = digits_model.x_test

    def broken(request: Request) -> Response:
        raise RuntimeError("the model fell over")

    failing = compose([recorder], broken)
    for i in range(5):
        predict(Request(x[i : i + 1]))
    for _ in range(2):
        with pytest.raises(RuntimeError):
            failing(Request(x[:1]))
    with pytest.raises(InputMismatchError):
        compose([recorder], lambda r: (_ for _ in ()).throw(InputMismatchError("bad shape")))(Request(x[:1]))
    window = recorder.take_window()
    assert window is not None
    assert (window.performance.requests, window.performance.errors) == (7, 2)
    assert window.performance.latency is not None and window.performance.latency.count == 5
    assert window.inputs is not None and window.inputs.rows == 5  # failing calls are not profiled
    assert recorder.rejected == 1


class FailingMeter(EnergyMeter):
    method = "rapl"

    def __init__(self, fail_after: int) -> None:
        self.reads = 0
        self.fail_after = fail_after

    def read(self) -> float:
        self.reads += 1
        if self.reads > self.fail_after:
            raise OSError("the powercap driver went away")
        return self.reads * 0.5


def test_failing_telemetry_never_fails_a_prediction(digits_model) -> None:
    backend = open_backend(digits_model.onnx)
    meter = FailingMeter(fail_after=6)
    recorder = TelemetryRecorder(BUNDLE, meter=meter)
    predict = compose([recorder], _endpoint(backend))
    x = digits_model.x_test
    for i in range(10):
        predict(Request(x[i : i + 1]))
    # an input the profile cannot take (another row shape than its first) on a chain that accepts anything
    loose = TelemetryRecorder(BUNDLE)
    anything = compose([loose], lambda r: Response(outputs={"y": np.zeros((r.inputs.shape[0], 2), np.float32)}))
    anything(Request(np.zeros((1, 4), np.float32)))
    assert anything(Request(np.zeros((3, 5), np.float32))).outputs["y"].shape == (3, 2)
    assert loose.profile_errors == 1
    w = loose.take_window()
    assert w is not None and w.performance.requests == 2 and w.inputs is not None and w.inputs.rows == 1
    predict(Request(x[:1]))
    assert recorder.profile_errors == 0
    assert recorder.energy_errors == 1 and recorder.meter is None  # dropped after it failed
    window = recorder.take_window()
    assert window is not None and window.performance.requests == 11
    assert window.performance.energy is not None and window.performance.energy.inferences == 3  # measured before
    assert window.performance.energy.method == "rapl"


def race_windows(recorder: TelemetryRecorder, call: Any, calls_per_thread: int, threads: int) -> list[Any]:
    """``threads`` threads each make ``call(i)`` for i in range(calls_per_thread) while another closes
    windows as fast as it can; every window closed, the last one included."""
    windows: list[Any] = []
    done = threading.Event()

    def worker() -> None:
        for i in range(calls_per_thread):
            call(i)

    def taker() -> None:
        while not done.is_set():
            w = recorder.take_window()
            if w is not None:
                windows.append(w)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    closer = threading.Thread(target=taker)
    closer.start()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    done.set()
    closer.join()
    last = recorder.take_window()
    if last is not None:
        windows.append(last)
    return windows


def test_every_call_lands_in_exactly_one_window_under_concurrency(digits_model) -> None:
    backend = open_backend(digits_model.onnx)
    recorder = TelemetryRecorder(BUNDLE, meter=PowerModelMeter(1.0))
    predict = compose([recorder], _endpoint(backend))
    x = digits_model.x_test[:50]
    calls_per_thread, threads = 150, 4
    windows = race_windows(recorder, lambda i: predict(Request(x[i % 50 : i % 50 + 1])), calls_per_thread, threads)
    total = calls_per_thread * threads
    assert sum(w.performance.requests for w in windows) == total
    assert sum(w.inputs.rows for w in windows if w.inputs) == total
    assert sum(sum(w.inputs.classes or ()) for w in windows if w.inputs) == total
    assert all(a.window_end <= b.window_start + 1e-9 for a, b in itertools.pairwise(windows))


def test_privacy_by_policy_and_a_clock_set_back() -> None:
    clock = Clock(5_000.0)
    policy = TelemetryPolicy(
        classes=3,
        privacy=PrivacyPolicy(classes_epsilon=1.0, confidence_epsilon=1.0, window_epsilon=2.0, day_epsilon=2.0),
    )
    recorder = TelemetryRecorder(BUNDLE, policy=policy, clock=clock, rng=np.random.default_rng(0))
    scores = np.array([[0.7, 0.2, 0.1]], np.float32)
    predict = compose([recorder], lambda r: Response(outputs={"p": scores}))
    for _ in range(50):
        predict(Request(np.zeros((1, 4), np.float32)))
    clock.now = 4_000.0  # set back: the window still ends no earlier than it started
    first = recorder.take_window()
    assert first is not None and first.window_end == first.window_start == 5_000.0
    assert first.privacy.epsilon_spent == 2.0 and first.privacy.classes is not None
    assert first.privacy.classes.mechanism == "randomized_response"
    predict(Request(np.zeros((1, 4), np.float32)))
    second = recorder.take_window(at=5_100.0)  # the 24-hour cap is spent: histograms withheld
    assert second is not None and second.privacy.withheld == ("classes", "confidence")
    assert second.inputs is not None and second.inputs.classes is None and second.inputs.rows == 1
    exact = TelemetryRecorder(BUNDLE, policy=policy, clock=clock)
    compose([exact], lambda r: Response(outputs={"p": scores}))(Request(np.zeros((1, 4), np.float32)))
    w = exact.take_window(privatize_histograms=False)
    assert w is not None and w.inputs is not None and w.inputs.classes == (1, 0, 0)


def test_the_policy_table_of_a_manifest() -> None:
    table = {
        "enabled": True,
        "latency_window": 512,
        "max_features": 16,
        "projection_dims": 4,
        "classes": 10,
        "memory": "window",
        "privacy": {"classes_epsilon": 0.5, "day_epsilon": 10.0},
    }
    policy = TelemetryPolicy.from_table(table)
    assert policy.max_features == 16 and policy.privacy.classes_epsilon == 0.5 and policy.privacy.day_epsilon == 10.0
    for bad, names in (
        ({"sketch_size": 3}, "does not implement sketch_size"),
        ({"privacy": {"delta": 1e-6}}, "does not implement delta"),
        ({"privacy": {"classes_epsilon": -1}}, "epsilon"),
        ({"projection_dims": 65}, "projection_dims"),
        ({"sketch_k": 4}, "sketch_k"),
        ({"memory": "always"}, "memory"),
        ({"inputs": "yes"}, "inputs"),
        ({"privacy": []}, "privacy"),
    ):
        with pytest.raises(SpecError, match=names):
            TelemetryPolicy.from_table({"enabled": True, **bad})
    with pytest.raises(UsageError, match="bundle_id"):
        TelemetryRecorder("not-a-bundle")


def test_peak_memory_per_window_when_asked() -> None:
    before = peak_rss_bytes()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
    high = peak_rss_bytes()
    assert high >= before and high >= 60 * 2**20
    del block
    if not reset_peak():
        pytest.skip("this kernel does not let a process reset its peak RSS")
    assert peak_rss_bytes() < high - 32 * 2**20  # the mark restarted from the current size


@pytest.mark.slow
def test_through_a_real_bundle_and_runtime(sqlite_workspace, digits_model, tmp_path: Path) -> None:
    """The recorder as extra middleware of Runtime.open on a signed, encrypted bundle."""
    from tinymlops.bundle.builder import build_bundle
    from tinymlops.bundle.workspace_keys import release_public_key
    from tinymlops.crypto.keys import DeviceKeys
    from tinymlops.edge.runtime import Runtime

    ws = sqlite_workspace
    ref = ws.registry.register("digits", digits_model.onnx).ref
    device = DeviceKeys.generate()
    out = tmp_path / "digits.tmlb"
    build_bundle(ws, ref, target="x86-edge-server", device_public_key=device.wrapping_public, out=out)
    recorder = TelemetryRecorder(BUNDLE, model=ref, policy=TelemetryPolicy(classes=10))
    runtime = Runtime.open(out, device, [release_public_key(ws)], extra_middleware=[recorder])
    x = digits_model.x_test[:100]
    answers = [int(next(iter(runtime.predict(x[i : i + 1]).outputs.values())).argmax()) for i in range(100)]
    window = recorder.take_window()
    assert window is not None and window.model == ref and window.inputs is not None
    assert window.inputs.classes == tuple(np.bincount(answers, minlength=10))
    profile = InputProfile.from_window_dict(window.inputs.to_dict())
    assert profile.rows == 100


class StepTimer:
    """A timer that reads 0 when a call starts and ``next`` when it ends: the call took exactly ``next``."""

    def __init__(self) -> None:
        self.next = 0.0
        self._ends = False

    def __call__(self) -> float:
        self._ends = not self._ends
        return 0.0 if self._ends else self.next


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=64),
            st.integers(0, 1200).map(lambda i: LOW_S * GAMMA**i),  # bucket edges …
            st.integers(0, 1200).map(lambda i: float(np.nextafter(LOW_S * GAMMA**i, 0.0))),  # … and just below
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_recorders_latency_histogram_is_serving_stats_histogram(durations: list[float]) -> None:
    """The recorder keeps its histogram inline (the hot path): the same buckets, count, min and max as
    a LatencyHistogram given the same latencies — bucket edges, negative, NaN and infinite ones included
    (LatencyHistogram.add raises on +inf and on 1e303; the recorder counts them as 0, as NaN, and predicts on)."""
    timer = StepTimer()
    recorder = TelemetryRecorder(BUNDLE, timer=timer, policy=TelemetryPolicy(inputs=False))
    predict = compose([recorder], lambda r: Response(outputs={}))
    want = LatencyHistogram()
    for d in durations:
        timer.next = d
        predict(Request(np.zeros((1, 1), np.float32)))
        want.add(d if d < 1e300 else 0.0)  # an infinite (or absurd) latency is a clock gone wrong, as NaN is
    requests, errors, live = recorder.snapshot()
    assert (requests, errors) == (len(durations), 0) and live == want
    window = recorder.take_window()
    assert window is not None and window.performance.latency is not None
    assert latency_histogram(window.performance.latency) == want


@pytest.mark.parametrize("buffer_rows", [256, 5])
def test_concurrent_predictions_and_windows_lose_no_row_and_count_none_twice(buffer_rows: int) -> None:
    """Calls are buffered per window: threads predicting while another closes windows as fast as it
    can — every call, latency, energy reading, row, moment and prediction is in exactly one window
    (including calls still in the buffer when their window closed, and, with a 5-call buffer, flushes
    that happen between the closes)."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    scores = rng.dirichlet(np.ones(4), size=64).astype(np.float32)
    recorder = TelemetryRecorder(BUNDLE, meter=PowerModelMeter(1.0), buffer_rows=buffer_rows)
    predict = compose(
        [recorder], lambda r: Response(outputs={"p": scores[int(r.metadata["i"]) : int(r.metadata["i"]) + 1]})
    )
    calls_per_thread, threads = 700, 4
    windows = race_windows(
        recorder, lambda i: predict(Request(x[i % 64 : i % 64 + 1], metadata={"i": i % 64})), calls_per_thread, threads
    )
    total = calls_per_thread * threads
    assert len(windows) > 1 and recorder.profile_errors == 0
    assert sum(w.performance.requests for w in windows) == total
    assert sum(w.performance.latency.count for w in windows if w.performance.latency) == total
    assert sum(w.performance.energy.inferences for w in windows if w.performance.energy) == total
    inputs = [w.inputs for w in windows if w.inputs is not None]
    assert sum(i.rows for i in inputs) == total
    assert sum(i.features[0].count for i in inputs) == total
    # the moments add up to the stream's: each row counted once
    want = np.concatenate([x[np.arange(calls_per_thread) % 64]] * threads).astype(np.float64)
    got = sum(i.features[2].mean * i.features[2].count for i in inputs)
    assert got == pytest.approx(want[:, 2].sum(), rel=1e-9, abs=1e-6)
    labels = np.concatenate([scores.argmax(axis=1)[np.arange(calls_per_thread) % 64]] * threads)
    classes = np.zeros(4, np.int64)
    for i in inputs:  # a window's histogram is as long as the largest class it saw
        assert i.classes is not None
        classes[: len(i.classes)] += i.classes
    assert classes.tolist() == np.bincount(labels, minlength=4).tolist()


# --- the deferred path: calls are recorded raw into a buffer, reduced when it fills or a window closes ---


class CountingMeter(EnergyMeter):
    """Reads 1, 2, 3, … joules: every measured call costs exactly 1 J."""

    def __init__(self, method: str = "rapl") -> None:
        self.method = method
        self.reads = 0

    def read(self) -> float:
        self.reads += 1
        return float(self.reads)


class CallTimer:
    """A timer the endpoint moves: it reads 0 when a call starts and whatever the endpoint set when it
    ends (a call that raises reads it once, as the recorder's timer is read once then)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _scores_of(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.dirichlet(np.ones(4)).astype(np.float32)[None, :]


def test_bucket_indices_are_bucket_of_at_every_edge() -> None:
    """The flush buckets latencies with numpy's log; at and around every bucket edge (and for clocks gone
    wrong) the index is bucket_of's, as LatencyHistogram.add would file it."""
    from tinymlops.edge.agent.serving_stats import BUCKETS, bucket_of
    from tinymlops.observe.recorder import bucket_indices

    edges = LOW_S * GAMMA ** np.arange(BUCKETS + 2)
    values = np.concatenate(
        [edges, np.nextafter(edges, 0.0), np.nextafter(edges, np.inf), [0.0, -1.0, np.nan, np.inf, 1e300, 5e-7]]
    )
    values = np.concatenate([values, np.random.default_rng(0).lognormal(-7, 3, 5000)])
    index, counted = bucket_indices(values)
    want = [bucket_of(v if 0.0 <= v < 1e300 else 0.0) for v in values.tolist()]
    assert index.tolist() == want
    assert counted[-5006:-5001].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0] and counted[-5001] == 5e-7


def test_a_window_closed_mid_buffer_holds_every_row_latency_and_reading() -> None:
    """150 calls through a 64-call buffer (two flushes and 22 calls still buffered when the window
    closes), 10 of them raising: the window holds every call, every latency exactly in its bucket,
    every reading, every row and every score — the same as the exact statistics of the stream."""
    timer = CallTimer()
    meter = CountingMeter()
    recorder = TelemetryRecorder(BUNDLE, timer=timer, meter=meter, buffer_rows=64)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(150, 6)).astype(np.float32)
    durations = rng.lognormal(-6, 1, 150)

    def endpoint(request: Request) -> Response:
        i = int(request.metadata["i"])
        timer.now = float(durations[i])
        if i % 15 == 7:
            raise RuntimeError("the model fell over")
        return Response(outputs={"scores": _scores_of(i)})

    predict = compose([recorder], endpoint)
    want = LatencyHistogram()
    ok = []
    for i in range(150):
        timer.now = 0.0
        if i % 15 == 7:
            with pytest.raises(RuntimeError):
                predict(Request(x[i : i + 1], metadata={"i": i}))
            continue
        predict(Request(x[i : i + 1], metadata={"i": i}))
        want.add(float(durations[i]))
        ok.append(i)
    assert 0 < recorder._n < 64  # calls still in the buffer: the window below closes mid-buffer
    requests, errors, live = recorder.snapshot()  # read without closing, buffered calls included
    assert (requests, errors, live) == (150, 10, want)
    window = recorder.take_window()
    assert window is not None
    perf = window.performance
    assert (perf.requests, perf.errors) == (150, 10)
    assert perf.latency is not None and latency_histogram(perf.latency) == want
    assert perf.energy is not None and perf.energy.method == "rapl"
    assert perf.energy.inferences == 140 and perf.energy.joules_per_inference == 1.0
    inputs = window.inputs
    assert inputs is not None and inputs.rows == 140 and inputs.predictions == 140
    exact = x[ok].astype(np.float64)
    for j in range(6):
        f = inputs.features[j]
        assert f.count == 140 and (f.min, f.max) == (float(x[ok, j].min()), float(x[ok, j].max()))
        assert f.mean == pytest.approx(exact[:, j].mean(), rel=1e-9, abs=1e-12)
        assert f.variance == pytest.approx(exact[:, j].var(), rel=1e-6)
    scores = np.concatenate([_scores_of(i) for i in ok])
    assert inputs.classes == tuple(np.bincount(scores.argmax(axis=1), minlength=4))
    assert inputs.confidence is not None and sum(inputs.confidence) == 140
    # nothing is left behind: the next window starts empty
    assert recorder.snapshot()[0] == 0 and recorder.take_window() is None


def test_a_buffer_that_fills_is_flushed_and_wide_rows_fill_it_sooner() -> None:
    recorder = TelemetryRecorder(BUNDLE, buffer_rows=32)
    predict = compose([recorder], lambda r: Response(outputs={"p": np.full((1, 3), 1 / 3, np.float32)}))
    for i in range(31):
        predict(Request(np.full((1, 5), float(i), np.float32)))
    profile = recorder._profile
    assert profile is not None and recorder._n == 31 and len(recorder._rows) == 30  # the first call learnt the shape
    predict(Request(np.full((1, 5), 31.0, np.float32)))
    assert recorder._n == 0 and recorder._rows == [] and recorder._outs == []  # full: reduced
    assert profile.rows == 32 and profile.predictions == 32 and profile._fill == 0
    assert profile.moments()["mean"][0] == pytest.approx(15.5)
    # rows of 784 floats: the buffer holds at most InputProfile.buffer_bytes of them (83 rows), not 256
    wide = TelemetryRecorder(BUNDLE)
    predict = compose([wide], lambda r: Response(outputs={}))
    for _ in range(83):
        predict(Request(np.zeros((1, 784), np.float32)))
    assert wide._cap == 83 and wide._n == 0 and wide._profile is not None and wide._profile.rows == 83


def _reference(calls: list[tuple[np.ndarray, object]], classes: int | None = None) -> tuple[InputProfile, int]:
    """What the recorder did before it deferred its work: each call's inputs then outputs into a profile,
    one after the other, an error counted when the profile refuses either."""
    profile = InputProfile(classes=classes)
    errors = 0
    for x, y in calls:
        try:
            profile.add(x)
            profile.observe(y)
        except UsageError:
            errors += 1
    return profile, errors


@pytest.mark.parametrize("buffer_rows", [1, 4, 256])
def test_inputs_and_outputs_of_different_shapes_across_calls_are_handled_as_before(buffer_rows: int) -> None:
    rng = np.random.default_rng(8)
    f32 = np.float32
    calls: list[tuple[np.ndarray, object]] = []
    for _ in range(40):  # rows and scores of one shape, the buffer's path
        calls.append((rng.normal(size=(1, 4)).astype(f32), rng.dirichlet(np.ones(3))[None, :].astype(f32)))
    calls += [
        (rng.normal(size=(5, 4)).astype(f32), rng.dirichlet(np.ones(3), size=5).astype(f32)),  # a batch
        (rng.normal(size=(1, 4)), rng.dirichlet(np.ones(3))[None, :]),  # float64 rows and scores
        (rng.normal(size=(1, 5)).astype(f32), rng.dirichlet(np.ones(3))[None, :].astype(f32)),  # refused row
        (rng.normal(size=(1, 4)).astype(f32), np.array([2])),  # integer labels after scores: refused
        (rng.normal(size=(1, 4)).astype(f32), rng.dirichlet(np.ones(6))[None, :].astype(f32)),  # 6 classes
        (rng.normal(size=(1, 4)).astype(f32), np.zeros((1, 2, 3), f32)),  # outputs it cannot read
        (rng.normal(size=(1, 4)).astype(np.int64), rng.dirichlet(np.ones(3))[None, :].astype(f32)),  # int rows
    ]
    for i in range(30):  # back to the first shapes, and scores with a non-finite row now and then
        scores = rng.dirichlet(np.ones(3))[None, :].astype(f32)
        if i % 11 == 3:
            scores[0, 1] = np.nan
        calls.append((rng.normal(size=(1, 4)).astype(f32), scores))
    recorder = TelemetryRecorder(BUNDLE, buffer_rows=buffer_rows)
    outputs = iter([y for _, y in calls])
    predict = compose([recorder], lambda r: Response(outputs={"y": next(outputs)}))
    for x, _ in calls:
        predict(Request(x))
    window = recorder.take_window()
    reference, errors = _reference(calls)
    assert window is not None and window.inputs is not None
    assert recorder.profile_errors == errors == 3  # a refused row, labels after scores, unreadable outputs
    got, want = window.inputs, reference.summary()
    assert (got.rows, got.predictions, got.classes, got.confidence) == (
        want.rows,
        want.predictions,
        want.classes,
        want.confidence,
    )
    for a, b in zip(got.features, want.features, strict=True):
        assert (a.kind, a.index, a.count, a.nonfinite) == (b.kind, b.index, b.count, b.nonfinite)
        # a projection is a float32 matrix product: blocks of other sizes may round its last bit otherwise
        exact = a.kind == "element"
        assert (a.min, a.max) == ((b.min, b.max) if exact else pytest.approx((b.min, b.max), rel=1e-6))
        assert a.mean == pytest.approx(b.mean, rel=1e-9 if exact else 1e-6, abs=1e-12 if exact else 1e-6)


def test_scores_of_another_class_count_are_refused_by_a_policy_that_fixes_it() -> None:
    recorder = TelemetryRecorder(BUNDLE, policy=TelemetryPolicy(classes=3), buffer_rows=8)
    outputs = iter([np.full((1, 3), 1 / 3, np.float32)] * 10 + [np.full((1, 4), 0.25, np.float32)] * 2)
    predict = compose([recorder], lambda r: Response(outputs={"p": next(outputs)}))
    for _ in range(12):
        predict(Request(np.zeros((1, 2), np.float32)))
    window = recorder.take_window()
    assert recorder.profile_errors == 2 and window is not None and window.inputs is not None
    assert window.inputs.rows == 12 and window.inputs.predictions == 10 and window.inputs.classes == (10, 0, 0)


def test_energy_is_summed_per_method_and_inferences_are_the_calls_measured() -> None:
    """A meter replaced by one of the same method keeps adding; one of another method restarts the
    window's energy (a window has one method); sampling counts only the calls it measured."""
    recorder = TelemetryRecorder(BUNDLE, meter=CountingMeter("rapl"), buffer_rows=4)
    predict = compose([recorder], lambda r: Response(outputs={}))
    for _ in range(6):
        predict(Request(np.zeros((1, 1), np.float32)))
    recorder.meter = CountingMeter("rapl")
    for _ in range(3):
        predict(Request(np.zeros((1, 1), np.float32)))
    w = recorder.take_window()
    assert w is not None and w.performance.energy is not None
    assert (w.performance.energy.method, w.performance.energy.inferences) == ("rapl", 9)
    for _ in range(5):
        predict(Request(np.zeros((1, 1), np.float32)))
    recorder.meter = PowerModelMeter(2.0, cpu_clock=iter(range(0, 1000, 3)).__next__)
    for _ in range(2):
        predict(Request(np.zeros((1, 1), np.float32)))
    w = recorder.take_window()
    assert w is not None and w.performance.energy is not None and w.performance.requests == 7
    assert (w.performance.energy.method, w.performance.energy.inferences) == ("model", 2)
    assert w.performance.energy.joules_per_inference == 6.0  # 3 CPU seconds × 2 W per call
    sampled = TelemetryRecorder(BUNDLE, meter=CountingMeter(), policy=TelemetryPolicy(energy_every=4))
    predict = compose([sampled], lambda r: Response(outputs={}))
    for _ in range(10):
        predict(Request(np.zeros((1, 1), np.float32)))
    w = sampled.take_window()
    assert w is not None and w.performance.requests == 10 and w.performance.energy is not None
    assert w.performance.energy.inferences == 3 and w.performance.energy.joules_per_inference == 1.0  # calls 0, 4, 8


def test_a_reading_of_a_meter_replaced_while_the_call_ran_is_not_taken() -> None:
    recorder = TelemetryRecorder(BUNDLE, meter=CountingMeter("rapl"))

    def endpoint(request: Request) -> Response:
        if request.metadata.get("swap"):
            recorder.meter = CountingMeter("model")  # another thread would do this; here, mid-call
        return Response(outputs={})

    predict = compose([recorder], endpoint)
    predict(Request(np.zeros((1, 1), np.float32)))
    predict(Request(np.zeros((1, 1), np.float32), metadata={"swap": True}))
    predict(Request(np.zeros((1, 1), np.float32)))
    w = recorder.take_window()
    assert w is not None and w.performance.requests == 3 and w.performance.energy is not None
    assert (w.performance.energy.method, w.performance.energy.inferences) == ("model", 1)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9),
    st.lists(
        st.one_of(
            st.tuples(st.just("ok"), st.integers(1, 3), st.floats(1e-7, 10.0)),
            st.tuples(st.just("raise"), st.just(1), st.just(0.0)),
            st.tuples(st.just("close"), st.just(0), st.just(0.0)),
        ),
        max_size=60,
    ),
)
def test_every_call_lands_in_exactly_one_window_whatever_the_buffer(buffer_rows: int, steps: list) -> None:
    """Calls (batches of 1 to 3 rows), failures and window closes in any order, through buffers of 1 to 9
    calls: every window holds exactly its own calls — requests, errors, latencies, rows, predictions."""
    timer = CallTimer()
    recorder = TelemetryRecorder(BUNDLE, timer=timer, buffer_rows=buffer_rows, policy=TelemetryPolicy(classes=3))

    def endpoint(request: Request) -> Response:
        timer.now = float(request.metadata["seconds"])
        if request.metadata.get("raise"):
            raise RuntimeError("down")
        n = request.inputs.shape[0]
        return Response(outputs={"p": np.tile(np.array([[0.1, 0.7, 0.2]], np.float32), (n, 1))})

    predict = compose([recorder], endpoint)
    want = {"requests": 0, "errors": 0, "rows": 0, "latency": LatencyHistogram()}

    def close() -> None:
        window = recorder.take_window()
        if want["requests"] == 0:
            assert window is None
            return
        assert window is not None
        perf = window.performance
        assert (perf.requests, perf.errors) == (want["requests"], want["errors"])
        got = latency_histogram(perf.latency) if perf.latency is not None else LatencyHistogram()
        assert got == want["latency"]
        rows = window.inputs.rows if window.inputs is not None else 0
        assert rows == want["rows"]
        if window.inputs is not None and rows:
            assert window.inputs.classes == (0, rows, 0) and window.inputs.features[0].count == rows
        want.update(requests=0, errors=0, rows=0, latency=LatencyHistogram())

    for kind, batch, seconds in steps:
        if kind == "close":
            close()
            continue
        timer.now = 0.0
        request = Request(
            np.full((batch, 2), seconds, np.float32), metadata={"raise": kind == "raise", "seconds": seconds}
        )
        want["requests"] += 1
        if kind == "raise":
            with pytest.raises(RuntimeError):
                predict(request)
            want["errors"] += 1
            continue
        predict(request)
        want["rows"] += batch
        want["latency"].add(seconds)
    close()
    assert recorder.profile_errors == 0
