"""Signed device requests: how a device proves, on every request, that it holds its key.

The scheme (version 1)
----------------------
A device signs each HTTP request with its Ed25519 key over this canonical string (UTF-8, fields
joined by a single ``\\n``, no trailing newline)::

    TINYMLOPS-ED25519-V1
    <METHOD>            upper-case HTTP method, e.g. POST
    <TARGET>            the request target exactly as sent: raw path, plus "?" and the raw query
                        when there is one (e.g. /v1/devices/me?x=1); printable ASCII, no spaces
    <BODY-SHA256>       64 lower-case hex digits: SHA-256 of the body bytes (of b"" when empty)
    <TIMESTAMP>         seconds since the Unix epoch, decimal integer
    <NONCE>             32 lower-case hex digits (16 random bytes), never reused by the device
    <DEVICE-ID>         16 lower-case hex digits: the key id of the device's Ed25519 public key

and sends the result in four headers:

=========================  ===============================================================
``X-Tinymlops-Device``     the device id (the key id of its Ed25519 public key)
``X-Tinymlops-Timestamp``  the timestamp above
``X-Tinymlops-Nonce``      the nonce above
``X-Tinymlops-Signature``  128 lower-case hex digits: the Ed25519 signature of the string
=========================  ===============================================================

No field of the canonical string can contain ``\\n`` (each has a fixed alphabet), so two
different requests never share a canonical string. The server recomputes the string from what it
received — method, raw target, SHA-256 of the body bytes it read — and verifies the signature
with the public key the device enrolled with; it refuses a timestamp more than its window
(default 300 s) away from its own clock and a (device, nonce) pair it has seen before, keeping
seen nonces only as long as the window makes them acceptable. The host is not signed: a device
talks to one control plane, and a signed request replayed to another server fails there because
the device id is unknown (or its nonce is already spent).

This module is the *pure* part of the scheme, shared by both sides: building the string,
signing (the device) and verifying (the server) — no I/O, no clock of its own (``now`` is passed
in). Edge-safe: imports only ``cryptography`` and the standard library.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tinymlops.crypto.keys import KEY_ID_HEX, key_id
from tinymlops.crypto.signing import SIGNATURE_BYTES, sign, verify
from tinymlops.errors import (
    AuthenticationError,
    RequestSignatureError,
    SignatureError,
    StaleRequestError,
    UsageError,
)

SCHEME = "TINYMLOPS-ED25519-V1"

HEADER_DEVICE = "X-Tinymlops-Device"
HEADER_TIMESTAMP = "X-Tinymlops-Timestamp"
HEADER_NONCE = "X-Tinymlops-Nonce"
HEADER_SIGNATURE = "X-Tinymlops-Signature"
AUTH_HEADERS = (HEADER_DEVICE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

#: default accepted clock difference between device and server, in seconds (either way)
DEFAULT_WINDOW_S = 300
NONCE_BYTES = 16
#: longest request target we sign or accept (path + query)
MAX_TARGET_CHARS = 4096

_METHOD = re.compile(r"^[A-Z]{1,16}$")
_TARGET = re.compile(r"^/[\x21-\x7e]*$")  # printable ASCII, no space, starts with '/'
_DEVICE = re.compile(rf"^[0-9a-f]{{{KEY_ID_HEX}}}$")
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_NONCE = re.compile(rf"^[0-9a-f]{{{2 * NONCE_BYTES}}}$")
_SIGNATURE = re.compile(rf"^[0-9a-f]{{{2 * SIGNATURE_BYTES}}}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def new_nonce() -> str:
    """32 lower-case hex digits from the operating system's random source."""
    return secrets.token_hex(NONCE_BYTES)


def canonical_request(method: str, target: str, body_hash: str, timestamp: int, nonce: str, device_id: str) -> bytes:
    """The exact bytes a device signs (see the module docstring); refuses any field outside its alphabet."""
    if not _METHOD.fullmatch(method):
        raise UsageError(f"request method must be 1-16 upper-case letters, got {method!r}")
    if len(target) > MAX_TARGET_CHARS or not _TARGET.fullmatch(target):
        raise UsageError(
            f"request target must start with '/' and be at most {MAX_TARGET_CHARS} printable ASCII characters "
            f"without spaces (percent-encode the rest), got {target[:80]!r}"
        )
    if not _SHA256.fullmatch(body_hash):
        raise UsageError("body hash must be 64 lower-case hex digits (SHA-256)")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp < 10**12:
        raise UsageError(f"timestamp must be a non-negative integer number of seconds, got {timestamp!r}")
    if not _NONCE.fullmatch(nonce):
        raise UsageError(f"nonce must be {2 * NONCE_BYTES} lower-case hex digits")
    if not _DEVICE.fullmatch(device_id):
        raise UsageError(f"device id must be {KEY_ID_HEX} lower-case hex digits, got {device_id!r}")
    fields = (SCHEME, method, target, body_hash, str(timestamp), nonce, device_id)
    return "\n".join(fields).encode("ascii")


