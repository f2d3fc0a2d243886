"""The middleware chain: order, short-circuit, refusal of unknown policies, the latency recorder."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlops.edge.middleware import (
    LatencyRecorder,
    Request,
    Response,
    build_chain,
    compose,
)
from tinymlops.errors import SpecError


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
    chain = build_chain({"telemetry": {"enabled": True, "latency_window": 8}, "guard": {"enabled": False}})
    assert len(chain) == 1 and isinstance(chain[0], LatencyRecorder)
    assert build_chain({"telemetry": {"enabled": False}}) == []
    with pytest.raises(SpecError, match="does not implement"):
        build_chain({"metering": {"enabled": True, "license": "x"}})
    with pytest.raises(SpecError, match="does not implement"):
        build_chain({"telemetry": {"enabled": True, "sketches": True}})
    with pytest.raises(SpecError, match="latency_window"):
        build_chain({"telemetry": {"enabled": True, "latency_window": "big"}})


def test_latency_recorder_counts_and_bounds_memory() -> None:
    rec = LatencyRecorder(capacity=16)
    handler = compose([rec], _endpoint)
    for _ in range(100):
        handler(Request(np.zeros(3)))

    def boom(_req):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        compose([rec], boom)(Request(np.zeros(3)))
    summary = rec.summary()
    assert summary["count"] == 100 and summary["errors"] == 1 and summary["window"] == 16
    assert summary["p99_ms"] >= summary["p50_ms"] >= 0
