"""Health reports over HTTP (``POST /v1/devices/me/health``): a device's report of the bundle it runs
is stored linked to the release and variant that published it; malformed reports get a 4xx JSON
error and store nothing; only devices may report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import delivery_world
from delivery_world import World

delivery = delivery_world.delivery  # the live world (fixture)


def _health(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "spec_version": "1.0",
        "bundle_id": "0" * 32,
        "window_start": 100.0,
        "window_end": 160.0,
        "predictions": 40,
        "errors": 2,
        "latency_ms": {"p50": 1.5, "p95": 2.5, "p99": 4.0, "max": 9.0},
        "context": {"spec_version": "1.0", "battery": 0.4, "charging": False, "network": "cellular"},
        "at": 161.0,
    }
    doc.update(overrides)
    return doc


def _stored(world: World) -> list[tuple[Any, ...]]:
    with world.ws.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text("SELECT * FROM health_reports ORDER BY id")).all()]


def test_a_health_report_is_stored_with_the_release_and_variant_that_published_the_bundle(
    delivery: World, tmp_path: Path
) -> None:
    device = delivery.connect(tmp_path / "dev")
    release = delivery.release("tiny:2", [device.device_id])
    bundle_id = release["assignments"][0]["bundle_id"]
    r = device.client.request("POST", "/v1/devices/me/health", json_body=_health(bundle_id=bundle_id))
    assert r.status == 201, r.body
    doc = r.json()
    assert doc["release_id"] == release["id"] and doc["ref"] == "tiny:2" and doc["profile"] == "rpi-4"
    assert (doc["predictions"], doc["errors"], doc["latency_ms"]["p95"]) == (40, 2, 2.5)
    assert doc["context"]["network"] == "cellular"
    services = delivery.plane.server.app.state.services
    assert services.releases.health.latest_context(device.device_id).battery == 0.4
    stats = services.releases.health.bundle_stats([(device.device_id, bundle_id)])
    assert (stats.predictions, stats.errors, stats.p50_ms, stats.devices) == (40, 2, 1.5, 1)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (_health(errors=41), 400),  # more errors than predictions
        (_health(window_end=50.0), 400),  # the window ends before it starts
        (_health(latency_ms={"p50": 3.0, "p95": 2.0, "p99": 4.0, "max": 9.0}), 400),  # not monotone
        (_health(latency_ms=None), 400),  # successful calls but no latency
        (_health(bundle_id="XYZ"), 422),
        (_health(predictions=-1), 422),
        (_health(latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0}), 422),
        (_health(latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 1e12}), 422),
        (_health(context={"spec_version": "1.0", "network": "carrier-pigeon"}), 422),
        (_health(spec_version="2.0"), 422),
        ({**_health(), "inputs": [1, 2, 3]}, 422),  # raw data has no place in a health report
        (b'{"spec_version": "1.0", "bundle_id": ', 400),
    ],
)
def test_a_malformed_health_report_is_refused_and_stores_nothing(
    delivery: World, tmp_path: Path, body: Any, status: int
) -> None:
    device = delivery.connect(tmp_path / "dev")
    before = _stored(delivery)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = device.client.request(
        "POST", "/v1/devices/me/health", body=raw, headers={"Content-Type": "application/json"}, check=False
    )
    assert r.status == status, r.body
    err = json.loads(r.body)["error"]
    assert err["type"] in ("ValidationError", "MalformedJSONError", "SpecError") and err["message"]
    assert _stored(delivery) == before


def test_health_reports_need_a_device(delivery: World, tmp_path: Path) -> None:
    assert delivery.plane.http().post("/v1/devices/me/health", json=_health()).status_code == 401
    assert delivery.plane.admin.post("/v1/devices/me/health", json=_health()).status_code == 403
    assert _stored(delivery) == []
    device = delivery.connect(tmp_path / "dev")
    r = device.client.request(
        "POST", "/v1/devices/me/health", json_body=_health(predictions=0, errors=0, latency_ms=None)
    )
    assert r.status == 201 and r.json()["release_id"] is None
