"""Replayed and stale device requests against a live server: the same signed request sent twice,
a timestamp outside the window (past or future), and the replay cache's pruning never letting an
old request back in."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

import live_server
from live_server import Plane, error_of, start_plane
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.devices.request_auth import sign_request

plane = live_server.plane  # the live control plane (fixture)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _send(plane: Plane, method: str, target: str, headers: dict[str, str], body: bytes = b"") -> httpx.Response:
    return plane.http().request(method, target, headers=headers, content=body)


def test_the_same_request_twice_is_refused(plane: Plane) -> None:
    client = plane.device()
    auth = sign_request(client.keys.signing, "GET", "/v1/devices/me")
    first = _send(plane, "GET", "/v1/devices/me", auth.headers())
    assert first.status_code == 200
    before = plane.snapshot()
    again = _send(plane, "GET", "/v1/devices/me", auth.headers())
    assert again.status_code == 401
    err = error_of(again)
    assert err["type"] == "ReplayedRequestError" and auth.nonce in err["message"]
    assert plane.snapshot() == before


def test_a_replayed_token_request_mints_nothing(plane: Plane) -> None:
    client = plane.device()
    auth = sign_request(client.keys.signing, "POST", "/v1/devices/me/token", b"{}")
    headers = {**auth.headers(), "Content-Type": "application/json"}
    assert _send(plane, "POST", "/v1/devices/me/token", headers, b"{}").status_code == 200
    before = plane.snapshot()
    r = _send(plane, "POST", "/v1/devices/me/token", headers, b"{}")
    assert r.status_code == 401 and error_of(r)["type"] == "ReplayedRequestError"
    assert plane.snapshot() == before  # no second bearer token


# "just ahead" leaves 30 s past the 300 s window: the time the request takes to reach the check only
# brings an ahead timestamp closer (under parallel load, 301 s came within the window: a flake)
@pytest.mark.parametrize(
    "offset", [-301, -3600, 330, 86400], ids=["just-stale", "an-hour-old", "just-ahead", "a-day-ahead"]
)
def test_timestamps_outside_the_window_are_refused(plane: Plane, offset: int) -> None:
    client = plane.device()
    auth = sign_request(client.keys.signing, "GET", "/v1/devices/me", timestamp=int(time.time()) + offset)
    before = plane.snapshot()
    r = _send(plane, "GET", "/v1/devices/me", auth.headers())
    assert r.status_code == 401
    err = error_of(r)
    assert err["type"] == "StaleRequestError" and "clock" in err["message"]
    assert plane.snapshot() == before


@pytest.fixture
def clocked(sqlite_workspace) -> Iterator[tuple[Plane, Clock]]:
    clock = Clock(1_900_000_000.0)
    p = start_plane(sqlite_workspace, clock=clock)
    yield p, clock
    p.close()


def test_pruning_never_lets_a_replay_back_in(clocked: tuple[Plane, Clock]) -> None:
    plane, clock = clocked
    client = DeviceClient(plane.url, DeviceKeys.generate(), clock=clock)
    client.enrol(plane.enrolment_token(), "rpi-4")
    old = sign_request(client.keys.signing, "GET", "/v1/devices/me", timestamp=int(clock.now))
    assert _send(plane, "GET", "/v1/devices/me", old.headers()).status_code == 200

    clock.now += 200  # inside the 300 s window: a prune now must keep the nonce
    client.me()  # an accepted request triggers pruning (at most once a minute)
    assert old.nonce in repr(plane.snapshot()["device_nonces"])
    r = _send(plane, "GET", "/v1/devices/me", old.headers())
    assert r.status_code == 401 and error_of(r)["type"] == "ReplayedRequestError"

    clock.now += 400  # now out of the window: pruned, and refused as stale instead
    client.me()
    assert old.nonce not in repr(plane.snapshot()["device_nonces"])
    r = _send(plane, "GET", "/v1/devices/me", old.headers())
    assert r.status_code == 401 and error_of(r)["type"] == "StaleRequestError"
