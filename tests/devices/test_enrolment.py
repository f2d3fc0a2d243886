"""Enrolment and device requests against a live server, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64

import pytest

import live_server
from live_server import Plane, error_of
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.devices.enrolment import decode_public
from tinymlops.errors import InvalidInputError, ServerRequestError
from tinymlops.targets.catalog import builtin_profiles

plane = live_server.plane  # the live control plane (fixture)
plane_any_db = live_server.plane_any_db  # the live control plane (fixture)


def test_enrol_with_a_profile_name_then_signed_and_bearer_requests(plane_any_db: Plane) -> None:
    plane = plane_any_db
    keys = DeviceKeys.generate()
    client = DeviceClient(plane.url, keys)
    token = plane.enrolment_token(profile="rpi-4", tags=["canary", "eu"], note="bench")
    state = client.enrol(token, "rpi-4")
    assert (state.device_id, state.profile_name, state.tags) == (keys.device_id, "rpi-4", ("canary", "eu"))

    me = client.me()
    assert me["id"] == keys.device_id and me["status"] == "active"
    assert base64.b64decode(me["signing_public"]) == keys.signing_public
    assert base64.b64decode(me["wrapping_public"]) == keys.wrapping_public
    assert me["wrapping_key_id"] == keys.wrapping_key_id
    assert me["profile"] == builtin_profiles()["rpi-4"].to_dict()
    assert client.get_json(f"/v1/devices/{keys.device_id}")["id"] == keys.device_id  # its own record
    assert client.get_json("/v1/devices/me", auth="bearer")["id"] == keys.device_id

    listed = plane.admin.get("/v1/devices").json()
    assert [d["id"] for d in listed] == [keys.device_id]
    tokens = plane.admin.get("/v1/admin/enrolment-tokens").json()
    assert tokens[0]["status"] == "used" and tokens[0]["used_by"] == keys.device_id
    assert "token" not in tokens[0] and token not in plane.admin.get("/v1/admin/enrolment-tokens").text


def test_enrol_with_a_profile_document(plane_any_db: Plane) -> None:
    plane = plane_any_db
    doc = {**builtin_profiles()["rpi-zero-2w"].to_dict(), "name": "my-board", "ram_mb": 256.0}
    client = DeviceClient(plane.url, DeviceKeys.generate())
    state = client.enrol(plane.enrolment_token(), doc)
    assert state.profile_name == "my-board"
    assert client.me()["profile"]["ram_mb"] == 256.0


def test_an_invalid_profile_document_is_refused_and_the_token_stays_usable(plane: Plane) -> None:
    token = plane.enrolment_token()
    before = plane.snapshot()
    doc = {**builtin_profiles()["rpi-4"].to_dict(), "ram_mb": "lots"}
    cases = ((doc, 400, "ram_mb"), ({"name": "x"}, 400, "spec_version"), ("no-such-profile", 404, "no-such-profile"))
    for profile, status, named in cases:
        with pytest.raises(ServerRequestError) as info:
            DeviceClient(plane.url, DeviceKeys.generate()).enrol(token, profile)
        assert info.value.status == status and named in info.value.message, info.value
    assert plane.snapshot() == before
    DeviceClient(plane.url, DeviceKeys.generate()).enrol(token, "rpi-4")


def test_malformed_public_keys_are_refused(plane: Plane) -> None:
    token = plane.enrolment_token()
    keys = DeviceKeys.generate()
    good = base64.b64encode(keys.signing_public).decode()
    # the same bytes with non-zero padding bits: decodes fine, but is not the canonical encoding
    twin = next(
        good[:-2] + c + "="
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        if c != good[-2] and base64.b64decode(good[:-2] + c + "=") == keys.signing_public
    )
    before = plane.snapshot()
    cases = [
        ("not base64!", good),
        (good, base64.b64encode(b"short").decode()),
        (keys.signing_public.hex(), good),
        (good, " " + good),
        (twin, good),
    ]
    for signing, wrapping in cases:
        client = DeviceClient(plane.url, keys)
        r = client.request(
            "POST",
            "/v1/devices/enrol",
            json_body={"token": token, "signing_public": signing, "wrapping_public": wrapping, "profile": "rpi-4"},
            check=False,
        )
        assert r.status == 422, r.body  # the published schema already pins canonical base64 of 32 bytes
        assert b"body.signing_public" in r.body or b"body.wrapping_public" in r.body
    assert plane.snapshot() == before


def test_the_service_checks_public_keys_too() -> None:
    """Behind the schema, the enrolment service refuses the same keys with errors naming the field."""
    raw = DeviceKeys.generate().signing_public
    good = base64.b64encode(raw).decode()
    assert decode_public(good, "signing_public") == raw
    for bad in ("not base64!", base64.b64encode(b"short").decode(), raw.hex(), " " + good, good + "\n"):
        with pytest.raises(InvalidInputError, match="signing_public"):
            decode_public(bad, "signing_public")


def test_admin_lists_and_revokes_devices(plane_any_db: Plane) -> None:
    plane = plane_any_db
    a, b = plane.device(), plane.device("jetson-orin-nano")
    r = plane.admin.post(f"/v1/devices/{a.device_id}/revoke")
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_at"]
    again = plane.admin.post(f"/v1/devices/{a.device_id}/revoke").json()
    assert again["revoked_at"] == r.json()["revoked_at"]  # idempotent
    assert [d["id"] for d in plane.admin.get("/v1/devices", params={"status": "active"}).json()] == [b.device_id]
    assert [d["id"] for d in plane.admin.get("/v1/devices", params={"status": "revoked"}).json()] == [a.device_id]
    shown = plane.admin.get(f"/v1/devices/{b.device_id}").json()
    assert shown["profile_name"] == "jetson-orin-nano" and shown["last_seen"]
    assert b.me()["status"] == "active"
    r = plane.admin.post("/v1/devices/0000000000000000/revoke")
    assert r.status_code == 404 and error_of(r)["type"] == "NotFoundError"


def test_bearer_tokens_are_short_lived_and_hashed(plane: Plane) -> None:
    client = plane.device()
    doc = client.post_json("/v1/devices/me/token", {})
    assert doc["token"].startswith("tmd_") and doc["token_type"] == "bearer" and doc["expires_in"] == 900
    stored = plane.snapshot()["device_tokens"]
    assert len(stored) == 1 and doc["token"] not in repr(stored)
    r = plane.http(doc["token"]).get("/v1/devices/me")
    assert r.status_code == 200 and r.json()["id"] == client.device_id
    # a bearer token cannot mint another one (only a signed request can)
    r = plane.http(doc["token"]).post("/v1/devices/me/token", json={})
    assert r.status_code == 401 and "signed" in error_of(r)["message"]
    # the body of the token request is checked too
    r = client.request("POST", "/v1/devices/me/token", json_body={"scope": "admin"}, check=False)
    assert r.status == 422


def test_last_seen_moves_with_each_request(plane: Plane) -> None:
    client = plane.device()
    first = client.me()["last_seen"]
    second = client.me()["last_seen"]
    assert second > first
