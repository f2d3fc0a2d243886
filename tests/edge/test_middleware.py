"""The middleware chain: order, short-circuit, refusal of unknown policies, the telemetry policy's recorder."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlops.edge.middleware import (
    PolicyContext,
    Request,
    Response,
    build_chain,
    compose,
)
from tinymlops.errors import SpecError, UsageError
from tinymlops.observe.energy import PowerModelMeter
from tinymlops.observe.recorder import TelemetryRecorder

BUNDLE = "c3" * 16


def _endpoint(request: Request) -> Response:
    return Response({"y": request.inputs * 2}, ("main",))


def test_chain_runs_in_order_and_can_rewrite_and_short_circuit() -> None:
    seen: list[str] = []

    def first(req, nxt):
        seen.append("first-in")
        req.inputs = req.inputs + 1
        resp = nxt(req)
        seen.append("first-out")
        return resp

    def second(req, nxt):
        seen.append("second")
        if req.metadata.get("stop"):
            return Response({"y": "refused"})
        return nxt(req)

    handler = compose([first, second], _endpoint)
    out = handler(Request(np.array([1.0])))
    assert out.outputs["y"].tolist() == [4.0]
    assert seen == ["first-in", "second", "first-out"]
    assert handler(Request(np.array([1.0]), {"stop": True})).outputs["y"] == "refused"


def test_policies_build_in_canonical_order_and_unknown_is_refused() -> None:
    context = PolicyContext(BUNDLE, model="tiny:1")
    chain = build_chain(
        {"telemetry": {"enabled": True, "latency_window": 8}, "guard": {"enabled": False}}, context=context
    )
    assert len(chain) == 1 and isinstance(chain[0], TelemetryRecorder)
    assert build_chain({"telemetry": {"enabled": False}}) == []
    with pytest.raises(SpecError, match="does not implement"):
        build_chain({"metering": {"enabled": True, "license": "x"}}, context=context)
    with pytest.raises(SpecError, match="does not implement sketches"):
        build_chain({"telemetry": {"enabled": True, "sketches": True}}, context=context)
    with pytest.raises(SpecError, match="latency_window"):
        build_chain({"telemetry": {"enabled": True, "latency_window": "big"}}, context=context)
    with pytest.raises(SpecError, match="'sketch_k'"):
        build_chain({"telemetry": {"enabled": True, "sketch_k": 3}}, context=context)
    with pytest.raises(SpecError, match="privacy: this runtime does not implement rows_epsilon"):
        build_chain({"telemetry": {"enabled": True, "privacy": {"rows_epsilon": 1.0}}}, context=context)
    with pytest.raises(UsageError, match="PolicyContext"):  # a recorder must know its bundle
        build_chain({"telemetry": {"enabled": True}})


def test_the_telemetry_policy_builds_the_recorder_bound_to_the_bundle() -> None:
    meter = PowerModelMeter(2.0)
    now = [500.0]
    table = {"enabled": True, "classes": 2, "projection_dims": 0, "privacy": {"classes_epsilon": 0.5}}
    (recorder,) = build_chain({"telemetry": table}, context=PolicyContext(BUNDLE, "tiny:3", meter, lambda: now[0]))
    assert isinstance(recorder, TelemetryRecorder)
    assert (recorder.bundle_id, recorder.model, recorder.meter) == (BUNDLE, "tiny:3", meter)
    assert recorder.policy.classes == 2 and recorder.policy.privacy.classes_epsilon == 0.5

    def endpoint(request: Request) -> Response:
        return Response({"p": np.array([[0.9, 0.1]], np.float32)}, ("main",))

    handler = compose([recorder], endpoint)
    for _ in range(30):
        handler(Request(np.ones((1, 3), np.float32)))

    def boom(_req):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        compose([recorder], boom)(Request(np.zeros((1, 3), np.float32)))
    now[0] = 560.0
    window = recorder.take_window(privatize_histograms=False)
    assert window is not None and (window.bundle_id, window.model) == (BUNDLE, "tiny:3")
    assert (window.performance.requests, window.performance.errors) == (31, 1)
    assert window.performance.energy is not None and window.performance.energy.method == "model"
    assert window.inputs is not None and window.inputs.classes == (30, 0)
    assert (window.window_start, window.window_end) == (500.0, 560.0)
