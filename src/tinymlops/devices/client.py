"""A tiny HTTP client for devices: enrol once, then make signed (or bearer) requests.

::

    keys = load_or_create_keys(data_dir / "keys")
    client = DeviceClient("http://127.0.0.1:8470", keys)
    state = client.enrol(token, "rpi-4")      # once; state.save(data_dir) to remember it
    client.get_json("/v1/devices/me")          # every request signed (see request_auth)
    client.get_json("/v1/devices/me", auth="bearer")  # or with a short-lived bearer token
    client.licenses()                          # this device's prepaid licenses, revocations, chain positions
    client.send_usage(meter.usage_report(n))   # a signed usage report (201 answer, or the refusal raised)

Every request is signed over method, target, body hash, timestamp and a fresh nonce
(:mod:`tinymlops.devices.request_auth`). ``auth="bearer"`` first obtains a short-lived token with
one signed request and reuses it until shortly before it expires (or the server refuses it once).
Redirects are never followed (the signature covers the path, and credentials must not travel to
another host); responses larger than ``max_response_bytes`` are refused. A refusal by the server
raises :class:`ServerRequestError` carrying the HTTP status and the server's error type (for the
metering calls, the error body's other fields too: a ``409`` to a usage report carries ``next_seq``);
a network failure — or an answer that never arrived whole (shorter than its ``Content-Length``, a
status line that is not HTTP) — raises :class:`ServerUnreachableError`: the request may or may not
have been taken. A body that is not JSON (or is nested deeper than the parser goes) is an
:class:`InvalidInputError`. Nothing the server sends makes the client raise anything else.

Edge-safe: the standard library's ``urllib.request`` and ``cryptography`` only.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.identity import EnrolmentState, enrolment_body
from tinymlops.devices.request_auth import sign_request
from tinymlops.errors import InvalidInputError, ServerRequestError, ServerUnreachableError, UsageError
from tinymlops.metering.license_signing import REPORT_SIGNATURE_HEADER

if TYPE_CHECKING:
    from tinymlops.metering.license_signing import SignedUsageReport

ENROL_PATH = "/v1/devices/enrol"
ME_PATH = "/v1/devices/me"
TOKEN_PATH = "/v1/devices/me/token"
LICENSES_PATH = "/v1/devices/me/licenses"
USAGE_PATH = "/v1/devices/me/usage"
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: a bearer token is renewed this long before the server says it expires
TOKEN_RENEW_MARGIN_S = 30.0

Auth = Literal["signature", "bearer", "none"]


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        doc = _loads(self.body)
        if doc is _NOT_JSON:
            raise InvalidInputError(f"server answered {self.status} with a body that is not JSON")
        return doc


_NOT_JSON = object()


def _loads(body: bytes) -> Any:
    """``body`` parsed as JSON, or :data:`_NOT_JSON` (not UTF-8, not JSON, or nested too deep)."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _NOT_JSON


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None  # urllib then raises HTTPError with the 3xx status


