"""Forged device requests against a live server: a bad signature, a tampered body, a signature
lifted onto another path / method / query, an unknown device, a device id claimed with another
key, missing or garbled headers. Each is a 401 with a clear JSON error and changes nothing."""

from __future__ import annotations

import json

import pytest

import live_server
from live_server import Plane, error_of
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.request_auth import HEADER_DEVICE, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign_request

plane = live_server.plane  # the live control plane (fixture)


@pytest.fixture
def enrolled(plane: Plane) -> DeviceKeys:
    client = plane.device()
    return client.keys


def _refused(plane: Plane, response, kind: str = "AuthenticationError", words: str = "") -> dict:
    assert response.status_code == 401, response.text
    err = error_of(response)
    assert err["type"] == kind, err
    assert words in err["message"], err
    assert response.headers.get("www-authenticate") == "Bearer"
    return err


def test_bad_signature(plane: Plane, enrolled: DeviceKeys) -> None:
    auth = sign_request(enrolled.signing, "GET", "/v1/devices/me")
    sig = bytearray(auth.signature)
    sig[10] ^= 0x01
    before = plane.snapshot()
    r = plane.http().get("/v1/devices/me", headers={**auth.headers(), HEADER_SIGNATURE: bytes(sig).hex()})
    _refused(plane, r, "RequestSignatureError", "does not verify")
    assert plane.snapshot() == before


def test_tampered_body(plane: Plane, enrolled: DeviceKeys) -> None:
    """The signature was made over one body; another body is sent with it."""
    before = plane.snapshot()
    r = plane.signed(
        enrolled,
        "POST",
        "/v1/devices/me/token",
        json.dumps({"x": 1}).encode(),
        signed_as=("POST", "/v1/devices/me/token", b"{}"),
    )
    _refused(plane, r, "RequestSignatureError")
    assert plane.snapshot() == before


@pytest.mark.parametrize(
    ("sent", "signed"),
    [
        (("GET", "/v1/devices/me"), ("GET", "/v1/devices/me?x=1")),
        (("GET", "/v1/devices/me"), ("GET", "/v1/devices/me?")),
        (("POST", "/v1/devices/me/token"), ("GET", "/v1/devices/me")),
        (("GET", "/v1/devices/me"), ("GET", "/v1/devices/me/")),
    ],
    ids=["query-added-when-signed", "empty-query-when-signed", "other-method-and-path", "trailing-slash"],
)
def test_signature_lifted_onto_another_request(plane: Plane, enrolled: DeviceKeys, sent, signed) -> None:
    before = plane.snapshot()
    r = plane.signed(enrolled, *sent, signed_as=(*signed, b""))
    _refused(plane, r, "RequestSignatureError")
    assert plane.snapshot() == before


def test_unknown_device(plane: Plane) -> None:
    stranger = DeviceKeys.generate()
    before = plane.snapshot()
    _refused(plane, plane.signed(stranger, "GET", "/v1/devices/me"), words="not enrolled")
    assert plane.snapshot() == before


def test_device_id_claimed_with_another_key(plane: Plane, enrolled: DeviceKeys) -> None:
    """An attacker signs with its own key but names the enrolled device."""
    attacker = DeviceKeys.generate()
    auth = sign_request(attacker.signing, "GET", "/v1/devices/me")
    before = plane.snapshot()
    r = plane.http().get("/v1/devices/me", headers={**auth.headers(), HEADER_DEVICE: enrolled.device_id})
    _refused(plane, r, "RequestSignatureError")
    assert plane.snapshot() == before


@pytest.mark.parametrize(
    "mangle",
    [
        lambda h: {},
        lambda h: {k: v for k, v in h.items() if k != HEADER_SIGNATURE},
        lambda h: {**h, HEADER_TIMESTAMP: "soon"},
        lambda h: {**h, HEADER_DEVICE: h[HEADER_DEVICE].upper()},
        lambda h: {**h, HEADER_SIGNATURE: "00" * 64},
        lambda h: {"Authorization": "Bearer tmd_0123456789abcdef_" + "A" * 43},
        lambda h: {"Authorization": "Bearer not-a-token"},
    ],
    ids=[
        "no-headers",
        "no-signature",
        "bad-timestamp",
        "upper-case-id",
        "zero-signature",
        "forged-bearer",
        "junk-bearer",
    ],
)
def test_missing_or_garbled_credentials(plane: Plane, enrolled: DeviceKeys, mangle) -> None:
    headers = mangle(sign_request(enrolled.signing, "GET", "/v1/devices/me").headers())
    before = plane.snapshot()
    r = plane.http().get("/v1/devices/me", headers=headers)
    assert r.status_code == 401, r.text
    assert error_of(r)["type"] in ("AuthenticationError", "RequestSignatureError")
    assert plane.snapshot() == before


def test_the_genuine_request_still_works(plane: Plane, enrolled: DeviceKeys) -> None:
    r = plane.signed(enrolled, "GET", "/v1/devices/me")
    assert r.status_code == 200 and r.json()["id"] == enrolled.device_id
