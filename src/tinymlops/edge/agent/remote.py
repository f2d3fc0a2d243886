"""The agent over a control-plane server: enrol once, bootstrap trust once, then follow the server's
TUF repository with every request signed, and report every install back.

::

    conn = connect("http://127.0.0.1:8470", "/var/lib/tinymlops", enrolment_token="tme_…", profile="rpi-4")
    with conn.agent() as agent:          # an Agent over conn.source, conn.keys, conn.trusted_keys
        agent.run_once()                 # check → download (TUF) → verify → install A/B → report

What :func:`connect` does, each step at most once per data directory (so a restarted agent needs
no network to start, and picks up where a crash left it):

1. **keys** — loads the device's Ed25519/X25519 keys from ``<data_dir>/keys`` or creates them
   there (private keys never leave the device);
2. **enrolment** — when ``<data_dir>/enrolment.json`` is absent, enrols with the one-time token and
   profile (a signed request) and saves what the server answered. A crash after the server
   accepted the enrolment but before the file was written is repaired on the next start: the token
   is then spent (409), so the agent asks the server who it is with a signed request instead;
3. **bootstrap** — when the TUF trust anchor (``<data_dir>/tuf/trusted-root.json``) or the release
   keys (``<data_dir>/trusted/*.pub``) are missing, fetches ``GET /v1/devices/me/bootstrap`` and
   stores them. The root is accepted only if it is a valid self-signed TUF root; later roots come
   through TUF, each signed by the previous one. Pass ``trusted_root=`` / ``release_keys=`` to pin
   them out of band instead of trusting the server on first use.

The :class:`Connection` it returns holds a :class:`RemoteSource` — the TUF update source (this
device's target, then its cohorts') whose every HTTP request is signed
(:func:`signed_headers`) — an :class:`InstallReporter` that POSTs each
:class:`~tinymlops.edge.agent.install.InstallResult` to ``/v1/devices/me/installs``, and a
:class:`HealthReporter` that POSTs each :class:`~tinymlops.spec.health_report.HealthReport` (the
predictions, errors and latency of the bundle the agent runs) to ``/v1/devices/me/health``. Each
report is first written atomically to a queue on disk — install reports in
``<data_dir>/reports/``, health reports in ``<data_dir>/reports/health/`` — at most
``MAX_PENDING_REPORTS`` each (the oldest are dropped beyond that), then sent oldest first. A
report the server cannot take now (unreachable, 5xx, 401 from a skewed clock) stays queued and is
sent again before the next check; one it refuses for good (400, 413, 422) is dropped; a failed
report never stops the agent.

Metering: the connection holds the device's :class:`~tinymlops.metering.meter.MeteringHost` (usage
ledgers in ``<data_dir>/metering/``, licenses verified with the trusted release keys) and a
:class:`~tinymlops.edge.agent.metering.MeteringSync` over the same signed client, which the agent
runs when online at most every ``AgentConfig.metering_interval`` seconds (sooner after a refused
metered call, or when the usage backlog outgrows one report): licenses and revocations in
(``GET /v1/devices/me/licenses``), usage reports out (``POST /v1/devices/me/usage``). :func:`connect`
runs it once right after it enrolled or bootstrapped, so a license sold before the device's first
contact is there before its first install.

Telemetry travels apart, through a :class:`TelemetryUploader` over the device's
:class:`~tinymlops.observe.upload_store.UploadStore` (``<data_dir>/telemetry/upload.sqlite3``): the
agent puts each closed telemetry window in the store, and at each cycle the uploader asks the
:class:`~tinymlops.observe.upload_policy.UploadPolicy` (consent, Wi-Fi only, charging, bytes per
day) with the device's context and, when it allows, POSTs sealed batches to
``/v1/devices/me/telemetry`` (the gzip body exactly as sealed, its signature header, the request
signed like every other). The server's answer decides what happens to the batch:

* 2xx, or ``409`` whose body is ``{"error": {"type": "DuplicateBatchError", "digest": "<this
  batch's digest>", …}}`` (the server already has it: a retry after a lost response) —
  **delivered**, its windows leave the store;
* any other 4xx (a malformed or oversized batch, a ``WindowOverlapError`` 409, …) — **refused for
  good**: resending the same bytes would be refused forever, so the batch is dropped and its windows
  are counted as dropped in the next batch's store status — except 401 (a skewed clock), 404/405
  (a server without the endpoint yet), 408 and 429, which are retried;
* 5xx, or no answer — kept; the same bytes go again at the next cycle.

Edge closure: the standard library, ``cryptography``, python-tuf's client and the device halves of
:mod:`tinymlops.devices` — no server, database or training stack.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tinymlops.crypto.keys import DeviceKeys, key_id, load_public_key, save_public_key, write_file_atomic
from tinymlops.devices.client import DeviceClient, error_fields
from tinymlops.devices.identity import EnrolmentState, load_or_create_keys
from tinymlops.devices.request_auth import sign_request
from tinymlops.edge.agent.install import InstallResult
from tinymlops.edge.agent.metering import METERING_DIR, MeteringSync, SyncOutcome
from tinymlops.edge.updates import HeaderProvider, Offer, TufUpdateSource, UpdateClient
from tinymlops.errors import (
    InvalidInputError,
    ServerRequestError,
    ServerUnreachableError,
    TinyMLOpsError,
    UsageError,
)
from tinymlops.metering.meter import LEDGER_SUFFIX, MeteringHost
from tinymlops.observe.upload_policy import UploadPolicy, decide
from tinymlops.observe.upload_store import UploadStore
from tinymlops.observe.upload_store import peek as peek_store
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.health_report import HealthReport
from tinymlops.spec.install_report import InstallReport

log = logging.getLogger("tinymlops.edge.agent.remote")

KEYS_DIR = "keys"
TRUSTED_DIR = "trusted"
REPORTS_DIR = "reports"
#: health reports queue apart from install reports (each queue reads only its own kind)
HEALTH_REPORTS_DIR = "reports/health"
BOOTSTRAP_PATH = "/v1/devices/me/bootstrap"
INSTALLS_PATH = "/v1/devices/me/installs"
HEALTH_PATH = "/v1/devices/me/health"
TELEMETRY_PATH = "/v1/devices/me/telemetry"
#: the upload store, under the data directory
TELEMETRY_STORE = "telemetry/upload.sqlite3"
#: batches one upload sends at most (the rest wait for the next cycle)
MAX_BATCHES_PER_UPLOAD = 8
#: a batch body is kept under the control plane's default request body limit (1 MiB,
#: tinymlops.server.settings): more windows go as more batches, never as one the server refuses
MAX_UPLOAD_BODY_BYTES = 1024 * 1024 - 4096
#: 4xx statuses that say nothing about the batch: retried, never a refusal
RETRY_STATUSES = (401, 404, 405, 408, 429)
#: reports of each kind kept while the server is unreachable (the oldest are dropped beyond this)
MAX_PENDING_REPORTS = 200
#: statuses after which the server will never take a report: drop it rather than retry forever
PERMANENT_REFUSALS = (400, 413, 422)

_REPO_PATH = re.compile(r"^/[A-Za-z0-9/_.-]{0,255}$")


def signed_headers(keys: DeviceKeys, *, clock: Callable[[], float] = time.time) -> HeaderProvider:
    """A header callable for :class:`~tinymlops.edge.updates.UpdateClient`: signs each GET with the
    device key (over the URL's raw path and query, as the server receives it)."""

    def headers(method: str, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        return sign_request(keys.signing, method.upper(), target, b"", timestamp=int(clock())).headers()

    return headers


# --- reports -----------------------------------------------------------------------------------
class _ReportQueue:
    """A durable queue of one kind of report: written atomically, sent oldest first to ``path``."""

    kind = "report"
    path = ""

    def __init__(self, client: DeviceClient, directory: Path | str, *, max_pending: int = MAX_PENDING_REPORTS):
        self.client = client
        self.directory = Path(directory)
        self.max_pending = max_pending
        self.sent = 0
        self.dropped = 0

    @staticmethod
    def _check(doc: Any) -> None:
        """Raise a TinyMLOpsError when ``doc`` is not a report of this kind."""

    def pending(self) -> list[Path]:
        try:
            return sorted(p for p in self.directory.glob("*.json") if not p.name.startswith("."))
        except OSError:
            return []

    def _enqueue(self, doc: dict[str, Any]) -> Path:
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}.json"
        data = json.dumps(doc, allow_nan=False).encode("utf-8")
        path = write_file_atomic(self.directory / name, data)
        for old in self.pending()[: -self.max_pending]:
            old.unlink(missing_ok=True)
            self.dropped += 1
        return path

    def flush(self) -> int:
        """Send the queued reports; returns how many the server took. Stops at the first one the
        server cannot take now (it is retried at the next flush); drops one it refuses for good."""
        sent = 0
        for path in self.pending():
            try:
                doc = json.loads(path.read_bytes())
                self._check(doc)
            except (OSError, ValueError, TinyMLOpsError):
                log.warning("dropping unreadable queued %s %s", self.kind, path.name)
                path.unlink(missing_ok=True)
                self.dropped += 1
                continue
            try:
                self.client.request("POST", self.path, json_body=doc)
            except ServerRequestError as exc:
                if isinstance(exc, ServerUnreachableError) or exc.status not in PERMANENT_REFUSALS:
                    log.info("%s not sent (will retry): %s", self.kind, exc.message)
                    break
                log.warning("the server refused a %s for good; dropped: %s", self.kind, exc.message)
                self.dropped += 1
            except (TinyMLOpsError, OSError) as exc:
                log.info("%s not sent (will retry): %s", self.kind, exc)
                break
            else:
                sent += 1
            path.unlink(missing_ok=True)
        self.sent += sent
        return sent


class InstallReporter(_ReportQueue):
    """The agent's install reporter: queue each result durably, then send what is queued, oldest first."""

    kind = "install report"
    path = INSTALLS_PATH

    @staticmethod
    def _check(doc: Any) -> None:
        InstallReport.from_dict(doc)

    def __call__(self, result: InstallResult) -> None:
        try:
            self.enqueue(InstallReport.from_result_dict(result.to_dict()))
        except (TinyMLOpsError, OSError, ValueError) as exc:  # never let reporting break an install
            log.warning("could not queue an install report: %s", exc)
            return
        self.flush()

    def enqueue(self, report: InstallReport) -> Path:
        return self._enqueue(report.to_dict())


class HealthReporter(_ReportQueue):
    """The agent's health reporter (a :data:`~tinymlops.edge.agent.loop.HealthSink`): queue each
    report durably, then send what is queued, oldest first.

    A report is *taken* once it is on disk: a send that fails leaves it queued for the next flush
    (before the next check, or with the next report). Only a report that cannot be written raises,
    so the agent keeps that window in memory and merges it into the next one."""

    kind = "health report"
    path = HEALTH_PATH

    @staticmethod
    def _check(doc: Any) -> None:
        HealthReport.from_dict(doc)

    def __call__(self, report: HealthReport) -> None:
        self.enqueue(report)  # OSError / ValueError propagate: the agent keeps the window
        try:
            self.flush()
        except Exception as exc:  # it is queued: sending is best effort
            log.warning("flushing health reports failed: %s", exc)

    def enqueue(self, report: HealthReport) -> Path:
        return self._enqueue(report.to_dict())


@dataclass(frozen=True)
class UploadOutcome:
    """What one :meth:`TelemetryUploader.upload` did: batches ``sent`` (``duplicates`` of them the
    server already had) carrying ``windows`` windows, batches ``refused`` for good, and why it
    stopped early (``deferred``: the upload policy's reason; ``error``: the server or network)."""

    sent: int = 0
    windows: int = 0
    duplicates: int = 0
    refused: int = 0
    deferred: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"event": "telemetry", **{k: getattr(self, k) for k in self.__dataclass_fields__}}


