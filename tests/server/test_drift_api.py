"""The drift API over a live server: reports, reference profiles and drift policies — scopes, strict
bodies and clear 4xx answers for every kind of bad input."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import live_server
from live_server import Plane, error_of
from observe.telemetry_rows import SHIFTED_PIXELS, digits_world, populate
from tinymlops.observe.drift import DRIFT_TESTS, DriftPolicy
from tinymlops.observe.fleet_drift import DriftService
from tinymlops.optimize.pipeline import register_model

plane = live_server.plane  # the live control plane (fixture)
SHIFTED = {f"element:{p}" for p in SHIFTED_PIXELS}


@pytest.fixture(scope="module")
def world() -> Any:
    return digits_world(0)


@pytest.fixture
def fleet(plane: Plane, world: Any) -> Plane:
    populate(plane.ws, world)
    return plane


def test_the_report_over_http_is_the_services_report(fleet: Plane) -> None:
    _, read = fleet.api_key("read")
    now = time.time()
    params = {"since": "2000-01-01T00:00:00Z", "until": "2100-01-01T00:00:00Z"}
    r = fleet.http(read).get("/v1/models/digits/drift", params=params)
    assert r.status_code == 200, r.text
    doc = r.json()
    service = DriftService(fleet.ws.engine, fleet.ws.registry)
    expected = service.report("digits", since=946684800.0, until=4102444800.0).to_dict()

    # the same report, up to the sketches' rank error (KLL compaction is randomized: each merge
    # keeps other items), so the same windows, cohorts, counts and verdicts
    def shape(d: dict[str, Any]) -> list[Any]:
        return [
            [c["label"], c["devices"], c["windows"], c["rows"], c["verdict"], sorted(c["drifted_features"])]
            for c in d["cohorts"]
        ]

    assert shape(doc) == shape(expected)
    assert {k: v for k, v in doc.items() if k not in ("cohorts", "summary")} == {
        k: v for k, v in expected.items() if k not in ("cohorts", "summary")
    }
    assert [f["name"] for f in doc["cohorts"][0]["features"]] == [f["name"] for f in expected["cohorts"][0]["features"]]
    site_b = next(c for c in doc["cohorts"] if c["label"] == "tag=site-b")
    assert set(site_b["drifted_features"]) == SHIFTED
    assert "tag=site-b" in doc["drifted_cohorts"] and "tag=site-a" not in doc["drifted_cohorts"]
    windowed = fleet.http(read).get("/v1/models/digits/drift", params={"window": "1h", "by": "device"}).json()
    assert len(windowed["cohorts"]) == 11
    until = datetime.fromisoformat(windowed["time_range"]["until"]).timestamp()
    assert abs(until - now) < 60  # the window is back from the server's clock
    only = fleet.http(read).get("/v1/models/digits/drift", params={"window": "1h", "cohort": "site-a"}).json()
    assert [c["label"] for c in only["cohorts"]] == ["tag=site-a"] and not only["drifted"]


BAD_REQUESTS: list[tuple[dict[str, Any], int, str]] = [
    ({"window": "1x"}, 400, "bad window '1x'"),
    ({"window": "1h", "since": "2020-01-01T00:00:00Z"}, 400, "either a window"),
    ({"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"}, 400, "is after until"),
    ({"since": "2090-01-01T00:00:00Z"}, 404, "no telemetry from model 'digits'"),
    ({"version": 9}, 404, "has no version 9"),
    ({"window": "1h", "cohort": "site-z"}, 404, "cohort 'site-z'"),
    ({"by": "owner"}, 422, "by"),
    ({"windows": "1h"}, 422, "windows"),
    ({"since": "yesterday"}, 422, "since"),
]


def test_bad_report_requests_are_refused_clearly(fleet: Plane) -> None:
    for params, status, words in BAD_REQUESTS:
        r = fleet.admin.get("/v1/models/digits/drift", params=params)
        assert r.status_code == status, (params, r.text)
        assert words in error_of(r)["message"], (params, r.text)


def test_scopes(fleet: Plane) -> None:
    _, read = fleet.api_key("read")
    _, release = fleet.api_key("release")
    assert fleet.http().get("/v1/models/digits/drift").status_code == 401
    assert fleet.http(read).put("/v1/models/digits/drift/policy", json={}).status_code == 403
    assert fleet.http(read).post("/v1/models/digits/reference", json={}).status_code == 403
    assert fleet.http(release).put("/v1/models/digits/drift/policy", json={}).status_code == 200
    assert fleet.http(release).post("/v1/models/digits/reference", json={}).status_code == 200


def test_unknown_model_and_model_without_reference(plane: Plane, world: Any) -> None:
    assert error_of(plane.admin.get("/v1/models/ghost/drift"))["type"] == "ModelNotFoundError"
    register_model(plane.ws, "bare", world.onnx, derive=False, run_evaluation=False)
    r = plane.admin.get("/v1/models/bare/reference")
    assert r.status_code == 404
    message = error_of(r)["message"]
    assert "no reference profile" in message and "tinymlops dataset add bare" in message
    r = plane.admin.post("/v1/models/bare/reference", json={})
    assert r.status_code == 404 and "no dataset" in error_of(r)["message"]


def test_reference_build_and_show(plane: Plane, world: Any) -> None:
    register_model(plane.ws, "digits", world.onnx, derive=False, run_evaluation=False)
    assert plane.admin.get("/v1/models/digits/reference").status_code == 404
    plane.ws.registry.add_dataset("digits", "holdout", world.eval_npz())
    r = plane.admin.post("/v1/models/digits/reference", json={"dataset": "nope"})
    assert r.status_code == 404 and "holdout" in error_of(r)["message"]
    r = plane.admin.post("/v1/models/digits/reference", json={"dataset": "holdout", "version": 1})
    assert r.status_code == 200, r.text
    built = r.json()
    assert (built["dataset"], built["rows"], built["version"]) == ("holdout", 600, 1)
    assert len(built["features"]) == 72 and built["features"][-1]["derived"] and sum(built["classes"]) == 600
    assert plane.admin.get("/v1/models/digits/reference").json() == built
    again = plane.admin.post("/v1/models/digits/reference", json={"dataset": "holdout"}).json()
    assert again["created_at"] == built["created_at"]  # idempotent
    r = plane.admin.post("/v1/models/digits/reference", json={"dataset": "holdout", "recompute": True})
    assert r.status_code == 422 and "recompute" in error_of(r)["message"]
    r = plane.admin.post("/v1/models/digits/reference", json={"version": "one"})
    assert r.status_code == 422


def test_policy_round_trip_and_validation(fleet: Plane) -> None:
    url = "/v1/models/digits/drift/policy"
    default = fleet.admin.get(url).json()
    assert default["source"] == "default" and default["policy"] == DriftPolicy().to_dict()
    body = {"thresholds": {"ks": 0.001, "wasserstein": 0.15}, "require": "any", "min_samples": 50}
    r = fleet.admin.put(url, json=body)
    assert r.status_code == 200, r.text
    stored = fleet.admin.get(url).json()
    assert stored["source"] == "stored" and stored["updated_by"].startswith("api-key:")
    assert stored["policy"] == DriftPolicy.from_dict(body).to_dict()
    report = fleet.admin.get("/v1/models/digits/drift", params={"window": "1h"}).json()
    assert report["policy_source"] == "stored" and report["policy"] == stored["policy"]
    for bad, status, words in [
        ({"treshold": {"ks": 0.1}}, 422, "treshold"),
        ({"thresholds": {"kolmogorov": 0.1}}, 400, "unknown test 'kolmogorov'"),
        ({"feature_tests": ["ks", "magic"]}, 400, "unknown feature test 'magic'"),
        ({"deciding_feature_tests": ["psi"], "feature_tests": ["ks"]}, 400, "['psi'] are not among"),
        ({"thresholds": {"ks": 2.0}}, 400, "must be in (0, 1)"),
        ({"prediction_tests": ["ks"]}, 400, "cannot be used on predictions"),
        ({"require": "most"}, 422, "require"),
        ({"min_samples": 0}, 422, "min_samples"),
    ]:
        r = fleet.admin.put(url, json=bad)
        assert r.status_code == status, (bad, r.text)
        assert words in error_of(r)["message"], (bad, r.text)
    assert fleet.admin.get(url).json() == stored  # nothing refused was stored
    assert fleet.admin.put("/v1/models/ghost/drift/policy", json={}).status_code == 404


_KEYS = [*DriftPolicy.__dataclass_fields__, "bogus"]
_TESTS = [*sorted(DRIFT_TESTS), "nope"]
_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-2, max_value=2),
    st.integers(-3, 2000),
    st.sampled_from(["all", "any", "bonferroni", "none", "conservative", "point", "worst_case", "x"]),
    st.lists(st.sampled_from(_TESTS), max_size=5),
    st.dictionaries(st.sampled_from(_TESTS), st.floats(min_value=-1, max_value=3), max_size=4),
    st.none(),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(st.sampled_from(_KEYS), _values, max_size=5))
def test_any_policy_body_is_stored_as_validated_or_refused_clearly(plane: Plane, world: Any, body: dict) -> None:
    if "digits" not in {m.name for m in plane.ws.registry.list_models()}:
        register_model(plane.ws, "digits", world.onnx, derive=False, run_evaluation=False)
    url = "/v1/models/digits/drift/policy"
    before = plane.admin.get(url).json()
    r = plane.admin.put(url, json=body)
    assert r.status_code in (200, 400, 422), r.text
    if r.status_code == 200:
        expected = DriftPolicy.from_dict({k: v for k, v in body.items() if v is not None}).to_dict()
        assert r.json()["policy"] == expected == plane.admin.get(url).json()["policy"]
    else:
        assert error_of(r)["message"] and plane.admin.get(url).json() == before
