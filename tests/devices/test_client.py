"""The device client against a live server (and against servers that misbehave)."""

from __future__ import annotations

import socket

import pytest
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import text

import live_server
from live_server import Plane
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.errors import InvalidInputError, ServerRequestError, ServerUnreachableError, UsageError

plane = live_server.plane  # the live control plane (fixture)


def test_refusals_carry_status_and_type(plane: Plane) -> None:
    client = DeviceClient(plane.url, DeviceKeys.generate())
    with pytest.raises(ServerRequestError) as info:
        client.me()
    assert (info.value.status, info.value.error_type) == (401, "AuthenticationError")
    assert "not enrolled" in info.value.message and info.value.exit_code == 4


def test_an_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        client = DeviceClient(f"http://127.0.0.1:{port}", DeviceKeys.generate(), timeout_s=2)
        with pytest.raises(ServerUnreachableError, match=f"127.0.0.1:{port}"):
            client.me()


def test_redirects_are_not_followed(plane: Plane) -> None:
    """A redirect could carry the device's credentials to another host: it is refused, not followed."""
    plane.server.app.add_api_route("/v1/test-redirect", lambda: RedirectResponse("http://example.invalid/steal"))
    client = plane.device()
    with pytest.raises(ServerRequestError) as info:
        client.get_json("/v1/test-redirect")
    assert info.value.status == 307


def test_oversized_responses_are_refused(plane: Plane) -> None:
    plane.server.app.add_api_route("/v1/test-huge", lambda: Response(b"x" * 5000, media_type="application/json"))
    client = DeviceClient(plane.url, DeviceKeys.generate(), max_response_bytes=4096)
    with pytest.raises(InvalidInputError, match="exceeds 4096 bytes"):
        client.request("GET", "/v1/test-huge", auth="none")


def test_bearer_token_is_cached_and_renewed(plane: Plane) -> None:
    client = plane.device()
    first = client.bearer_token()
    assert client.bearer_token() == first  # cached
    assert client.get_json("/v1/devices/me", auth="bearer")["id"] == client.device_id
    # the server forgets it (e.g. pruned): the client obtains a new one, once, and carries on
    with plane.ws.engine.begin() as conn:
        conn.execute(text("DELETE FROM device_tokens"))
    assert client.get_json("/v1/devices/me", auth="bearer")["id"] == client.device_id
    assert client.bearer_token() != first


def test_usage_errors_are_caught_before_sending() -> None:
    keys = DeviceKeys.generate()
    for url in ("ftp://x", "127.0.0.1:8470", "http://h/?q=1"):
        with pytest.raises(UsageError):
            DeviceClient(url, keys)
    client = DeviceClient("http://127.0.0.1:1", keys)
    with pytest.raises(UsageError, match="start with '/'"):
        client.request("GET", "v1/devices/me")
    with pytest.raises(UsageError, match="either json_body or body"):
        client.request("POST", "/x", json_body={}, body=b"")
    with pytest.raises(UsageError, match="enrolment token is required"):
        client.enrol("", "rpi-4")


def test_a_base_url_with_a_path_prefix_signs_the_full_target(plane: Plane) -> None:
    client = plane.device()
    prefixed = DeviceClient(plane.url + "/v1", client.keys)
    assert prefixed.get_json("/devices/me")["id"] == client.device_id