def _is_duplicate(body: bytes, digest: str) -> bool:
    """The server's answer to a digest it already has (the exact contract in the module doc)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    error = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(error, dict) and error.get("type") == "DuplicateBatchError" and error.get("digest") == digest


def _error_text(body: bytes) -> str:
    fields = error_fields(body)
    return f"{fields[0]}: {fields[1]}"[:300] if fields else body[:200].decode("utf-8", "replace")


class TelemetryUploader:
    """Sends the upload store's batches to the server when the upload policy allows (module doc).

    Call it (or :meth:`upload`) with the device's context once per agent cycle. It never raises
    for the server's or the network's faults."""

    def __init__(
        self,
        client: DeviceClient,
        store: UploadStore,
        policy: UploadPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        max_batches: int = MAX_BATCHES_PER_UPLOAD,
        max_body_bytes: int = MAX_UPLOAD_BODY_BYTES,
    ) -> None:
        self.client = client
        self.store = store
        self.policy = policy or UploadPolicy()
        self.clock = clock
        self.max_batches = max_batches
        self.max_body_bytes = max_body_bytes
        self.last: UploadOutcome | None = None

    def __call__(self, context: DeviceContext) -> UploadOutcome:
        return self.upload(context)

    def upload(self, context: DeviceContext) -> UploadOutcome:
        sent = windows = duplicates = refused = 0
        deferred = error = None
        for _ in range(self.max_batches):
            now = self.clock()
            sent_log = self.store.sent_log()  # nothing is sent before the second decision below reads it
            decision = decide(self.policy, context, sent_log, now)
            if not decision.allowed:
                deferred = decision.reason
                break
            allowance = decision.allowance
            limit = self.max_body_bytes if allowance is None else min(allowance, self.max_body_bytes)
            batch = self.store.next_batch(limit_bytes=limit)
            if batch is None:
                break
            size = len(batch.body)
            decision = decide(self.policy, context, sent_log, now, batch_bytes=size)
            if not decision.allowed:
                cap = self.policy.max_bytes_per_day
                if cap is not None and size > cap:  # would never go: drop it rather than stall the store
                    self.store.refuse(batch.digest, f"{size} bytes is more than the {cap} a day allows")
                    refused += 1
                    continue
                deferred = decision.reason
                break
            try:
                response = self.client.request(
                    "POST", TELEMETRY_PATH, body=batch.body, headers=batch.headers(), check=False
                )
            except (TinyMLOpsError, OSError) as exc:  # unreachable: the same bytes go next time
                self.store.record_sent(size, now)
                error = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
                break
            self.store.record_sent(size, now)
            status = response.status
            if 200 <= status < 300 or (status == 409 and _is_duplicate(response.body, batch.digest)):
                self.store.acknowledge(batch.digest)
                sent += 1
                windows += batch.windows
                duplicates += status == 409
            elif 400 <= status < 500 and status not in RETRY_STATUSES:
                self.store.refuse(batch.digest, f"{status} {_error_text(response.body)}")
                refused += 1
            else:
                error = f"the server answered {status} {_error_text(response.body)}".strip()
                break
        if error:
            log.info("telemetry not sent (will retry): %s", error)
        outcome = UploadOutcome(sent, windows, duplicates, refused, deferred, error)
        self.last = outcome
        return outcome


class RemoteSource:
    """The agent's update source over the server's TUF repository; sends queued install (and
    health) reports before each check (a report failure never fails the check)."""

    def __init__(
        self, updates: TufUpdateSource, reporter: InstallReporter, health: HealthReporter | None = None
    ) -> None:
        self.updates = updates
        self.reporter = reporter
        self.health = health

    @property
    def target_paths(self) -> list[str]:
        return list(self.updates.target_paths)

    def check(self) -> Offer | None:
        for queue in (self.reporter, self.health):
            if queue is None:
                continue
            try:
                queue.flush()
            except Exception as exc:  # reporting is best effort
                log.warning("flushing %ss failed: %s", queue.kind, exc)
        return self.updates.check()

    def fetch(self, offer: Offer, dest_dir: Path) -> Path:
        return self.updates.fetch(offer, dest_dir)


# --- connecting ---------------------------------------------------------------------------------
@dataclass
class Connection:
    """Everything an :class:`~tinymlops.edge.agent.loop.Agent` needs to follow the server."""

    server_url: str
    data_dir: Path
    keys: DeviceKeys
    enrolment: EnrolmentState
    trusted_keys: list[bytes]
    client: DeviceClient
    updates: UpdateClient
    source: RemoteSource
    reporter: InstallReporter
    health_reporter: HealthReporter | None = None
    telemetry: TelemetryUploader | None = None
    #: the device's usage ledgers, and the sync of licenses and usage reports with the server
    metering_host: MeteringHost | None = None
    metering: MeteringSync | None = None
    #: what the sync right after enrolment / bootstrap did (None: connect did not run it)
    metering_outcome: SyncOutcome | None = None

    @property
    def device_id(self) -> str:
        return self.keys.device_id

    def agent(self, **kwargs: Any) -> Any:
        """An :class:`~tinymlops.edge.agent.loop.Agent` over this connection (``kwargs``: config, context, …).

        Install results go to ``reporter=`` (if given) and then to the server; health reports go to
        the server, or to ``health_reporter=`` instead when given (``None`` turns them off);
        telemetry windows go to this connection's upload store and uploader (``telemetry_store=None``
        turns them off); metered bundles meter with this connection's host, and its metering sync runs
        when due (``AgentConfig.metering_interval``; ``metering_sync=None`` turns the sync off)."""
        from tinymlops.edge.agent.loop import Agent

        reporter = kwargs.pop("reporter", None)
        report = self.reporter if reporter is None else _both(reporter, self.reporter)
        kwargs.setdefault("health_reporter", self.health_reporter)
        if self.telemetry is not None:
            kwargs.setdefault("telemetry_store", self.telemetry.store)
            kwargs.setdefault("telemetry_uploader", self.telemetry)
        if self.metering_host is not None:
            kwargs.setdefault("metering", self.metering_host)
        kwargs.setdefault("metering_sync", self.metering)
        return Agent(self.data_dir, self.source, self.keys, self.trusted_keys, reporter=report, **kwargs)


def _both(first: Callable[[InstallResult], None], second: Callable[[InstallResult], None]) -> Callable[..., None]:
    def report(result: InstallResult) -> None:
        first(result)
        second(result)

    return report


def _same_server(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def _enrol(
    client: DeviceClient, data_dir: Path, token: str | None, profile: str | dict[str, Any] | None
) -> EnrolmentState:
    if not token or not profile:
        raise UsageError(
            f"{data_dir} is not enrolled with {client.server_url}: give an enrolment token and a profile "
            "(`tinymlops device token create` on the control plane makes a token)"
        )
    try:
        state = client.enrol(token, profile)
    except ServerRequestError as exc:
        if exc.status != 409:
            raise
        # the server enrolled this key before (e.g. we crashed before saving): ask who we are
        try:
            record = client.me()
        except ServerRequestError:
            raise exc from None
        if record.get("id") != client.device_id:
            raise InvalidInputError("the server answered with the record of another device") from None
        state = EnrolmentState(
            server_url=client.server_url,
            device_id=client.device_id,
            profile_name=str(record.get("profile_name", "")) or "unknown",
            enrolled_at=str(record.get("enrolled_at", "")) or "unknown",
            tags=tuple(str(t) for t in record.get("tags", ())),
        )
    state.save(data_dir)
    return state


def _trusted_files(data_dir: Path) -> list[Path]:
    directory = data_dir / TRUSTED_DIR
    return sorted(directory.glob("*.pub")) if directory.is_dir() else []


def _bootstrap(client: DeviceClient) -> tuple[bytes, list[bytes], str]:
    doc = client.get_json(BOOTSTRAP_PATH)
    try:
        if not isinstance(doc, dict) or doc.get("device_id") != client.device_id:
            raise ValueError("it is not this device's bootstrap")
        root = base64.b64decode(doc["tuf_root"], validate=True)
        keys = [base64.b64decode(k, validate=True) for k in doc["release_keys"]]
        repository = doc["repository"]
        if not keys or any(len(k) != 32 for k in keys):
            raise ValueError("release keys must be 32-byte Ed25519 public keys")
        if not isinstance(repository, str) or not _REPO_PATH.match(repository):
            raise ValueError(f"bad repository path {repository!r:.80}")
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"the server's bootstrap answer is malformed: {exc}") from None
    return root, keys, repository


def connect(
    server_url: str,
    data_dir: Path | str,
    *,
    enrolment_token: str | None = None,
    profile: str | dict[str, Any] | None = None,
    keys_dir: Path | str | None = None,
    trusted_root: bytes | None = None,
    release_keys: Sequence[bytes] | None = None,
    repository_path: str = "/v1/tuf",
    timeout_s: float = 10.0,
    clock: Callable[[], float] = time.time,
    upload_policy: UploadPolicy | None = None,
    telemetry_store: UploadStore | None = None,
) -> Connection:
    """Enrol (once), bootstrap trust (once) and return the :class:`Connection` (module docstring).

    ``upload_policy`` governs telemetry uploads (default: no consent — windows wait on the device);
    ``telemetry_store`` replaces the default store (``<data_dir>/telemetry/upload.sqlite3``)."""
    data_dir = Path(data_dir)
    client_keys = load_or_create_keys(Path(keys_dir) if keys_dir is not None else data_dir / KEYS_DIR)
    client = DeviceClient(server_url, client_keys, timeout_s=timeout_s, clock=clock)
    state = EnrolmentState.load(data_dir)
    contacted = state is None  # enrolled or bootstrapped now: the server is reachable
    if state is None:
        state = _enrol(client, data_dir, enrolment_token, profile)
    elif not _same_server(state.server_url, client.server_url):
        raise UsageError(
            f"{data_dir} is enrolled with {state.server_url}, not {client.server_url}; "
            "use another data directory to enrol with another control plane"
        )
    elif state.device_id != client_keys.device_id:
        raise UsageError(
            f"{data_dir}: enrolment.json is for device {state.device_id} but the keys are device "
            f"{client_keys.device_id}"
        )

    if release_keys is not None:
        for k in release_keys:
            save_public_key(data_dir / TRUSTED_DIR / f"release-{key_id(bytes(k))}.pub", bytes(k))
    if trusted_root is not None and not UpdateClient.is_enrolled(data_dir):
        UpdateClient.enrol(data_dir, trusted_root)
    if not UpdateClient.is_enrolled(data_dir) or not _trusted_files(data_dir):
        contacted = True
        root, keys, _ = _bootstrap(client)
        if not UpdateClient.is_enrolled(data_dir):  # never replace a trust anchor: new roots come via TUF
            UpdateClient.enrol(data_dir, root)
        if not _trusted_files(data_dir):
            for k in keys:
                save_public_key(data_dir / TRUSTED_DIR / f"release-{key_id(k)}.pub", k)
    trusted = [load_public_key(p) for p in _trusted_files(data_dir)]

    updates = UpdateClient(
        data_dir, client.server_url + repository_path, headers=signed_headers(client_keys, clock=clock)
    )
    reporter = InstallReporter(client, data_dir / REPORTS_DIR)
    health = HealthReporter(client, data_dir / HEALTH_REPORTS_DIR)
    source = RemoteSource(TufUpdateSource(updates, client_keys.device_id, state.tags), reporter, health)
    store = telemetry_store or UploadStore(data_dir / TELEMETRY_STORE, client_keys.signing, clock=clock)
    telemetry = TelemetryUploader(client, store, upload_policy, clock=clock)
    host = MeteringHost(
        data_dir / METERING_DIR, device_key=client_keys.signing, trusted_issuer_keys=trusted, clock=clock
    )
    metering = MeteringSync(host, client, data_dir / METERING_DIR)
    outcome = None
    if contacted:  # a license sold before this first contact is installed before the first bundle
        try:
            outcome = metering()
        except Exception:  # never fails the connection: the agent syncs again every cycle
            log.exception("the first metering sync failed")
    return Connection(
        client.server_url,
        data_dir,
        client_keys,
        state,
        trusted,
        client,
        updates,
        source,
        reporter,
        health,
        telemetry,
        host,
        metering,
        outcome,
    )


def describe(data_dir: Path | str) -> dict[str, Any]:
    """What this data directory knows about its control plane (read-only, no network)."""
    data_dir = Path(data_dir)
    state = EnrolmentState.load(data_dir)
    out: dict[str, Any] = {"enrolment": None if state is None else state.to_dict()}
    if UpdateClient.is_enrolled(data_dir):
        out["tuf"] = UpdateClient(data_dir, "http://unused.invalid/").trusted_versions()
    out["trusted_release_keys"] = [p.name for p in _trusted_files(data_dir)]
    out["pending_reports"] = len(list((data_dir / REPORTS_DIR).glob("*.json")))
    out["pending_health_reports"] = len(list((data_dir / HEALTH_REPORTS_DIR).glob("*.json")))
    out["telemetry"] = peek_store(data_dir / TELEMETRY_STORE)
    ledgers = data_dir / METERING_DIR
    out["metering_ledgers"] = sorted(p.name[: -len(LEDGER_SUFFIX)] for p in ledgers.glob(f"*{LEDGER_SUFFIX}"))
    return out


__all__ = [
    "BOOTSTRAP_PATH",
    "HEALTH_PATH",
    "INSTALLS_PATH",
    "TELEMETRY_PATH",
    "TELEMETRY_STORE",
    "Connection",
    "HealthReporter",
    "InstallReporter",
    "RemoteSource",
    "TelemetryUploader",
    "UploadOutcome",
    "connect",
    "describe",
    "signed_headers",
]