class DeviceClient:
    """Requests from one device (its :class:`DeviceKeys`) to one control-plane server."""

    def __init__(
        self,
        server_url: str,
        keys: DeviceKeys,
        *,
        timeout_s: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(server_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise UsageError(f"server URL must be http(s)://host[:port][/prefix], got {server_url!r}")
        self.server_url = server_url.rstrip("/")
        self._prefix = parts.path.rstrip("/")
        self.keys = keys
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._clock = clock
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._bearer: tuple[str, float] | None = None  # (token, renew after, by self._clock)

    @property
    def device_id(self) -> str:
        return self.keys.device_id

    # --- the one place that talks HTTP ---------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        auth: Auth = "signature",
        headers: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> Response:
        """Send one request; ``path`` starts with ``/`` (and may carry a query). With ``check``
        (default), a status >= 300 raises :class:`ServerRequestError`."""
        if not path.startswith("/"):
            raise UsageError(f"request path must start with '/', got {path!r}")
        if json_body is not None and body is not None:
            raise UsageError("give either json_body or body, not both")
        data = body if body is not None else b""
        send_headers = {"Accept": "application/json", **(headers or {})}
        if json_body is not None:
            data = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
            send_headers.setdefault("Content-Type", "application/json")
        target = self._prefix + path.rstrip("?")
        method = method.upper()
        if auth == "bearer":
            send_headers["Authorization"] = f"Bearer {self.bearer_token()}"
        elif auth == "signature":
            signed = sign_request(self.keys.signing, method, target, data, timestamp=int(self._clock()))
            send_headers.update(signed.headers())
        elif auth != "none":
            raise UsageError(f"auth must be 'signature', 'bearer' or 'none', got {auth!r}")
        response = self._send(method, target, data, send_headers)
        if auth == "bearer" and response.status == 401 and self._bearer is not None:
            self._bearer = None  # the server forgot or refused the token: get a new one, once
            send_headers["Authorization"] = f"Bearer {self.bearer_token()}"
            response = self._send(method, target, data, send_headers)
        if check and response.status >= 300:
            raise _refusal(method, path, response)
        return response

    def _send(self, method: str, target: str, data: bytes, headers: Mapping[str, str]) -> Response:
        parts = urlsplit(self.server_url)
        url = f"{parts.scheme}://{parts.netloc}{target}"
        req = urllib.request.Request(url, data=data if data or method in ("POST", "PUT", "PATCH") else None)
        req.method = method
        for name, value in headers.items():
            req.add_header(name, value)
        try:
            try:
                with self._opener.open(req, timeout=self.timeout_s) as resp:
                    return Response(resp.status, dict(resp.headers.items()), self._read(resp))
            except urllib.error.HTTPError as exc:
                with exc:
                    return Response(exc.code, dict(exc.headers.items()), self._read(exc))
        except http.client.HTTPException as exc:  # not HTTP, or cut short: no answer to go by
            raise ServerUnreachableError(
                f"the control plane at {self.server_url} gave no usable answer ({type(exc).__name__}: {exc!s:.200})",
                status=0,
                url=self.server_url,
            ) from exc
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachableError(
                f"cannot reach the control plane at {self.server_url}: {reason}", status=0, url=self.server_url
            ) from exc

    def _read(self, stream: Any) -> bytes:
        data: bytes = stream.read(self.max_response_bytes + 1)
        if len(data) > self.max_response_bytes:
            raise InvalidInputError(f"server response exceeds {self.max_response_bytes} bytes; refused")
        declared = (stream.headers.get("Content-Length") or "").strip()
        if declared.isdigit() and int(declared) != len(data):  # the connection closed mid-answer
            raise http.client.IncompleteRead(data, max(0, int(declared) - len(data)))
        return data

    # --- conveniences ----------------------------------------------------------------------
    def get_json(self, path: str, *, auth: Auth = "signature") -> Any:
        return self.request("GET", path, auth=auth).json()

    def post_json(self, path: str, doc: Any, *, auth: Auth = "signature") -> Any:
        return self.request("POST", path, json_body=doc, auth=auth).json()

    def enrol(self, token: str, profile: str | Mapping[str, Any]) -> EnrolmentState:
        """Enrol this device once with a one-time ``token`` and its ``profile`` (a profile name the
        server knows, or a whole profile document). Returns what to remember (``state.save(dir)``)."""
        record = self.post_json(ENROL_PATH, enrolment_body(self.keys, token, profile))
        if not isinstance(record, dict) or record.get("id") != self.device_id:
            raise InvalidInputError("server answered the enrolment with a record for another device")
        return EnrolmentState(
            server_url=self.server_url,
            device_id=self.device_id,
            profile_name=str(record.get("profile_name", "")),
            enrolled_at=str(record.get("enrolled_at", "")),
            tags=tuple(str(t) for t in record.get("tags", ())),
        )

    def me(self) -> dict[str, Any]:
        """The server's record of this device."""
        doc: dict[str, Any] = self.get_json(ME_PATH)
        return doc

    # --- metering ---------------------------------------------------------------------------
    def licenses(self, model: str | None = None) -> dict[str, Any]:
        """``GET /v1/devices/me/licenses`` (``?model=`` when given): this device's licenses in chain
        order, their revocations and the server's position in each chain, as the server sent them
        (``{"device_id", "licenses", "revocations", "chains"}``; each document is verified by whoever
        installs it). A refusal raises :class:`ServerRequestError` with the error body's details."""
        path = LICENSES_PATH if model is None else f"{LICENSES_PATH}?model={quote(model, safe='')}"
        doc = self._metering_call("GET", path).json()
        if not isinstance(doc, dict):
            raise InvalidInputError(f"server answered GET {path} with {type(doc).__name__}, not an object")
        if doc.get("device_id") != self.device_id:
            raise InvalidInputError(
                f"server answered GET {path} with the licenses of device {str(doc.get('device_id'))[:40]!r}, "
                f"not this device ({self.device_id})"
            )
        return doc

    def send_usage(self, signed: SignedUsageReport) -> dict[str, Any]:
        """``POST /v1/devices/me/usage``: the report's exact bytes, the device key's signature in
        :data:`REPORT_SIGNATURE_HEADER`. Returns the server's 201 answer (``report_id``, ``digest``,
        ``next_seq``, ``flags``, ``revoked`` …). A refusal raises :class:`ServerRequestError`
        whose ``details`` carry the error body's fields: a ``DuplicateReportError`` 409 its ``digest``
        and ``next_seq`` (already counted), a ``ReportGapError`` 409 ``first_seq`` and ``next_seq``
        (resend from there)."""
        headers = {"Content-Type": "application/json", REPORT_SIGNATURE_HEADER: bytes(signed.signature).hex()}
        doc = self._metering_call("POST", USAGE_PATH, body=bytes(signed.data), headers=headers).json()
        if not isinstance(doc, dict):
            raise InvalidInputError(f"server answered POST {USAGE_PATH} with {type(doc).__name__}, not an object")
        return doc

    def _metering_call(
        self, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        response = self.request(method, path, body=body, headers=headers, check=False)
        if response.status >= 300:
            raise _refusal(method, path, response, details=True)
        return response

    def bearer_token(self, *, renew: bool = False) -> str:
        """A short-lived bearer token for this device, obtained with one signed request and cached."""
        now = self._clock()
        if renew or self._bearer is None or now >= self._bearer[1]:
            doc = self.post_json(TOKEN_PATH, {})
            token, expires_in = doc.get("token"), doc.get("expires_in")
            if not isinstance(token, str) or not isinstance(expires_in, int | float):
                raise InvalidInputError("server answered the token request without 'token' and 'expires_in'")
            self._bearer = (token, now + max(0.0, float(expires_in) - TOKEN_RENEW_MARGIN_S))
        return self._bearer[0]


def error_fields(body: bytes) -> tuple[str, str] | None:
    """``(type, message)`` of the control plane's error body ``{"error": {"type": …, "message": …}}``;
    None when ``body`` is not one."""
    doc = _loads(body)
    err = doc.get("error") if isinstance(doc, dict) else None
    return (str(err.get("type", "")), str(err.get("message", ""))) if isinstance(err, dict) else None


#: error-body fields never taken as details: the error's own fields, and the names its constructor binds
_NOT_DETAILS = frozenset({"type", "message", "status", "error_type", "self"})


def error_details(body: bytes) -> dict[str, Any]:
    """The fields of the control plane's error body other than ``type`` and ``message`` (a 409's
    ``next_seq``, ``digest`` …); empty when ``body`` is not an error body."""
    doc = _loads(body)
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return {}
    return {str(k): v for k, v in err.items() if k not in _NOT_DETAILS}


def _refusal(method: str, path: str, response: Response, *, details: bool = False) -> ServerRequestError:
    error_type, message = error_fields(response.body) or ("", response.body[:200].decode("utf-8", "replace"))
    return ServerRequestError(
        f"server refused {method} {path}: {response.status} {error_type}: {message}".replace(" : ", ": "),
        status=response.status,
        error_type=error_type,
        **(error_details(response.body) if details else {}),
    )


__all__ = [
    "ENROL_PATH",
    "LICENSES_PATH",
    "ME_PATH",
    "REPORT_SIGNATURE_HEADER",
    "TOKEN_PATH",
    "USAGE_PATH",
    "DeviceClient",
    "Response",
    "error_details",
    "error_fields",
]
