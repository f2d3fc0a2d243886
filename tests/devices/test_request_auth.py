"""The request-signing scheme, pure: canonical string, signing, strict header parsing, verification.

Property: a signature verifies over exactly what was signed; any change to the method, target,
body, timestamp, nonce or device breaks it.
"""

from __future__ import annotations

import contextlib
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinymlops.crypto.keys import generate_signing_key, key_id
from tinymlops.devices.request_auth import (
    AUTH_HEADERS,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    RequestAuth,
    body_sha256,
    canonical_request,
    new_nonce,
    sign_request,
    verify_request,
)
from tinymlops.errors import AuthenticationError, RequestSignatureError, StaleRequestError, UsageError

KEY = generate_signing_key()
OTHER = generate_signing_key()
NOW = 1_800_000_000

methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
targets = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=0, max_size=80).map(lambda s: "/" + s)
bodies = st.binary(max_size=512)
timestamps = st.integers(min_value=NOW - 300, max_value=NOW + 300)
nonces = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


def _verify(auth: RequestAuth, method: str, target: str, body: bytes, *, key=KEY, now: float = NOW) -> None:
    verify_request(auth, method=method, target=target, body=body, signing_public=key.public_key(), now=now)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(method=methods, target=targets, body=bodies, ts=timestamps, nonce=nonces)
def test_signature_verifies_over_what_was_signed(method, target, body, ts, nonce) -> None:
    auth = sign_request(KEY, method, target, body, timestamp=ts, nonce=nonce)
    assert auth.device_id == key_id(KEY)
    _verify(auth, method, target, body)
    # and survives the trip through its headers
    _verify(RequestAuth.from_headers(auth.headers()), method, target, body)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=methods,
    target=targets,
    body=bodies,
    ts=timestamps,
    nonce=nonces,
    change=st.sampled_from(["method", "target", "body", "timestamp", "nonce", "signature", "key"]),
    data=st.data(),
)
def test_any_change_breaks_the_signature(method, target, body, ts, nonce, change, data) -> None:
    auth = sign_request(KEY, method, target, body, timestamp=ts, nonce=nonce)
    if change == "method":
        method = data.draw(methods.filter(lambda m: m != method))
    elif change == "target":
        target = data.draw(targets.filter(lambda t: t != target))
    elif change == "body":
        body = data.draw(bodies.filter(lambda b: b != body))
    elif change == "timestamp":
        ts2 = data.draw(timestamps.filter(lambda t: t != ts))
        auth = RequestAuth(auth.device_id, ts2, auth.nonce, auth.signature)
    elif change == "nonce":
        n2 = data.draw(nonces.filter(lambda n: n != nonce))
        auth = RequestAuth(auth.device_id, auth.timestamp, n2, auth.signature)
    elif change == "signature":
        i = data.draw(st.integers(0, 63))
        bit = data.draw(st.integers(0, 7))
        sig = bytearray(auth.signature)
        sig[i] ^= 1 << bit
        auth = RequestAuth(auth.device_id, auth.timestamp, auth.nonce, bytes(sig))
    elif change == "key":  # another device's key, claiming this device's id
        with pytest.raises(AuthenticationError):
            _verify(auth, method, target, body, key=OTHER)
        return
    with pytest.raises(RequestSignatureError):
        _verify(auth, method, target, body)


@given(
    a=st.tuples(methods, targets, st.text("0123456789abcdef", min_size=64, max_size=64), timestamps, nonces),
    b=st.tuples(methods, targets, st.text("0123456789abcdef", min_size=64, max_size=64), timestamps, nonces),
)
def test_canonical_string_is_injective(a, b) -> None:
    device = key_id(KEY)
    if a != b:
        assert canonical_request(*a, device) != canonical_request(*b, device)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("get", "/x"),
        ("GET", "x"),
        ("GET", "/a b"),
        ("GET", "/a\nGET"),
        ("GET", "/x\n"),
        ("GET\n", "/x"),
        ("GET", "/é"),
        ("G\nET", "/"),
        ("", "/"),
    ],
)
def test_canonical_fields_outside_their_alphabet_are_refused(method: str, target: str) -> None:
    with pytest.raises(UsageError):
        canonical_request(method, target, body_sha256(b""), NOW, new_nonce(), key_id(KEY))


def test_stale_and_future_timestamps_are_refused() -> None:
    auth = sign_request(KEY, "GET", "/v1/devices/me", timestamp=NOW)
    _verify(auth, "GET", "/v1/devices/me", b"", now=NOW + 300)
    _verify(auth, "GET", "/v1/devices/me", b"", now=NOW - 300)
    with pytest.raises(StaleRequestError, match="behind"):
        _verify(auth, "GET", "/v1/devices/me", b"", now=NOW + 301)
    with pytest.raises(StaleRequestError, match="ahead"):
        _verify(auth, "GET", "/v1/devices/me", b"", now=NOW - 301)


def test_headers_are_parsed_strictly() -> None:
    good = sign_request(KEY, "GET", "/", timestamp=NOW).headers()
    assert RequestAuth.from_headers({k.lower(): v for k, v in good.items()}) == RequestAuth.from_headers(good)
    for name in AUTH_HEADERS:
        missing = {k: v for k, v in good.items() if k != name}
        with pytest.raises(AuthenticationError, match=name):
            RequestAuth.from_headers(missing)
    bad_values = {
        HEADER_TIMESTAMP: ["-1", "1.5", "", " 1", "1" * 13, "0x10"],
        HEADER_NONCE: ["A" * 32, "0" * 31, "0" * 33, "g" * 32, "0" * 32 + "\n"],
        HEADER_SIGNATURE: [good[HEADER_SIGNATURE].upper(), good[HEADER_SIGNATURE][:-2], "zz" * 64],
    }
    for name, values in bad_values.items():
        for value in values:
            with pytest.raises(AuthenticationError, match=name):
                RequestAuth.from_headers({**good, name: value})
    twice = [*good.items(), (HEADER_NONCE, good[HEADER_NONCE])]
    with pytest.raises(AuthenticationError, match="more than once"):
        RequestAuth.from_headers(twice)


@given(st.dictionaries(st.sampled_from(AUTH_HEADERS), st.text(string.printable, max_size=140), max_size=4))
def test_header_parser_never_crashes(headers) -> None:
    with contextlib.suppress(AuthenticationError):
        RequestAuth.from_headers(headers)


def test_nonces_are_fresh() -> None:
    assert len({new_nonce() for _ in range(1000)}) == 1000
