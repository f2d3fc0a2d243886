"""The other side of the device's metering sync: a real HTTP server on 127.0.0.1 that answers the two
device endpoints of the licensing contract as the control plane does, from memory.

* ``GET /v1/devices/me/licenses`` (``?model=``) — the device's licenses in chain order (revoked ones
  included), their revocations, and per model the chain position (``next_seq``, ``head``) of the
  branch the device last reported; it remembers when each revocation was first delivered.
* ``POST /v1/devices/me/usage`` — the exact bytes of a usage report, the device key's signature in
  ``X-Tinymlops-Report-Signature``: ``201`` with the range stored and ``next_seq`` (the stored
  branch's; for a report whose entries were all stored already — a replay — its ``last_seq + 1``, as
  the real server does); ``409 DuplicateReportError`` (``digest``, ``next_seq`` = its ``last_seq + 1``)
  for a digest already taken; ``409 ReportGapError`` (``first_seq``, ``next_seq``) for a report that
  starts past the stored head; ``400`` for a malformed report, a bad report signature (recorded as a
  ``tamper`` flag), a report naming another device or a license the server never issued to it.

Both check the request's device signature (:func:`~tinymlops.devices.request_auth.verify_request`,
nonces remembered) like the real endpoints: a failure is a 401.

It keeps, per (device, model), the licenses it issued (:meth:`LicensingServer.issue`,
:meth:`~LicensingServer.top_up`, :meth:`~LicensingServer.revoke` — signed with the test issuer key,
following the contract's rules: one chain per device and model, top-ups of the latest license only,
a revocation of the latest) and the entries of every branch the device reported: a report that
forks from the stored branch where it already had entries is flagged ``rollback``, one that grows a
branch other than the current one again ``clone``, and the report's branch becomes the current one;
every distinct entry is kept (:meth:`Chain.entry_count`). A report links to any stored entry (of any
branch) at ``first_seq - 1``; one that links to none is a ``ReportGapError``. Reconciliation beyond
that (counts, revoked use) is the real server's; the flags here are what the device side's tests
need.

Hooks let a test play a broken network or server:

* :meth:`LicensingServer.lose_responses` — take the next ``n`` usage reports, then drop the
  connection without answering (the device sees no answer: a lost 201);
* :meth:`LicensingServer.answer` — answer the next ``n`` requests (of a path, if given) with a fixed
  status and body; :meth:`LicensingServer.answer_raw` — with fixed bytes written to the socket as they
  are (a truncated body, a status line that is not HTTP …), then the connection is closed;
* :attr:`LicensingServer.down` — while True every connection is dropped unanswered (server down);
* :attr:`LicensingServer.max_body_bytes` — a request body larger is answered ``413
  PayloadTooLargeError`` before anything else, as the real server's body limit does (None: no limit);
* :attr:`LicensingServer.hide_chains` — GET answers without ``chains`` (the device must go by what it
  remembers); :meth:`LicensingServer.forget` — drop the stored entries of a chain from a seq on (the
  server lost them: the device's next report starts past the head);
* :attr:`LicensingServer.extra_licenses` / :attr:`~LicensingServer.extra_revocations` — items sent
  after the genuine ones (forged, altered, another device's …);
* :meth:`LicensingServer.revoke_on_next_report` — revoke a license while the device's report is in
  flight (the 201 then names it in ``revoked``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.crypto.keys import key_id, public_bytes
from tinymlops.devices.request_auth import RequestAuth, verify_request
from tinymlops.errors import TinyMLOpsError
from tinymlops.metering.license_signing import (
    SignedLicense,
    SignedRevocation,
    SignedUsageReport,
    sign_license,
    sign_revocation,
    verify_usage_report,
)
from tinymlops.spec.license import License, Revocation
from tinymlops.spec.usage_report import GENESIS_HASH, LedgerEntry, UsageReport

LICENSES_PATH = "/v1/devices/me/licenses"
USAGE_PATH = "/v1/devices/me/usage"
SIGNATURE_HEADER = "X-Tinymlops-Report-Signature"


@dataclass
class Chain:
    """One (device, model) chain as the server holds it."""

    device_id: str
    model: str
    licenses: list[tuple[License, SignedLicense]] = field(default_factory=list)
    revocations: dict[str, tuple[Revocation, SignedRevocation]] = field(default_factory=dict)
    #: when each revocation was first delivered to the device (server clock)
    delivered: dict[str, float] = field(default_factory=dict)
    #: the device's current branch: entries from seq 0, as reported
    branch: list[LedgerEntry] = field(default_factory=list)
    #: every distinct entry ever reported, by hash (both branches of a fork)
    seen: dict[str, LedgerEntry] = field(default_factory=dict)
    reports: list[UsageReport] = field(default_factory=list)

    @property
    def latest(self) -> License:
        return self.licenses[-1][0]

    @property
    def next_seq(self) -> int:
        return len(self.branch)

    @property
    def head(self) -> str | None:
        return self.branch[-1].hash if self.branch else None

    def entry_count(self) -> int:
        return len(self.seen)

    def path_to(self, hash: str) -> list[LedgerEntry]:
        """The stored entries from seq 0 to the one hashing to ``hash`` (on whichever branch)."""
        path = []
        while hash != GENESIS_HASH:
            entry = self.seen[hash]
            path.append(entry)
            hash = entry.prev_hash
        return path[::-1]

    def reserved(self) -> int:
        """Queries reserved on every branch (each distinct entry once): what the device is billed."""
        return sum(e.count for e in self.seen.values() if e.kind == "reserve")


@dataclass
class _Canned:
    status: int
    body: dict[str, Any]
    left: int
    path: str | None
    raw: bytes | None = None


class _Drop(Exception):
    """Close the connection without an answer."""


class LicensingServer:
    """See the module doc. ``issuer_key`` signs licenses and revocations (the workspace's release key
    in the agent tests, so the device trusts it through its release keys)."""

    def __init__(self, issuer_key: Ed25519PrivateKey | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.issuer_key = issuer_key or Ed25519PrivateKey.generate()
        self.clock = clock
        self.devices: dict[str, bytes] = {}
        self.chains: dict[tuple[str, str], Chain] = {}
        self._by_license: dict[str, Chain] = {}
        self.flags: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every answered request
        self.received: list[tuple[str, bytes]] = []  # (path, body) of every request, canned answers included
        self.usage_bodies: list[bytes] = []
        self.extra_licenses: list[dict[str, Any]] = []
        self.extra_revocations: list[dict[str, Any]] = []
        self.down = False
        self.hide_chains = False
        self.max_body_bytes: int | None = None
        self._digests: dict[tuple[str, str], Chain] = {}
        self._nonces: set[tuple[str, str]] = set()
        self._lose = 0
        self._canned: _Canned | None = None
        self._revoke_next: tuple[str, str] | None = None
        self._lock = threading.RLock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    # --- the operator's side (what the real LicenseService does) ---------------------------------
    def enrol(self, device_id: str, public_key: Any) -> None:
        """Accept ``device_id``, whose Ed25519 public key is ``public_key`` (a key or 32 raw bytes)."""
        self.devices[device_id] = public_bytes(public_key) if not isinstance(public_key, bytes) else public_key

    def license(
        self,
        device_id: str,
        model: str,
        queries: int,
        *,
        previous: str | None = None,
        valid_from: int | None = None,
        valid_until: int | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> License:
        """A license document for an enrolled device (not issued: see :meth:`issue` / :meth:`top_up`)."""
        now = int(self.clock())
        key = key or self.issuer_key
        return License(
            license_id=secrets.token_hex(16),
            device_id=device_id,
            device_public_key=self.devices[device_id].hex(),
            model=model,
            queries=queries,
            valid_from=now - 3600 if valid_from is None else valid_from,
            valid_until=now + 30 * 86400 if valid_until is None else valid_until,
            issued_at=now,
            issuer_key_id=key_id(key),
            previous_license_id=previous,
        )

    def issue(self, device_id: str, model: str, queries: int, **kwargs: Any) -> License:
        """Start the (device, model) chain; a second chain is refused (top it up instead)."""
        with self._lock:
            if (device_id, model) in self.chains:
                raise ValueError(f"device {device_id} already has a {model} chain: top it up")
            lic = self.license(device_id, model, queries, **kwargs)
            chain = self.chains[(device_id, model)] = Chain(device_id, model)
            self._add(chain, lic)
            return lic

    def top_up(self, license_id: str, queries: int, **kwargs: Any) -> License:
        """Top up the chain whose latest license is ``license_id`` (revoked or not: reinstates)."""
        with self._lock:
            chain = self._by_license[license_id]
            if chain.latest.license_id != license_id:
                raise ValueError(f"license {license_id} is not the latest of its chain ({chain.latest.license_id})")
            lic = self.license(chain.device_id, chain.model, queries, previous=license_id, **kwargs)
            self._add(chain, lic)
            return lic

    def revoke(self, license_id: str, reason: str = "chargeback") -> Revocation:
        """Revoke the chain of ``license_id`` (its latest license)."""
        with self._lock:
            chain = self._by_license[license_id]
            latest = chain.latest
            rev = Revocation(
                license_id=latest.license_id,
                device_id=chain.device_id,
                model=chain.model,
                revoked_at=int(self.clock()),
                reason=reason,
                issuer_key_id=key_id(self.issuer_key),
            )
            chain.revocations[latest.license_id] = (rev, sign_revocation(rev, self.issuer_key))
            return rev

    def revoke_on_next_report(self, license_id: str, reason: str = "chargeback") -> None:
        with self._lock:
            self._revoke_next = (license_id, reason)

    def _add(self, chain: Chain, lic: License) -> None:
        chain.licenses.append((lic, sign_license(lic, self.issuer_key)))
        self._by_license[lic.license_id] = chain

    def chain(self, device_id: str, model: str) -> Chain:
        return self.chains[(device_id, model)]

    def forget(self, device_id: str, model: str, from_seq: int) -> None:
        """The server lost the stored entries of the chain's current branch from ``from_seq`` on."""
        with self._lock:
            chain = self.chains[(device_id, model)]
            for entry in chain.branch[from_seq:]:
                chain.seen.pop(entry.hash, None)
            del chain.branch[from_seq:]

    # --- hooks -----------------------------------------------------------------------------------
    def lose_responses(self, n: int = 1) -> None:
        with self._lock:
            self._lose = n

    def answer(self, status: int, body: dict[str, Any], n: int = 1, *, path: str | None = None) -> None:
        """Answer the next ``n`` requests (of ``path``) with ``status`` and ``body``; ``n=0`` stops it."""
        with self._lock:
            self._canned = _Canned(status, body, n, path) if n > 0 else None

    def answer_raw(self, raw: bytes, n: int = 1, *, path: str | None = None) -> None:
        """Answer the next ``n`` requests (of ``path``) by writing ``raw`` as it is, then closing."""
        with self._lock:
            self._canned = _Canned(0, {}, n, path, raw) if n > 0 else None

    def statuses(self, path: str) -> list[int]:
        with self._lock:
            return [s for _, p, s in self.requests if p == path]

    # --- serving ---------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(2)

            def _reply(self, status: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                with server._lock:  # recorded before the device can see the answer
                    server.requests.append((self.command, urlsplit(self.path).path, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                path = urlsplit(self.path).path
                with server._lock:
                    server.received.append((path, body))
                    if server.down:
                        return self._drop()
                    canned = server._canned
                    if canned is not None and canned.path in (None, path):
                        canned.left -= 1
                        if canned.left <= 0:
                            server._canned = None
                    else:
                        canned = None
                limit = server.max_body_bytes
                if canned is None and limit is not None and len(body) > limit:
                    return self._reply(
                        413, _error(413, "PayloadTooLargeError", f"request body exceeds the limit of {limit} bytes")[1]
                    )
                if canned is not None and canned.raw is not None:
                    self.wfile.write(canned.raw)
                    self.wfile.flush()
                    return self._drop()
                if canned is not None:
                    return self._reply(canned.status, canned.body)
                try:
                    status, doc = server._take(self.command, self.path, body, list(self.headers.items()))
                except _Drop:
                    return self._drop()
                self._reply(status, doc)

            do_GET = _serve
            do_POST = _serve

        return Handler

    def _take(self, method: str, target: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, dict]:
        try:
            auth = RequestAuth.from_headers(headers)
            key = self.devices.get(auth.device_id)
            if key is None:
                return _error(401, "AuthenticationError", f"unknown device {auth.device_id}")
            verify_request(auth, method=method, target=target, body=body, signing_public=key, now=time.time())
        except TinyMLOpsError as exc:
            return _error(401, type(exc).__name__, exc.message)
        with self._lock:
            if (auth.device_id, auth.nonce) in self._nonces:
                return _error(401, "ReplayedRequestError", "nonce seen before")
            self._nonces.add((auth.device_id, auth.nonce))
        parts = urlsplit(target)
        if method == "GET" and parts.path == LICENSES_PATH:
            model = parse_qs(parts.query).get("model", [None])[0]
            return 200, self._licenses(auth.device_id, model)
        if method == "POST" and parts.path == USAGE_PATH:
            signature = {k.lower(): v for k, v in headers}.get(SIGNATURE_HEADER.lower(), "")
            return self._usage(auth.device_id, body, signature)
        return _error(404, "NotFoundError", f"no route {method} {parts.path}")

    def _licenses(self, device_id: str, model: str | None) -> dict[str, Any]:
        now = self.clock()
        licenses, revocations, chains = [], [], []
        with self._lock:
            for (dev, name), chain in sorted(self.chains.items()):
                if dev != device_id or (model is not None and name != model):
                    continue
                for lic, signed in chain.licenses:
                    licenses.append(_item(lic.license_id, name, signed, previous=lic.previous_license_id))
                for lid, (_rev, signed_rev) in chain.revocations.items():
                    revocations.append(_item(lid, name, signed_rev))
                    chain.delivered.setdefault(lid, now)
                chains.append({"model": name, "next_seq": chain.next_seq, "head": chain.head})
            doc: dict[str, Any] = {
                "device_id": device_id,
                "licenses": licenses + list(self.extra_licenses),
                "revocations": revocations + list(self.extra_revocations),
            }
            if not self.hide_chains:
                doc["chains"] = chains
        return doc

    def _usage(self, device_id: str, body: bytes, signature: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.usage_bodies.append(body)
        try:
            report = verify_usage_report(SignedUsageReport(body, bytes.fromhex(signature)), self.devices[device_id])
        except ValueError:
            return _error(400, "SpecError", f"{SIGNATURE_HEADER} must be 128 hex digits")
        except TinyMLOpsError as exc:
            if type(exc).__name__ == "SignatureError":
                self._flag("tamper", "alert", device_id, None, None, f"bad report signature: {exc.message}")
            return _error(400, type(exc).__name__, exc.message)
        if report.device_id != device_id:
            return _error(400, "LicenseError", f"the report is for device {report.device_id}")
        digest = hashlib.sha256(body).hexdigest()
        with self._lock:
            chain = self._by_license.get(report.license_id)
            if chain is None or chain.device_id != device_id:
                return _error(400, "LicenseError", f"license {report.license_id} was not issued to this device")
            if (device_id, digest) in self._digests:
                self._flag("replay", "info", device_id, chain.model, report.license_id, f"report {digest} again")
                return _error(
                    409,
                    "DuplicateReportError",
                    f"usage report {digest} was received before",
                    digest=digest,
                    next_seq=report.last_seq + 1,  # a replay: right after it (the real server's rule)
                )
            pred = chain.seen.get(report.head_before) if report.first_seq else None
            if report.first_seq and (pred is None or pred.seq != report.first_seq - 1):
                # nothing stored to link to: past every branch's end (resend from the current head), or
                # off every stored branch (resend from the start)
                resend = chain.next_seq if chain.next_seq < report.first_seq else 0
                return _error(
                    409,
                    "ReportGapError",
                    f"the report starts at seq {report.first_seq}, linked to no stored entry",
                    first_seq=report.first_seq,
                    next_seq=resend,
                )
            flagged = len(self.flags)
            base = chain.path_to(report.head_before) if report.first_seq else []
            if [e.hash for e in chain.branch[: len(base)]] != [e.hash for e in base]:
                # a branch other than the current one grows again: two ledgers in use (a clone)
                if any(e.hash not in chain.seen for e in report.entries):
                    self._flag(
                        "clone", "alert", device_id, chain.model, report.license_id, "a second branch grows",
                        seq=report.first_seq,
                    )  # fmt: skip
                chain.branch = base
            new = 0
            for entry in report.entries:
                stored = chain.branch[entry.seq] if entry.seq < len(chain.branch) else None
                if stored is not None and stored.hash != entry.hash:
                    self._flag(
                        "rollback", "alert", device_id, chain.model, entry.license_id, "the chain forks", seq=entry.seq
                    )
                    del chain.branch[entry.seq :]
                    stored = None
                if stored is None:
                    chain.branch.append(entry)
                if entry.hash not in chain.seen:
                    chain.seen[entry.hash] = entry
                    new += 1
                if entry.kind == "license":
                    issued = next((s for lic, s in chain.licenses if lic.license_id == entry.license_id), None)
                    if issued is None or hashlib.sha256(issued.data).hexdigest() != entry.ref:
                        self._flag("tamper", "alert", device_id, chain.model, entry.license_id, "unknown license")
            replay = new == 0
            if replay:
                self._flag("replay", "info", device_id, chain.model, report.license_id, "every entry already stored")
            self._digests[(device_id, digest)] = chain
            chain.reports.append(report)
            if self._revoke_next is not None:
                lid, reason = self._revoke_next
                self._revoke_next = None
                self.revoke(lid, reason)
            revoked = sorted(lid for (dev, _), c in self.chains.items() if dev == device_id for lid in c.revocations)
            flags = self.flags[flagged:]
            if self._lose > 0:  # taken, but the answer never reaches the device
                self._lose -= 1
                raise _Drop
            return 201, {
                "report_id": len(chain.reports),
                "digest": digest,
                "model": chain.model,
                "first_seq": report.first_seq,
                "last_seq": report.last_seq,
                # a replay: right after it, never the head (a copy's chain may leave the stored one past it)
                "next_seq": report.last_seq + 1 if replay else chain.next_seq,
                "flags": flags,
                "revoked": revoked,
            }

    def _flag(
        self, kind: str, severity: str, device: str, model: str | None, license_id: str | None, detail: str, **kw: Any
    ) -> None:
        with self._lock:
            self.flags.append(
                {
                    "kind": kind,
                    "severity": severity,
                    "device_id": device,
                    "model": model,
                    "license_id": license_id,
                    "detail": detail,
                    **kw,
                }
            )

    def start(self) -> LicensingServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)


def _item(license_id: str, model: str, signed: Any, **extra: Any) -> dict[str, Any]:
    out = {
        "license_id": license_id,
        "model": model,
        "data": base64.b64encode(signed.data).decode("ascii"),
        "signature": bytes(signed.signature).hex(),
    }
    if "previous" in extra:
        out["previous_license_id"] = extra["previous"]
    return out


def _error(status: int, error_type: str, message: str, **details: Any) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"type": error_type, "message": message, **details}}


@contextmanager
def licensing_server(issuer_key: Ed25519PrivateKey | None = None, **kwargs: Any) -> Iterator[LicensingServer]:
    server = LicensingServer(issuer_key, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()
