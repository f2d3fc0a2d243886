"""Windows the recorder makes from generated streams round-trip through the spec's bytes, and two
windows merged equal one window over both streams (what the upload store relies on to coarsen
instead of dropping)."""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.edge.middleware import Request, Response, compose
from tinymlops.errors import UsageError
from tinymlops.observe.energy import EnergyMeter
from tinymlops.observe.policy import TelemetryPolicy
from tinymlops.observe.privacy import PrivacyPolicy
from tinymlops.observe.recorder import TelemetryRecorder
from tinymlops.observe.windows import merge_windows
from tinymlops.spec.telemetry import TelemetryBatch, TelemetryWindow

BUNDLE = "e7" * 16


class StepMeter(EnergyMeter):
    """0.25 J per read step (deterministic energy)."""

    method = "model"

    def __init__(self) -> None:
        self.value = 0.0

    def read(self) -> float:
        self.value += 0.25
        return self.value


def _recorder(policy: TelemetryPolicy | None = None, start: float = 100.0) -> TelemetryRecorder:
    ticks = itertools.count()

    def timer() -> float:  # a call starts at 0 and takes (its number mod 7 + 1) ms: exact latencies
        n = next(ticks)
        return ((n // 2) % 7 + 1) * 1e-3 if n % 2 else 0.0

    return TelemetryRecorder(BUNDLE, model="m:1", policy=policy, meter=StepMeter(), clock=lambda: start, timer=timer)


def _run(recorder: TelemetryRecorder, inputs: np.ndarray, scores: np.ndarray, fail_every: int = 0) -> None:
    state = {"i": 0}

    def endpoint(request: Request) -> Response:
        i = state["i"]
        state["i"] += 1
        if fail_every and i % fail_every == fail_every - 1:
            raise RuntimeError("failed")
        return Response(outputs={"scores": scores[i : i + 1]})

    chain = compose([recorder], endpoint)
    for i in range(len(inputs)):
        with contextlib.suppress(RuntimeError):
            chain(Request(inputs[i : i + 1]))


def test_two_windows_merged_equal_one_window_over_both() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 20)).astype(np.float32)
    scores = rng.random((900, 5)).astype(np.float32)
    a, b, whole = _recorder(), _recorder(start=100.0), _recorder()
    _run(a, x[:400], scores[:400], fail_every=50)
    _run(b, x[400:], scores[400:], fail_every=50)
    _run(whole, x[:400], scores[:400], fail_every=50)
    _run(whole, x[400:], scores[400:], fail_every=50)
    wa, wb, ww = a.take_window(at=160.0), b.take_window(at=220.0), whole.take_window(at=220.0)
    assert wa is not None and wb is not None and ww is not None
    merged = merge_windows(wa, wb)
    assert (merged.window_start, merged.window_end) == (100.0, 220.0)
    pm, pw = merged.performance, ww.performance
    assert (pm.requests, pm.errors) == (pw.requests, pw.errors) == (900, 18)
    assert pm.latency == pw.latency  # the same buckets: the merged window's percentiles are the union's
    assert pm.energy is not None and pw.energy is not None
    assert pm.energy.inferences == pw.energy.inferences and pm.energy.joules_per_inference == pytest.approx(0.25)
    mi, wi = merged.inputs, ww.inputs
    assert mi is not None and wi is not None
    assert (mi.rows, mi.predictions, mi.classes, mi.confidence) == (wi.rows, wi.predictions, wi.classes, wi.confidence)
    for fm, fw in zip(mi.features, wi.features, strict=True):
        assert (fm.kind, fm.index, fm.count) == (fw.kind, fw.index, fw.count)
        assert (fm.min, fm.max) == pytest.approx((fw.min, fw.max), rel=1e-6)
        # projections are float32 matrix products, whose rounding depends on how rows were blocked
        assert fm.mean == pytest.approx(fw.mean, rel=1e-6, abs=1e-9)
        assert fm.variance == pytest.approx(fw.variance, rel=1e-6)
    TelemetryBatch.from_bytes(TelemetryBatch("0" * 16, 221.0, (merged,)).to_bytes())


def test_what_does_not_merge() -> None:
    x = np.zeros((3, 4), np.float32)
    scores = np.full((3, 2), 0.5, np.float32)
    a = _recorder()
    _run(a, x, scores)
    wa = a.take_window()
    assert wa is not None
    other = TelemetryWindow(
        bundle_id="f" * 32, window_start=0.0, window_end=1.0, performance=wa.performance, inputs=None
    )
    with pytest.raises(UsageError, match="bundle"):
        merge_windows(wa, other)
    private = _recorder(TelemetryPolicy(privacy=PrivacyPolicy(classes_epsilon=1.0)))
    _run(private, x, scores)
    wp = private.take_window()
    assert wp is not None
    with pytest.raises(UsageError, match="exact"):
        merge_windows(wa, wp)


@given(
    rows=st.integers(1, 60),
    width=st.sampled_from([1, 3, 70]),
    classes=st.integers(2, 6),
    fail_every=st.sampled_from([0, 3]),
    nan=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_generated_windows_round_trip_through_bytes(
    rows: int, width: int, classes: int, fail_every: int, nan: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width)).astype(np.float32)
    if nan:
        x[rng.integers(0, rows), rng.integers(0, width)] = np.nan
    scores = rng.normal(size=(rows, classes)).astype(np.float32)
    recorder = _recorder(TelemetryPolicy(projection_dims=int(rng.integers(0, 4))))
    _run(recorder, x, scores, fail_every)
    window = recorder.take_window(at=200.0)
    assert window is not None
    batch = TelemetryBatch("1" * 16, 201.0, (window,))
    raw = batch.to_bytes()
    assert TelemetryBatch.from_bytes(raw) == batch and TelemetryBatch.from_bytes(raw).to_bytes() == raw
    assert merge_windows(window, window).performance.requests == 2 * window.performance.requests
