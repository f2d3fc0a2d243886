"""Every bad request gets a clear 4xx JSON error (``{"error": {"type", "message"}}``) and changes
nothing; unexpected failures are a generic 500 without internals."""

from __future__ import annotations

import json

import httpx
import pytest

import live_server
from live_server import Plane, error_of

plane = live_server.plane  # the live control plane (fixture)


def test_openapi_and_health_are_published(plane: Plane) -> None:
    spec = httpx.get(f"{plane.url}/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in (
        "/v1/models",
        "/v1/devices/enrol",
        "/v1/devices/me",
        "/v1/admin/api-keys",
        "/v1/admin/enrolment-tokens",
    ):
        assert path in spec["paths"], path
    assert {"Bearer", "DeviceSignature"} <= set(spec["components"]["securitySchemes"])
    assert "ErrorBody" in spec["components"]["schemas"]
    assert httpx.get(f"{plane.url}/healthz").json()["status"] == "ok"


def test_malformed_json_is_400(plane: Plane) -> None:
    before = plane.snapshot()
    for raw in (b"{", b'{"name": "x", "scope": "read"', b"\xff\xfe", b"[1,]", b'{"name": "x"}}'):
        r = plane.admin.post("/v1/admin/api-keys", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (raw, r.text)
        err = error_of(r)
        assert err["type"] == "MalformedJSONError" and "not valid JSON" in err["message"]
    assert plane.snapshot() == before


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "x", "scope": 3}, "body.scope"),
        ({"name": 5, "scope": "read"}, "body.name"),
        ({"name": "x", "scope": "root"}, "body.scope"),
        ({"name": "x"}, "body.scope"),
        ({"name": "x", "scope": "read", "admin": True}, "body.admin"),
        ([{"name": "x", "scope": "read"}], "body"),
        ("x", "body"),
    ],
    ids=["int-scope", "int-name", "unknown-scope", "missing-field", "unknown-field", "list", "string"],
)
def test_wrong_types_and_unknown_fields_are_422(plane: Plane, body: object, where: str) -> None:
    """The key authenticated before the body was validated, so its last use is recorded; nothing else changes."""
    before = plane.snapshot(usage=False)
    r = plane.admin.post("/v1/admin/api-keys", json=body)
    assert r.status_code == 422, r.text
    err = error_of(r)
    assert err["type"] == "ValidationError" and where in err["message"]
    assert any(e["loc"] == where for e in err["errors"])
    assert plane.snapshot(usage=False) == before


def test_a_body_that_is_not_declared_json_is_422(plane: Plane) -> None:
    body = json.dumps({"name": "x", "scope": "read"})
    r = plane.admin.post("/v1/admin/api-keys", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 422
    assert "Content-Type: application/json" in error_of(r)["message"] and "text/plain" in error_of(r)["message"]


def test_wrong_types_in_the_enrolment_request_are_422(plane: Plane) -> None:
    before = plane.snapshot()
    for body in ({"token": 1}, {"token": "t", "signing_public": "x", "wrapping_public": "y", "profile": 7, "z": 1}):
        r = plane.http().post("/v1/devices/enrol", json=body)
        assert r.status_code == 422, r.text
        assert error_of(r)["type"] == "ValidationError"
    assert plane.snapshot() == before


def test_bad_path_and_query_parameters_are_422(plane: Plane) -> None:
    for path in (
        "/v1/devices/NOT-A-DEVICE",
        "/v1/devices?status=lost",
        "/v1/models/x/versions/0",
        "/v1/models/x/versions/99999999999999999999",
    ):
        r = plane.admin.get(path)
        assert r.status_code == 422, (path, r.text)
        assert error_of(r)["type"] == "ValidationError"


def test_unknown_query_parameters_are_422(plane: Plane) -> None:
    r = plane.admin.get("/v1/devices", params={"stauts": "active"})
    assert r.status_code == 422
    err = error_of(r)
    assert "query.stauts" in err["message"] and [e["loc"] for e in err["errors"]] == ["query.stauts"]
    assert plane.admin.get("/v1/devices", params={"status": "active"}).status_code == 200
    r = plane.http().get("/healthz", params={"verbose": "1"})
    assert r.status_code == 422


def test_oversized_body_is_413_before_it_is_read(plane: Plane) -> None:
    limit = plane.server.app.state.services.settings.max_body_bytes
    before = plane.snapshot()
    big = json.dumps({"name": "x" * (limit + 10), "scope": "read"}).encode()
    r = plane.admin.post("/v1/admin/api-keys", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert error_of(r)["type"] == "PayloadTooLargeError"

    def chunks():  # no Content-Length: counted as it streams in
        yield b'{"name": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'", "scope": "read"}'

    r = plane.admin.post("/v1/admin/api-keys", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "limit" in error_of(r)["message"]
    # the same limit guards the device endpoints, authenticated or not
    r = plane.http().post("/v1/devices/enrol", content=b"{" + b" " * (limit + 1) + b"}")
    assert r.status_code == 413
    assert plane.snapshot() == before
    # a body just under the limit is read normally (and refused for what it is, not its size)
    r = plane.admin.post(
        "/v1/admin/api-keys", content=b" " * (limit - 100), headers={"Content-Type": "application/json"}
    )
    assert r.status_code in (400, 422)


def test_unknown_routes_and_methods_are_json(plane: Plane) -> None:
    r = plane.http().get("/v1/nothing-here")
    assert r.status_code == 404 and error_of(r)["type"] == "NotFoundError"
    r = plane.admin.delete("/v1/devices")
    assert r.status_code == 405 and error_of(r)["type"] == "MethodNotAllowedError"


def test_unexpected_errors_are_a_generic_500(plane: Plane) -> None:
    def boom() -> None:
        raise RuntimeError("secret internal detail /etc/passwd")

    plane.server.app.add_api_route("/v1/test-boom", boom)
    r = plane.http().get("/v1/test-boom")
    assert r.status_code == 500
    err = error_of(r)
    assert err == {"type": "InternalError", "message": err["message"]}
    assert "secret" not in r.text and "RuntimeError" not in r.text


def test_unknown_model_is_404(plane: Plane) -> None:
    r = plane.admin.get("/v1/models/nope")
    assert r.status_code == 404
    err = error_of(r)
    assert err["type"] == "ModelNotFoundError" and "nope" in err["message"]
    r = plane.admin.get("/v1/devices/0123456789abcdef")
    assert r.status_code == 404 and error_of(r)["type"] == "NotFoundError"
