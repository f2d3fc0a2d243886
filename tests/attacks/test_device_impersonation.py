"""A device reaching beyond itself, against a live server: asking for another device's record
(signed or with its bearer token), acting after revocation, using its token on admin endpoints,
and an API key used where only a device may call. Each is refused (403 / 401) and changes nothing."""

from __future__ import annotations

import live_server
from live_server import Plane, error_of
from tinymlops.errors import ServerRequestError

plane = live_server.plane  # the live control plane (fixture)


def test_a_device_cannot_read_another_devices_record(plane: Plane) -> None:
    mine, other = plane.device(), plane.device()
    bearer = mine.bearer_token()
    before = plane.snapshot()
    r = mine.request("GET", f"/v1/devices/{other.device_id}", check=False)
    assert r.status == 403 and other.device_id in r.json()["error"]["message"]
    r = plane.http(bearer).get(f"/v1/devices/{other.device_id}")
    assert r.status_code == 403 and error_of(r)["type"] == "AccessDeniedError"
    assert plane.snapshot() == before
    assert mine.get_json(f"/v1/devices/{mine.device_id}")["id"] == mine.device_id


def test_a_revoked_device_is_refused_signed_or_bearer(plane: Plane) -> None:
    device = plane.device()
    bearer = device.bearer_token()
    assert plane.admin.post(f"/v1/devices/{device.device_id}/revoke").status_code == 200
    before = plane.snapshot()
    try:
        device.me()
        raise AssertionError("a revoked device was served")
    except ServerRequestError as exc:
        assert exc.status == 401 and "revoked" in exc.message
    r = plane.http(bearer).get("/v1/devices/me")
    assert r.status_code == 401  # revocation ended its bearer tokens too
    r = device.request("POST", "/v1/devices/me/token", json_body={}, check=False)
    assert r.status == 401 and b"revoked" in r.body
    assert plane.snapshot() == before


def test_a_device_token_is_not_an_admin_credential(plane: Plane) -> None:
    device = plane.device()
    bearer = device.bearer_token()
    before = plane.snapshot()
    for method, path, body in (
        ("GET", "/v1/devices", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/admin/api-keys", {"name": "mine", "scope": "admin"}),
        ("POST", "/v1/admin/enrolment-tokens", {"ttl_s": 60}),
        ("POST", f"/v1/devices/{device.device_id}/revoke", None),
    ):
        r = plane.http(bearer).request(method, path, json=body)
        assert r.status_code == 403, (path, r.text)
        assert "devices may not call this" in error_of(r)["message"]
        signed = device.request(method, path, json_body=body, check=False)
        assert signed.status == 401, (path, signed.body)  # a signature is no API key either
    assert plane.snapshot() == before


def test_an_api_key_is_not_a_device(plane: Plane) -> None:
    before = plane.snapshot()
    r = plane.admin.get("/v1/devices/me")
    assert r.status_code == 403 and "device endpoint" in error_of(r)["message"]
    r = plane.admin.post("/v1/devices/me/token", json={})
    assert r.status_code == 401
    assert plane.snapshot() == before
