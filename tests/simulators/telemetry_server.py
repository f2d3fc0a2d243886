"""The other side of the device's telemetry uploader: a real HTTP server on 127.0.0.1 that takes sealed
batches as the control plane's ``POST /v1/devices/me/telemetry`` does.

:class:`TelemetryServer` (a ``ThreadingHTTPServer`` in a thread) checks each request's device
signature (:func:`~tinymlops.devices.request_auth.verify_request`, nonces remembered), opens the
batch with :func:`~tinymlops.observe.sealing.open_batch` against the device's enrolled key, merges
a digest once — a replayed digest gets ``409 {"error": {"type": "DuplicateBatchError", "message":
…, "digest": …}}`` — and records what it accepted (:attr:`TelemetryServer.batches`) and every raw
body it received (:attr:`TelemetryServer.bodies`). A refusal is a 4xx JSON error naming the problem.

Hooks let a test play a broken network or server:

* :meth:`TelemetryServer.lose_responses` — take the next ``n`` batches, then drop the connection
  without answering (the device sees no response: a lost response);
* :meth:`TelemetryServer.answer` — answer the next ``n`` requests with a fixed status and error body
  (or any ``body``) instead of looking at them (a 503, a 404 of a server without the endpoint, a 409
  overlap, a DuplicateBatchError 409 naming another digest, …).

As on the control plane, a request whose device signature fails is a 401, a batch that does not open
(malformed, or its batch signature fails) a 400, one too large a 413.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tinymlops.devices.request_auth import RequestAuth, verify_request
from tinymlops.errors import PayloadTooLargeError, TinyMLOpsError
from tinymlops.observe.sealing import SIGNATURE_HEADER, OpenedBatch, open_batch

PATH = "/v1/devices/me/telemetry"


@dataclass
class _Canned:
    status: int
    body: dict[str, Any]
    left: int


class TelemetryServer:
    """See the module doc. ``devices`` maps device id -> its Ed25519 public key (32 raw bytes)."""

    def __init__(self, devices: dict[str, Any] | None = None, *, max_body_bytes: int = 4 * 1024 * 1024) -> None:
        self.devices = dict(devices or {})
        self.max_body_bytes = max_body_bytes
        self.batches: list[OpenedBatch] = []
        self.bodies: list[bytes] = []
        self.statuses: list[int] = []
        self._digests: set[tuple[str, str]] = set()
        self._nonces: set[tuple[str, str]] = set()
        self._lose = 0
        self._canned: _Canned | None = None
        self._lock = threading.Lock()
        self.received = threading.Condition(self._lock)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # --- hooks ----------------------------------------------------------------------------------
    def enrol(self, device_id: str, public_key: Any) -> None:
        """Accept ``device_id``, whose Ed25519 public key is ``public_key`` (a key or 32 raw bytes)."""
        self.devices[device_id] = public_key

    def lose_responses(self, n: int = 1) -> None:
        with self._lock:
            self._lose = n

    def answer(
        self,
        status: int,
        error_type: str = "ServerError",
        message: str = "canned",
        n: int = 1,
        *,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next ``n`` requests with ``status`` and ``body`` (default: the error
        ``{"error": {"type": error_type, "message": message}}``)."""
        doc = body if body is not None else {"error": {"type": error_type, "message": message}}
        with self._lock:
            self._canned = _Canned(status, doc, n)

    def windows(self) -> list[Any]:
        with self._lock:
            return [w for b in self.batches for w in b.batch.windows]

    # --- serving --------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                with server._lock:  # recorded before the device can see the answer
                    server.statuses.append(status)
                    server.received.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with server._lock:
                    server.bodies.append(body)
                    canned = server._canned
                    if canned is not None:
                        canned.left -= 1
                        if canned.left <= 0:
                            server._canned = None
                if canned is not None:
                    return self._reply(canned.status, canned.body)
                if self.path != PATH:
                    return self._reply(404, {"error": {"type": "NotFoundError", "message": self.path}})
                try:
                    status, doc = server._take(self.command, self.path, body, list(self.headers.items()))
                except _Lose:
                    self.close_connection = True
                    self.connection.shutdown(2)  # no answer at all
                    with server._lock:
                        server.received.notify_all()
                    return
                self._reply(status, doc)

        return Handler

    def _take(
        self, method: str, target: str, body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[int, dict[str, Any]]:
        def refuse(status: int, exc: TinyMLOpsError) -> tuple[int, dict[str, Any]]:
            return status, {"error": {"type": type(exc).__name__, "message": exc.message}}

        try:
            auth = RequestAuth.from_headers(headers)
            key = self.devices.get(auth.device_id)
            if key is None:
                return 401, {"error": {"type": "AuthenticationError", "message": f"unknown device {auth.device_id}"}}
            verify_request(auth, method=method, target=target, body=body, signing_public=key, now=time.time())
        except TinyMLOpsError as exc:
            return refuse(401, exc)
        with self._lock:
            if (auth.device_id, auth.nonce) in self._nonces:
                return 401, {"error": {"type": "ReplayedRequestError", "message": "nonce seen before"}}
            self._nonces.add((auth.device_id, auth.nonce))
        signature = dict((k.lower(), v) for k, v in headers).get(SIGNATURE_HEADER.lower())
        try:
            opened = open_batch(body, signature, key, max_body_bytes=self.max_body_bytes)
        except PayloadTooLargeError as exc:
            return refuse(413, exc)
        except TinyMLOpsError as exc:  # a bad batch signature too: 400, as the real endpoint answers
            return refuse(400, exc)
        with self._lock:
            if (auth.device_id, opened.digest) in self._digests:
                return 409, {
                    "error": {
                        "type": "DuplicateBatchError",
                        "message": f"batch {opened.digest} was received before",
                        "digest": opened.digest,
                    }
                }
            self._digests.add((auth.device_id, opened.digest))
            self.batches.append(opened)
            lose = self._lose > 0
            if lose:
                self._lose -= 1
        if lose:
            raise _Lose
        return 202, {"digest": opened.digest, "windows": len(opened.batch.windows)}

    def start(self) -> TelemetryServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


class _Lose(Exception):
    pass


@contextmanager
def telemetry_server(devices: dict[str, Any] | None = None, **kwargs: Any) -> Iterator[TelemetryServer]:
    server = TelemetryServer(devices, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