@dataclass(frozen=True)
class RequestAuth:
    """The four authentication headers of one signed request, parsed."""

    device_id: str
    timestamp: int
    nonce: str
    signature: bytes

    def headers(self) -> dict[str, str]:
        return {
            HEADER_DEVICE: self.device_id,
            HEADER_TIMESTAMP: str(self.timestamp),
            HEADER_NONCE: self.nonce,
            HEADER_SIGNATURE: self.signature.hex(),
        }

    @classmethod
    def from_headers(cls, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> RequestAuth:
        """Parse strictly. ``headers`` is a mapping or the raw (name, value) pairs; names are
        case-insensitive; a header given twice, missing or malformed is an :class:`AuthenticationError`
        that names it."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        wanted = {h.lower(): h for h in AUTH_HEADERS}
        found: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            if key in wanted:
                if key in found:
                    raise AuthenticationError(f"header {wanted[key]} given more than once", header=wanted[key])
                found[key] = value
        missing = [wanted[k] for k in wanted if k not in found]
        if missing:
            raise AuthenticationError(
                f"not a signed device request: missing header(s) {', '.join(missing)}", missing=missing
            )

        def field(header: str, pattern: re.Pattern[str], what: str) -> str:
            value = found[header.lower()]
            if not pattern.fullmatch(value):
                raise AuthenticationError(f"header {header} must be {what}", header=header)
            return value

        device = field(HEADER_DEVICE, _DEVICE, f"a device id ({KEY_ID_HEX} lower-case hex digits)")
        ts = field(HEADER_TIMESTAMP, _TIMESTAMP, "an integer number of seconds since the Unix epoch")
        nonce = field(HEADER_NONCE, _NONCE, f"{2 * NONCE_BYTES} lower-case hex digits")
        sig = field(HEADER_SIGNATURE, _SIGNATURE, f"{2 * SIGNATURE_BYTES} lower-case hex digits (Ed25519)")
        return cls(device, int(ts), nonce, bytes.fromhex(sig))


@dataclass(frozen=True)
class ReceivedRequest:
    """What a server received, as the signature covers it: method, raw target (path and query as on
    the request line), body bytes, and the raw header pairs."""

    method: str
    target: str
    body: bytes
    headers: tuple[tuple[str, str], ...]

    def auth(self) -> RequestAuth:
        return RequestAuth.from_headers(self.headers)


def sign_request(
    key: Ed25519PrivateKey,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> RequestAuth:
    """Sign one request with the device's Ed25519 key; ``.headers()`` gives what to send."""
    device = key_id(key)
    ts = int(time.time()) if timestamp is None else timestamp
    nonce = new_nonce() if nonce is None else nonce
    message = canonical_request(method, target, body_sha256(bytes(body)), ts, nonce, device)
    return RequestAuth(device, ts, nonce, sign(key, message))


def verify_request(
    auth: RequestAuth,
    *,
    method: str,
    target: str,
    body: bytes,
    signing_public: Ed25519PublicKey | bytes,
    now: float,
    window_s: int = DEFAULT_WINDOW_S,
) -> None:
    """Check one received request against the device's enrolled public key.

    Raises :class:`AuthenticationError` if ``auth`` names another key,
    :class:`StaleRequestError` if the timestamp is more than ``window_s`` from ``now``,
    :class:`RequestSignatureError` if the signature does not verify over (method, target,
    SHA-256 of ``body``, timestamp, nonce, device id). Replays (a nonce seen before) are the
    caller's to refuse: this function keeps no state.
    """
    if key_id(signing_public) != auth.device_id:
        raise AuthenticationError(
            f"request names device {auth.device_id} but the key offered is {key_id(signing_public)}",
            device_id=auth.device_id,
        )
    skew = auth.timestamp - now
    if abs(skew) > window_s:
        raise StaleRequestError(
            f"request timestamp {auth.timestamp} is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
            f"the server clock (accepted: ±{window_s} s); check the device clock",
            device_id=auth.device_id,
            skew_s=round(skew),
        )
    try:
        message = canonical_request(method, target, body_sha256(body), auth.timestamp, auth.nonce, auth.device_id)
    except UsageError as exc:  # what arrived cannot have been signed by a conforming device
        raise RequestSignatureError(f"request cannot be verified: {exc.message}", device_id=auth.device_id) from None
    try:
        verify(signing_public, auth.signature, message, member="request")
    except SignatureError:
        raise RequestSignatureError(
            f"signature of device {auth.device_id} does not verify over this request "
            "(method, path, query, body, timestamp or nonce differ from what was signed)",
            device_id=auth.device_id,
        ) from None


__all__ = [
    "AUTH_HEADERS",
    "DEFAULT_WINDOW_S",
    "HEADER_DEVICE",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_TARGET_CHARS",
    "SCHEME",
    "ReceivedRequest",
    "RequestAuth",
    "body_sha256",
    "canonical_request",
    "new_nonce",
    "sign_request",
    "verify_request",
]
