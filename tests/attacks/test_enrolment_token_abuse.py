"""Abusing enrolment against a live server: a token reused, expired, forged or of the wrong kind;
a token bound to another profile; an enrolment not signed by the key it enrols; a device enrolling
twice or after revocation; many devices racing for one token; a device choosing its own tags.
Every refusal is a clear 4xx and leaves the database — and the token — as they were."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import live_server
from live_server import Plane
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.devices.enrolment import EnrolmentService
from tinymlops.devices.identity import enrolment_body
from tinymlops.errors import ServerRequestError

plane = live_server.plane  # the live control plane (fixture)


def _enrol(plane: Plane, token: str, profile: str = "rpi-4", keys: DeviceKeys | None = None) -> ServerRequestError:
    with pytest.raises(ServerRequestError) as info:
        DeviceClient(plane.url, keys or DeviceKeys.generate()).enrol(token, profile)
    return info.value


def test_a_used_token_is_refused(plane: Plane) -> None:
    token = plane.enrolment_token()
    DeviceClient(plane.url, DeviceKeys.generate()).enrol(token, "rpi-4")
    before = plane.snapshot()
    err = _enrol(plane, token)
    assert (err.status, err.error_type) == (409, "ConflictError") and "already used" in err.message
    assert plane.snapshot() == before


def test_an_expired_token_is_refused(plane: Plane) -> None:
    past = EnrolmentService(plane.ws.engine, plane.ws.targets.get, clock=lambda: time.time() - 7200)
    _, token = past.create_token(ttl_s=3600)
    before = plane.snapshot()
    err = _enrol(plane, token)
    assert (err.status, err.error_type) == (401, "AuthenticationError") and "expired" in err.message
    assert plane.snapshot() == before
    listed = plane.admin.get("/v1/admin/enrolment-tokens").json()
    assert [t["status"] for t in listed] == ["expired"]


def test_forged_unknown_and_wrong_kind_tokens_are_refused(plane: Plane) -> None:
    real = plane.enrolment_token()
    ident = real.split("_")[1]
    forged = f"tme_{ident}_{'A' * 43}"  # the id is not secret; the secret part is guessed
    _, api_key = plane.api_key("read")
    before = plane.snapshot()
    for token in (forged, f"tme_{'0' * 16}_{'A' * 43}"):  # well-formed, wrong
        err = _enrol(plane, token)
        assert (err.status, err.error_type) == (401, "AuthenticationError"), err
        assert "unknown enrolment token" in err.message
    for token in (api_key, "letmein", real + "\n"):  # not even shaped like an enrolment token
        err = _enrol(plane, token)
        assert (err.status, err.error_type) == (422, "ValidationError") and "body.token" in err.message, err
    assert plane.snapshot() == before
    DeviceClient(plane.url, DeviceKeys.generate()).enrol(real, "rpi-4")  # the real token still works


def test_a_token_bound_to_another_profile_is_refused(plane: Plane) -> None:
    token = plane.enrolment_token(profile="mcu-cortex-m7")
    before = plane.snapshot()
    err = _enrol(plane, token, "jetson-orin-nano")
    assert (err.status, err.error_type) == (403, "AccessDeniedError") and "mcu-cortex-m7" in err.message
    assert plane.snapshot() == before
    state = DeviceClient(plane.url, DeviceKeys.generate()).enrol(token, "mcu-cortex-m7")
    assert state.profile_name == "mcu-cortex-m7"


def test_an_enrolment_must_be_signed_by_the_key_it_enrols(plane: Plane) -> None:
    token = plane.enrolment_token()
    victim, attacker = DeviceKeys.generate(), DeviceKeys.generate()
    body = enrolment_body(victim, token, "rpi-4")  # the victim's public keys...
    before = plane.snapshot()
    r = DeviceClient(plane.url, attacker).request("POST", "/v1/devices/enrol", json_body=body, check=False)
    assert r.status == 401 and b"signed by the key it enrols" in r.body  # ...signed by someone else
    r = DeviceClient(plane.url, victim).request("POST", "/v1/devices/enrol", json_body=body, auth="none", check=False)
    assert r.status == 401 and b"missing header" in r.body
    assert plane.snapshot() == before


def test_a_device_enrols_once(plane: Plane) -> None:
    keys = DeviceKeys.generate()
    DeviceClient(plane.url, keys).enrol(plane.enrolment_token(), "rpi-4")
    second = plane.enrolment_token()
    before = plane.snapshot()
    err = _enrol(plane, second, keys=keys)
    assert (err.status, err.error_type) == (409, "ConflictError") and "already enrolled" in err.message
    assert plane.snapshot() == before  # the second token was not consumed

    assert plane.admin.post(f"/v1/devices/{keys.device_id}/revoke").status_code == 200
    err = _enrol(plane, second, keys=keys)
    assert err.status == 409 and "revoked" in err.message and "new keys" in err.message


def test_many_devices_racing_for_one_token_one_wins(plane: Plane) -> None:
    token = plane.enrolment_token()

    def attempt(_: int) -> int:
        try:
            DeviceClient(plane.url, DeviceKeys.generate()).enrol(token, "rpi-4")
            return 201
        except ServerRequestError as exc:
            return exc.status

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(attempt, range(8)))
    assert statuses == [201] + [409] * 7, statuses
    assert len(plane.snapshot()["devices"]) == 1


def test_a_device_cannot_choose_its_own_tags(plane: Plane) -> None:
    token = plane.enrolment_token(tags=["field"])
    keys = DeviceKeys.generate()
    body = {**enrolment_body(keys, token, "rpi-4"), "tags": ["canary"]}
    before = plane.snapshot()
    r = DeviceClient(plane.url, keys).request("POST", "/v1/devices/enrol", json_body=body, check=False)
    assert r.status == 422 and b"tags" in r.body
    assert plane.snapshot() == before
    assert DeviceClient(plane.url, keys).enrol(token, "rpi-4").tags == ("field",)
    r = plane.admin.get(f"/v1/devices/{keys.device_id}")
    assert r.status_code == 200 and r.json()["tags"] == ["field"]
