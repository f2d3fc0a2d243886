"""Releases and install reports over HTTP: bad input gets a clear 4xx JSON error and changes nothing;
scopes are enforced; the TUF routes answer 404 for what is not there and 400 for names that are not
the repository's; the server keeps the repository's timestamp fresh on its own."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import delivery_world
from delivery_world import World, open_world, register_tiny
from live_server import error_of
from tinymlops.release import ExpiryPolicy, UpdateRepository

delivery = delivery_world.delivery  # the live world (fixture)

RELEASE_TABLES = ("releases", "release_assignments", "install_reports", "device_deployments")


def _rows(world: World) -> dict[str, list[tuple[Any, ...]]]:
    with world.ws.engine.connect() as conn:
        return {t: sorted(map(tuple, conn.execute(text(f"SELECT * FROM {t}")).all()), key=repr) for t in RELEASE_TABLES}


def _repo_state(world: World) -> tuple[bytes, list[str]]:
    ts = world.tuf / "metadata" / "timestamp.json"
    targets = sorted(str(p.relative_to(world.tuf)) for p in (world.tuf / "targets").rglob("*") if p.is_file())
    return (ts.read_bytes() if ts.exists() else b""), targets


def _report(**overrides: Any) -> dict[str, Any]:
    doc = {
        "spec_version": "1.0",
        "status": "installed",
        "reason": "ok",
        "bundle_id": "0" * 32,
        "sha256": "1" * 64,
        "slot": "a",
        "active_bundle_id": "0" * 32,
        "error": None,
        "timings": {"verify_s": 0.01},
        "at": 1.0,
    }
    doc.update(overrides)
    return doc


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"model": "nosuchmodel"}, 404, "ModelNotFoundError"),
        ({"model": "tiny:9"}, 404, "ModelNotFoundError"),
        ({"model": "tiny:1/int8-dynamic"}, 404, "ModelNotFoundError"),
        ({"model": "tiny", "devices": ["0123456789abcdef"]}, 404, "NotFoundError"),
        ({"model": "tiny", "tags": ["nobody-has-this"]}, 404, "NotFoundError"),
        ({"model": "tiny:one"}, 422, "ValidationError"),
        ({"model": "tiny", "devices": []}, 422, "ValidationError"),
        ({"model": "tiny", "urgent": "yes"}, 422, "ValidationError"),
        ({"model": "tiny", "surprise": 1}, 422, "ValidationError"),
    ],
)
def test_a_bad_release_request_is_refused_and_changes_nothing(
    delivery: World, tmp_path: Path, body: dict[str, Any], status: int, error_type: str
) -> None:
    delivery.connect(tmp_path / "dev")
    before = (_rows(delivery), _repo_state(delivery))
    r = delivery.plane.http(delivery.release_key).post("/v1/releases", json=body)
    assert r.status_code == status, r.text
    assert error_of(r)["type"] == error_type
    assert (_rows(delivery), _repo_state(delivery)) == before
    releases = Path(delivery.ws.root) / "releases"
    assert not releases.exists() or not any(releases.iterdir())


def test_releasing_needs_the_release_scope(delivery: World, tmp_path: Path) -> None:
    device = delivery.connect(tmp_path / "dev")
    before = (_rows(delivery), _repo_state(delivery))
    body = {"model": "tiny:1", "devices": [device.device_id]}
    assert error_of(delivery.plane.http().post("/v1/releases", json=body))["type"] == "AuthenticationError"
    r = delivery.plane.http(delivery.read_key).post("/v1/releases", json=body)
    assert r.status_code == 403 and "release" in error_of(r)["message"]
    r = device.client.request("POST", "/v1/releases", json_body=body, auth="bearer", check=False)
    assert r.status == 403
    assert (_rows(delivery), _repo_state(delivery)) == before
    assert delivery.plane.admin.post("/v1/releases", json=body).status_code == 201  # admin includes release


def test_a_revoked_device_cannot_be_released_to(delivery: World, tmp_path: Path) -> None:
    device = delivery.connect(tmp_path / "dev")
    assert delivery.plane.admin.post(f"/v1/devices/{device.device_id}/revoke").status_code == 200
    before = _rows(delivery)
    body = {"model": "tiny", "devices": [device.device_id]}
    r = delivery.plane.http(delivery.release_key).post("/v1/releases", json=body)
    assert r.status_code == 409 and error_of(r)["type"] == "ConflictError"
    assert _rows(delivery) == before


def test_a_release_nothing_fits_is_recorded_and_publishes_nothing(delivery: World, tmp_path: Path) -> None:
    mcu = delivery.connect(tmp_path / "mcu", profile="mcu-cortex-m7")
    repo_before = _repo_state(delivery)
    doc = delivery.release("tiny:1", [mcu.device_id])
    assert (doc["status"], doc["published"], doc["skipped"]) == ("empty", 0, 1)
    reason = doc["assignments"][0]["reason"]
    assert "no variant fits profile mcu-cortex-m7" in reason and "has only litert" in reason
    assert _repo_state(delivery) == repo_before


def test_release_listing_and_lookup(delivery: World, tmp_path: Path) -> None:
    device = delivery.connect(tmp_path / "dev")
    doc = delivery.release("tiny:2", [device.device_id], urgent=True)
    reader = delivery.plane.http(delivery.read_key)
    listed = reader.get("/v1/releases", params={"limit": 1}).json()
    assert [r["id"] for r in listed] == [doc["id"]] and listed[0]["urgent"] is True and "assignments" not in listed[0]
    assert reader.get(f"/v1/releases/{doc['id']}").json()["assignments"][0]["ref"] == "tiny:2"
    assert error_of(reader.get("/v1/releases/0123456789abcdef"))["type"] == "NotFoundError"
    assert reader.get("/v1/releases/not-an-id").status_code == 422
    assert reader.get("/v1/releases", params={"limit": 0}).status_code == 422
    assert reader.get("/v1/releases", params={"limt": 5}).status_code == 422


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (_report(status="exploded"), 422),
        (_report(bundle_id="XYZ"), 422),
        (_report(slot="c"), 422),
        (_report(timings={"verify_s": -1}), 422),
        (_report(timings={"Bad Name": 1}), 422),
        (_report(at="yesterday"), 422),
        (_report(spec_version="2.0"), 422),
        ({**_report(), "extra": True}, 422),
        ({"status": "installed"}, 422),
        (_report(reason="x" * 5000), 422),
        (b'{"spec_version": "1.0", "status": ', 400),
        (b"[1, 2]", 422),
    ],
)
def test_a_malformed_install_report_is_refused_and_stores_nothing(
    delivery: World, tmp_path: Path, body: Any, status: int
) -> None:
    device = delivery.connect(tmp_path / "dev")
    before = _rows(delivery)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = device.client.request(
        "POST", "/v1/devices/me/installs", body=raw, headers={"Content-Type": "application/json"}, check=False
    )
    assert r.status == status, r.body
    err = json.loads(r.body)["error"]
    assert err["type"] in ("ValidationError", "MalformedJSONError") and err["message"]
    assert _rows(delivery) == before


def test_install_reports_need_a_device(delivery: World, tmp_path: Path) -> None:
    before = _rows(delivery)
    assert delivery.plane.http().post("/v1/devices/me/installs", json=_report()).status_code == 401
    assert delivery.plane.admin.post("/v1/devices/me/installs", json=_report()).status_code == 403
    assert _rows(delivery) == before
    device = delivery.connect(tmp_path / "dev")
    r = device.client.request("POST", "/v1/devices/me/installs", json_body=_report())
    assert r.status == 201 and r.json()["release_id"] is None  # a bundle no release published here


def test_tuf_routes_answer_404_for_missing_and_400_for_foreign_names(delivery: World, tmp_path: Path) -> None:
    device = delivery.connect(tmp_path / "dev")
    get = device.client.request

    def status(path: str) -> tuple[int, str]:
        r = get("GET", path, check=False)
        return r.status, json.loads(r.body)["error"]["type"] if r.status != 200 else ""

    assert status("/v1/tuf/metadata/1.root.json") == (200, "")
    assert status("/v1/tuf/metadata/2.root.json") == (404, "NotFoundError")  # ngclient: no newer root
    assert status("/v1/tuf/metadata/99.snapshot.json") == (404, "NotFoundError")
    assert status("/v1/tuf/metadata/%2E%2E") == (400, "InvalidInputError")
    assert status("/v1/tuf/metadata/root.json%00") == (400, "InvalidInputError")
    assert status("/v1/tuf/metadata/..%2F..%2Fkeys%2Ftuf") == (404, "NotFoundError")  # no such route
    sha = "a" * 64
    assert status(f"/v1/tuf/targets/devices/{device.device_id}/{sha}.bundle.tmlb") == (404, "NotFoundError")
    assert status(f"/v1/tuf/targets/devices/%2E%2E/{sha}.bundle.tmlb") == (400, "InvalidInputError")
    assert status(f"/v1/tuf/targets/devices/{device.device_id}/..%2F..%2F..%2Fkeys") == (404, "NotFoundError")
    assert status(f"/v1/tuf/targets/keys/{device.device_id}/{sha}.bundle.tmlb") == (400, "InvalidInputError")
    assert status(f"/v1/tuf/targets/devices/{device.device_id}/bundle.tmlb") == (400, "InvalidInputError")


def test_the_server_re_signs_the_timestamp_before_it_expires(sqlite_workspace: Any, tmp_path: Path) -> None:
    """Timestamps valid for 3 s: a device polling after they expired still updates, because the server
    re-signs when asked for a timestamp past half its life."""
    register_tiny(sqlite_workspace)
    UpdateRepository.init(sqlite_workspace.root, expiry=ExpiryPolicy(timestamp=timedelta(seconds=3)))
    with open_world(sqlite_workspace) as world:
        conn = world.connect(tmp_path / "dev")
        with world.agent(conn) as agent:
            world.release("tiny:1", [conn.device_id])
            assert agent.run_once().action == "installed"
            version = json.loads((world.tuf / "metadata" / "timestamp.json").read_bytes())["signed"]["version"]
            time.sleep(3.5)  # every timestamp signed so far has expired
            cycle = agent.run_once()
            assert cycle.action == "idle", cycle
            after = json.loads((world.tuf / "metadata" / "timestamp.json").read_bytes())["signed"]["version"]
            assert after > version
