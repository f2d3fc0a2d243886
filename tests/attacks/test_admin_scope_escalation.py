"""Admin calls without the right credentials, against a live server: no key, a malformed or forged
key, a revoked key, and keys whose scope is too small (read < release < admin). Each is a clear
401 / 403 and changes nothing — not even the key's ``last_used_at``."""

from __future__ import annotations

import pytest

import live_server
from live_server import Plane, error_of

plane = live_server.plane  # the live control plane (fixture)

ADMIN_CALLS = [
    ("POST", "/v1/admin/api-keys", {"name": "escalated", "scope": "admin"}),
    ("GET", "/v1/admin/api-keys", None),
    ("POST", "/v1/admin/enrolment-tokens", {"ttl_s": 600, "profile": "rpi-4"}),
    ("GET", "/v1/admin/enrolment-tokens", None),
    ("POST", "/v1/devices/0123456789abcdef/revoke", None),
]
READ_CALLS = [("GET", "/v1/models", None), ("GET", "/v1/devices", None)]


@pytest.mark.parametrize("call", ADMIN_CALLS + READ_CALLS, ids=lambda c: f"{c[0]} {c[1]}")
def test_no_key_is_401(plane: Plane, call) -> None:
    method, path, body = call
    before = plane.snapshot()
    r = plane.http().request(method, path, json=body)
    assert r.status_code == 401, r.text
    err = error_of(r)
    assert err["type"] == "AuthenticationError" and "API key" in err["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert plane.snapshot() == before


@pytest.mark.parametrize("scope", ["read", "release"])
@pytest.mark.parametrize("call", ADMIN_CALLS, ids=lambda c: f"{c[0]} {c[1]}")
def test_a_smaller_scope_is_403(plane: Plane, scope: str, call) -> None:
    method, path, body = call
    _, key = plane.api_key(scope)
    before = plane.snapshot()
    r = plane.http(key).request(method, path, json=body)
    assert r.status_code == 403, r.text
    err = error_of(r)
    assert err["type"] == "AccessDeniedError" and f"scope '{scope}'" in err["message"] and "'admin'" in err["message"]
    assert (err["scope"], err["required"]) == (scope, "admin")
    assert plane.snapshot() == before


@pytest.mark.parametrize("scope", ["read", "release", "admin"])
def test_scopes_nest(plane: Plane, scope: str) -> None:
    """Every scope reads; only admin administers."""
    _, key = plane.api_key(scope)
    assert plane.http(key).get("/v1/models").status_code == 200
    assert plane.http(key).get("/v1/devices").status_code == 200
    status = plane.http(key).post("/v1/admin/enrolment-tokens", json={"ttl_s": 60}).status_code
    assert status == (201 if scope == "admin" else 403)


def test_forged_malformed_and_revoked_keys_are_401(plane: Plane) -> None:
    key_id, key = plane.api_key("admin", name="soon revoked")
    forged = f"tmk_{key_id}_{'B' * 43}"  # the id is listed; the secret is guessed
    assert plane.admin.post(f"/v1/admin/api-keys/{key_id}/revoke").json()["status"] == "revoked"
    before = plane.snapshot()
    for credential, words in (
        (forged, "unknown API key"),
        (key, "revoked"),
        (f"tmk_{'f' * 16}_{'A' * 43}", "unknown API key"),
        ("tmk_short", "malformed API key"),
        (f"tme_{key_id}_{'A' * 43}", "expected an API key"),
    ):
        r = plane.http(credential).get("/v1/admin/api-keys")
        assert r.status_code == 401, (credential, r.text)
        assert words in error_of(r)["message"]
    r = plane.http().get("/v1/admin/api-keys", headers={"Authorization": f"Basic {key}"})
    assert r.status_code == 401
    assert plane.snapshot() == before


def test_a_read_key_cannot_mint_an_admin_key(plane: Plane) -> None:
    _, key = plane.api_key("read")
    before = plane.snapshot()
    r = plane.http(key).post("/v1/admin/api-keys", json={"name": "root", "scope": "admin"})
    assert r.status_code == 403
    assert plane.snapshot() == before
    assert len(plane.admin.get("/v1/admin/api-keys").json()) == 2  # bootstrap + the read key
