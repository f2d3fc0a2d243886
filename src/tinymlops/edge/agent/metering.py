"""The agent's license sync: at each contact, bring this device's prepaid licenses and the issuer's
revocations in, and send its usage ledgers out.

::

    sync = MeteringSync(host, conn.client, data_dir)   # host: the agent's MeteringHost
    outcome = sync()                                   # when the agent says it is due (Agent.metering_due)

One sync (:meth:`MeteringSync.sync`):

1. ``GET /v1/devices/me/licenses`` — this device's licenses in chain order (revoked ones included),
   the issuer's revocations, and the server's position in each chain. Nothing the server sends is
   taken on its word: each license and revocation is verified with the trusted issuer keys (the
   release keys TUF bootstrapped) and must be for this device. One that does not verify, or that
   the ledger refuses, is **refused** (logged, listed in :attr:`SyncOutcome.refused`, never
   installed) and the rest still go on.
2. Per model, in chain order (each license after the one it tops up): every license the ledger
   lacks is installed, and a revocation is written right after the license it revokes is in force
   (so a chain revoked and then topped up while the device was away is replayed as it happened:
   the revocation forfeits what was left, the top-up reinstates). A revocation already written is a
   no-op.
3. Per model with a ledger on this device: usage reports from the server's position — the GET's
   ``chains`` entry when its head is the hash this ledger has at that seq; else the last position the
   server acknowledged to this device (``<state_dir>/metering-sync.json``, written atomically) when
   its head is on this ledger (the server's current branch is another copy's: this one goes on from
   its own, which the server still holds); else 0 (the server sorts out the fork) — in chunks of at
   most ``max_report_entries`` entries (:data:`~tinymlops.spec.usage_report.MAX_REPORT_ENTRIES`,
   4096) and ``max_report_bytes`` bytes (:data:`DEFAULT_MAX_REPORT_BYTES`: 4096 entries are ~0.9 MB,
   too close to the server's default 1 MiB body limit). The answer decides:

   * ``201`` — taken: carry on from its ``next_seq``;
   * ``409 DuplicateReportError`` naming this report's digest — already counted (a resend after a
     lost answer): carry on from its ``next_seq``;
   * ``409 ReportGapError`` — a report in between was lost: send again from its ``next_seq``;
   * ``413`` (the server's body limit is lower) — halve the entries per report (remembered for this
     model) and send again;
   * any other refusal — stop this model for this cycle (the entries stay in the ledger: nothing is
     ever deleted on the device) and report the error;
   * no answer — stop the sync; the report's exact bytes are sent again first at the next sync (so a
     report the server did take is answered with the duplicate 409, never counted twice).

   When a ``201`` names a revoked license this ledger has not written yet, the licenses are fetched
   once more at the end.

Usage reports are small and are not telemetry: they go whenever the server is reachable (no Wi-Fi
or charging gate). The sync never blocks predictions: the meter's lock is taken only to read rows or
to write one entry. It never raises for the server's or the network's faults: they are in the
returned :class:`SyncOutcome`.

Edge closure: the standard library, ``cryptography`` and the device halves of
:mod:`tinymlops.metering` and :mod:`tinymlops.devices`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tinymlops.crypto.keys import key_id, write_file_atomic
from tinymlops.errors import (
    InvalidInputError,
    ServerRequestError,
    ServerUnreachableError,
    TinyMLOpsError,
    UsageError,
)
from tinymlops.metering.license_signing import (
    SignedLicense,
    SignedRevocation,
    SignedUsageReport,
    verify_license,
    verify_revocation,
)
from tinymlops.metering.meter import Meter, MeteringHost
from tinymlops.spec.license import MODEL_NAME, License, Revocation
from tinymlops.spec.usage_report import GENESIS_HASH, MAX_REPORT_BYTES, MAX_REPORT_ENTRIES, UsageReport

log = logging.getLogger("tinymlops.edge.agent.metering")

#: the agent's usage ledgers (and this sync's state), under its data directory
METERING_DIR = "metering"
#: the sync's memory of the server's acknowledged position per model, under the state directory
STATE_FILE = "metering-sync.json"
STATE_VERSION = 1
#: reports one model sends at most in one sync, beyond what its ledger needs
EXTRA_REPORTS = 4
#: the default byte cap of one usage report (the server's default body limit is 1 MiB)
DEFAULT_MAX_REPORT_BYTES = 512 * 1024
#: the smallest byte cap accepted (one entry is at most ~400 bytes; a report's own fields ~500)
MIN_REPORT_BYTES = 2048

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")


class MeteringClient(Protocol):
    """What the sync needs of :class:`~tinymlops.devices.client.DeviceClient`."""

    @property
    def device_id(self) -> str: ...

    def licenses(self, model: str | None = None) -> dict[str, Any]: ...

    def send_usage(self, signed: SignedUsageReport) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SyncOutcome:
    """What one :meth:`MeteringSync.sync` did: license ids ``installed`` and ``revoked`` (revocation
    written), ledger entries ``reported`` in ``reports`` the server took (``duplicates``: answered
    "already counted"; ``gaps``: answered "send again from"), the ``flags`` the server returned,
    documents ``refused`` (why), and the ``errors`` that stopped a model or the sync."""

    installed: tuple[str, ...] = ()
    revoked: tuple[str, ...] = ()
    reported: int = 0
    reports: int = 0
    duplicates: int = 0
    gaps: int = 0
    flags: tuple[Mapping[str, Any], ...] = ()
    refused: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.refused and not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": "metering",
            "installed": list(self.installed),
            "revoked": list(self.revoked),
            "reported": self.reported,
            "reports": self.reports,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "flags": [dict(f) for f in self.flags],
            "refused": list(self.refused),
            "errors": list(self.errors),
        }


@dataclass
class _Run:
    """The outcome being gathered."""

    installed: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    reported: int = 0
    reports: int = 0
    duplicates: int = 0
    gaps: int = 0
    flags: list[Mapping[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: license ids the server says are revoked (from 201 answers)
    server_revoked: set[tuple[str, str]] = field(default_factory=set)

    def refuse(self, what: str, exc: BaseException | str) -> None:
        text = f"{what}: {_describe(exc)}"
        log.warning("refused %s", text)
        self.refused.append(text)

    def error(self, what: str, exc: BaseException | str) -> None:
        text = f"{what}: {_describe(exc)}"
        log.info("metering sync: %s", text)
        self.errors.append(text)

    def outcome(self) -> SyncOutcome:
        return SyncOutcome(
            tuple(self.installed),
            tuple(self.revoked),
            self.reported,
            self.reports,
            self.duplicates,
            self.gaps,
            tuple(self.flags),
            tuple(self.refused),
            tuple(self.errors),
        )


@dataclass(frozen=True)
class _Fetched:
    """The GET's answer, checked for shape (the documents are verified later, one by one)."""

    licenses: list[tuple[str, SignedLicense]]
    revocations: list[tuple[str, SignedRevocation]]
    chains: dict[str, tuple[int, str | None]]


class _Stop(Exception):
    """Nothing more can be done this sync (the server is unreachable, or refused the licenses request)."""


class MeteringSync:
    """Syncs one device's licenses and usage reports with the control plane (see the module doc)."""

    def __init__(
        self,
        host: MeteringHost,
        client: MeteringClient,
        state_dir: Path | str,
        *,
        max_report_entries: int = MAX_REPORT_ENTRIES,
        max_report_bytes: int = DEFAULT_MAX_REPORT_BYTES,
    ) -> None:
        for name, value, low, high in (
            ("max_report_entries", max_report_entries, 1, MAX_REPORT_ENTRIES),
            ("max_report_bytes", max_report_bytes, MIN_REPORT_BYTES, MAX_REPORT_BYTES),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise UsageError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        self.host = host
        self.client = client
        self.state_path = Path(state_dir) / STATE_FILE
        self.max_report_entries = max_report_entries
        self.max_report_bytes = max_report_bytes
        #: entries per report per model, once a 413 showed the server takes fewer
        self._limits: dict[str, int] = {}
        self.device_id = key_id(host.device_key)
        #: the last report sent per model whose answer never came: sent again, byte for byte, first
        self._in_flight: dict[str, SignedUsageReport] = {}
        #: the acknowledged next_seq per model, in memory (None: not read from the state file yet)
        self._positions: dict[str, int] | None = None
        self._lock = threading.Lock()
        self.last: SyncOutcome | None = None

    def __call__(self) -> SyncOutcome:
        return self.sync()

    # --- the acknowledged positions ------------------------------------------------------------
    def acknowledged(self) -> dict[str, tuple[int, str | None]]:
        """``{model: (next_seq, head)}`` as remembered in the state file (empty when absent or unreadable)."""
        try:
            doc = json.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable metering sync state %s: %s", self.state_path, exc)
            return {}
        models = doc.get("models") if isinstance(doc, dict) and doc.get("version") == STATE_VERSION else None
        if not isinstance(models, dict):
            log.warning("ignoring the metering sync state %s: not a version %d state", self.state_path, STATE_VERSION)
            return {}
        out: dict[str, tuple[int, str | None]] = {}
        for model, pos in models.items():
            parsed = _position(pos)
            if isinstance(model, str) and MODEL_NAME.match(model) and parsed is not None:
                out[model] = parsed
        return out

    def backlogged(self) -> list[str]:
        """The models whose open ledger holds more entries the server has not acknowledged than one
        report carries: the agent syncs at its next online cycle for them, whatever its interval.
        Memory only (cheap enough for every cycle): ledgers not open have had no new entries."""
        positions = self._positions
        if positions is None:
            positions = self._positions = {m: n for m, (n, _) in self.acknowledged().items()}
        return sorted(
            model
            for model, meter in self.host.opened().items()
            if meter.next_seq - positions.get(model, 0) > self._limits.get(model, self.max_report_entries)
        )

    def _remember(self, model: str, next_seq: int, head: str | None) -> None:
        if self._positions is not None:
            self._positions[model] = next_seq
        state = self.acknowledged()
        if state.get(model) == (next_seq, head):
            return
        state[model] = (next_seq, head)
        doc = {"version": STATE_VERSION, "models": {m: {"next_seq": n, "head": h} for m, (n, h) in state.items()}}
        try:
            write_file_atomic(self.state_path, json.dumps(doc, sort_keys=True).encode("utf-8"), mode=0o600)
        except OSError as exc:  # the server's answers restore the position at the next sync
            log.warning("cannot write the metering sync state %s: %s", self.state_path, exc)

    # --- one sync ------------------------------------------------------------------------------
    def sync(self) -> SyncOutcome:
        """Fetch and install licenses and revocations, then send usage reports (module doc)."""
        with self._lock:
            run = _Run()
            try:
                fetched = self._fetch(run)
                self._install(fetched, run)
                self._report(fetched.chains, run)
                if any(lid not in self._revoked_ids(model) for model, lid in run.server_revoked):
                    self._install(self._fetch(run), run)  # the server revoked a license since the GET above
            except _Stop:
                pass
            outcome = run.outcome()
            self.last = outcome
            if outcome.installed or outcome.revoked or outcome.reports or outcome.duplicates:
                log.info(
                    "metering sync: installed %s, revoked %s, %d entries in %d reports (%d duplicates)",
                    list(outcome.installed),
                    list(outcome.revoked),
                    outcome.reported,
                    outcome.reports,
                    outcome.duplicates,
                )
            return outcome

    def _revoked_ids(self, model: str) -> frozenset[str]:
        try:
            return self.host.meter(model).revoked_ids
        except TinyMLOpsError:
            return frozenset()

    def _fetch(self, run: _Run) -> _Fetched:
        try:
            doc = self.client.licenses()
        except (TinyMLOpsError, OSError) as exc:  # unreachable, refused or malformed: retry next cycle
            run.error("fetching licenses", exc)
            raise _Stop from None
        return _parse_answer(doc, run)

    # --- licenses and revocations --------------------------------------------------------------
    def _install(self, fetched: _Fetched, run: _Run) -> None:
        trusted = self.host.trusted_issuer_keys
        licenses: dict[str, list[tuple[License, SignedLicense]]] = {}
        for claimed, signed in fetched.licenses:
            try:
                lic = verify_license(signed, trusted)
            except InvalidInputError as exc:
                run.refuse(f"license {claimed}", exc)
                continue
            if lic.device_id != self.device_id:
                run.refuse(f"license {lic.license_id}", f"it is for device {lic.device_id}, not this device")
                continue
            licenses.setdefault(lic.model, []).append((lic, signed))
        revocations: dict[str, dict[str, tuple[Revocation, SignedRevocation]]] = {}
        unverified: set[str] = set()  # licenses whose revocation was listed but did not verify
        for claimed, signed_rev in fetched.revocations:
            try:
                rev = verify_revocation(signed_rev, trusted)
            except InvalidInputError as exc:
                run.refuse(f"revocation of license {claimed}", exc)
                unverified.add(claimed)
                continue
            if rev.device_id != self.device_id:
                run.refuse(f"revocation of license {rev.license_id}", f"it is for device {rev.device_id}")
                continue
            revocations.setdefault(rev.model, {})[rev.license_id] = (rev, signed_rev)
        for model in sorted(set(licenses) | set(revocations)):
            try:
                meter = self.host.meter(model)
            except TinyMLOpsError as exc:
                run.error(f"the {model} ledger", exc)
                continue
            pending = dict(revocations.get(model, {}))
            for lic, signed in _chain_order(licenses.get(model, [])):
                if lic.license_id not in meter.installed_ids:
                    prev = lic.previous_license_id
                    if prev in unverified and prev not in meter.revoked_ids:
                        # installing it would pool what the revocation forfeits: wait for a revocation that verifies
                        run.refuse(
                            f"license {lic.license_id} ({model})",
                            f"it tops up license {prev}, whose revocation did not verify",
                        )
                        continue
                    try:
                        meter.install(signed)
                    except TinyMLOpsError as exc:
                        run.refuse(f"license {lic.license_id} ({model})", exc)
                        continue
                    run.installed.append(lic.license_id)
                    log.info("installed license %s (%s, %d queries)", lic.license_id, model, lic.queries)
                if lic.license_id in pending and meter.current_license_id == lic.license_id:
                    self._revoke(meter, *pending.pop(lic.license_id), run)
            for rev, signed_rev in pending.values():  # not of a license in force here: already written, or refused
                self._revoke(meter, rev, signed_rev, run)

    @staticmethod
    def _revoke(meter: Meter, rev: Revocation, signed: SignedRevocation, run: _Run) -> None:
        try:
            written = meter.revoke(signed)
        except TinyMLOpsError as exc:
            run.refuse(f"revocation of license {rev.license_id} ({rev.model})", exc)
            return
        if written:
            run.revoked.append(rev.license_id)
            log.warning("license %s (%s) revoked by its issuer: %s", rev.license_id, rev.model, rev.reason)

    # --- usage reports -------------------------------------------------------------------------
    def _report(self, chains: Mapping[str, tuple[int, str | None]], run: _Run) -> None:
        remembered = self.acknowledged()
        for model in self.host.models():
            try:
                meter = self.host.meter(model)
            except TinyMLOpsError as exc:
                run.error(f"the {model} ledger", exc)
                continue
            if meter.next_seq == 0 and model not in self._in_flight:
                continue
            self._report_model(model, meter, self._start(model, meter, chains.get(model), remembered.get(model)), run)

    def _start(
        self,
        model: str,
        meter: Meter,
        server: tuple[int, str | None] | None,
        remembered: tuple[int, str | None] | None,
    ) -> int:
        """Where to report ``model`` from: the server's position, else the remembered one, whichever
        first names a hash this ledger has at that seq; else 0. The server's, when taken, is remembered."""
        for position in (server, remembered):
            if position is not None and meter.hash_before(position[0]) == (position[1] or GENESIS_HASH):
                if position is server:
                    self._remember(model, *position)
                return position[0]
        if server is not None or remembered is not None:
            log.warning("neither the server's nor the remembered position is on the %s ledger: reporting from 0", model)
        return 0

    def _report_model(self, model: str, meter: Meter, pos: int, run: _Run) -> None:
        limit = self._limits.get(model, self.max_report_entries)
        budget = _reports_for(meter.next_seq - pos, limit) + EXTRA_REPORTS
        tries = 0
        while tries < budget:
            tries += 1
            signed = self._in_flight.get(model)
            if signed is not None:
                report = UsageReport.from_bytes(signed.data)
                if meter.hash_before(report.last_seq + 1) != report.head_after:
                    self._in_flight.pop(model, None)  # not of this ledger any more (replaced): build anew
                    continue
            else:
                built = self._build(meter, pos, limit)
                if built is None:
                    return
                signed, report = built
                self._in_flight[model] = signed
            try:
                answer = self.client.send_usage(signed)
            except ServerUnreachableError as exc:
                run.error(f"sending the {model} usage report (seq {report.first_seq}..{report.last_seq})", exc)
                raise _Stop from None
            except ServerRequestError as exc:
                self._in_flight.pop(model, None)
                if exc.status == 413 and len(report.entries) > 1:  # the server takes smaller bodies
                    limit = self._limits[model] = len(report.entries) // 2
                    budget += _reports_for(meter.next_seq - pos, limit)
                    log.info("the server refused a %d-byte usage report (413): %d entries a report from now on",
                             len(signed.data), limit)  # fmt: skip
                    continue
                new = self._refused(model, meter, report, signed, exc, run)
                if new is None:
                    return
                pos = new
                continue
            except (TinyMLOpsError, OSError) as exc:  # an answer that is not JSON, too large …
                self._in_flight.pop(model, None)
                run.error(f"sending the {model} usage report (seq {report.first_seq}..{report.last_seq})", exc)
                return
            self._in_flight.pop(model, None)
            new = _next_seq(answer.get("next_seq"), meter)
            if new is None or new <= report.first_seq:
                run.error(
                    f"the {model} usage report (seq {report.first_seq}..{report.last_seq})",
                    f"the server took it but answered next_seq {answer.get('next_seq')!r:.40}",
                )
                return
            run.reports += 1
            run.reported += len(report.entries)
            flags = answer.get("flags")
            if isinstance(flags, list):
                run.flags.extend(f for f in flags if isinstance(f, dict))
            revoked = answer.get("revoked")
            if isinstance(revoked, list):
                run.server_revoked.update((model, r) for r in revoked if isinstance(r, str))
            pos = self._advance(model, meter, new)
        run.error(f"the {model} usage reports", f"stopped after {budget} reports this sync")

    def _build(self, meter: Meter, pos: int, limit: int) -> tuple[SignedUsageReport, UsageReport] | None:
        """The signed report from ``pos`` of at most ``limit`` entries, cut to :attr:`max_report_bytes`."""
        while True:
            signed = meter.usage_report(pos, limit=limit)
            if signed is None:
                return None
            report = UsageReport.from_bytes(signed.data)
            n = len(report.entries)
            if len(signed.data) <= self.max_report_bytes or n == 1:
                return signed, report
            limit = max(1, min(n - 1, n * self.max_report_bytes // len(signed.data)))

    def _refused(
        self,
        model: str,
        meter: Meter,
        report: UsageReport,
        signed: SignedUsageReport,
        exc: ServerRequestError,
        run: _Run,
    ) -> int | None:
        """Where to go on after the server refused ``report`` (None: stop this model this sync)."""
        what = f"the {model} usage report (seq {report.first_seq}..{report.last_seq})"
        new = _next_seq(exc.details.get("next_seq"), meter)
        if exc.status == 409 and exc.error_type == "DuplicateReportError":
            if exc.details.get("digest") != hashlib.sha256(signed.data).hexdigest() or new is None:
                run.error(what, f"{_describe(exc)} (not naming this report, or without a usable next_seq)")
                return None
            run.duplicates += 1
            return self._advance(model, meter, new)
        if exc.status == 409 and exc.error_type == "ReportGapError":
            if new is None or new >= report.first_seq:
                run.error(what, f"{_describe(exc)} (without a next_seq before this report)")
                return None
            run.gaps += 1
            log.info("%s: the server asks for the %s chain again from seq %d", what, model, new)
            return self._advance(model, meter, new)
        run.error(what, exc)
        return None

    def _advance(self, model: str, meter: Meter, next_seq: int) -> int:
        self._remember(model, next_seq, None if next_seq == 0 else meter.hash_before(next_seq))
        return next_seq


def _reports_for(entries: int, per_report: int) -> int:
    return -(-max(0, entries) // per_report)


def _describe(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}"


def _next_seq(value: Any, meter: Meter) -> int | None:
    """A position the server named, if it is one on this ledger (an int in [0, next_seq])."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= meter.next_seq:
        return None
    return value


def _position(value: Any) -> tuple[int, str | None] | None:
    """``{"next_seq": n, "head": h}`` → ``(n, h)`` when well-formed (head null exactly when n is 0)."""
    if not isinstance(value, Mapping):
        return None
    n, head = value.get("next_seq"), value.get("head")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        return None
    if n == 0:
        return (0, None) if head is None else None
    return (n, head) if isinstance(head, str) and _HEX64.match(head) else None


def _signed(item: Any, kind: str) -> tuple[str, bytes, bytes]:
    """``(claimed license id, data, signature)`` of one list item, or ValueError naming the problem."""
    if not isinstance(item, Mapping):
        raise ValueError(f"a {kind} item must be an object, got {type(item).__name__}")
    claimed = str(item.get("license_id", "?"))[:64]
    data, sig = item.get("data"), item.get("signature")
    if not isinstance(data, str) or not isinstance(sig, str) or not _HEX128.match(sig):
        raise ValueError(f"{kind} {claimed}: needs 'data' (base64) and 'signature' (128 hex digits)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{kind} {claimed}: 'data' is not base64") from None
    return claimed, raw, bytes.fromhex(sig)


def _items(doc: Mapping[str, Any], kind: str, run: _Run) -> list[tuple[str, bytes, bytes]]:
    """The well-formed items of the answer's ``<kind>s`` list (the others refused, named)."""
    items = doc.get(f"{kind}s")
    if items is None:
        return []
    if not isinstance(items, list):
        run.refuse(f"the server's {kind}s", f"not a list but {type(items).__name__}")
        return []
    out = []
    for item in items:
        try:
            out.append(_signed(item, kind))
        except ValueError as exc:
            run.refuse(f"a {kind} from the server", str(exc))
    return out


def _parse_answer(doc: Mapping[str, Any], run: _Run) -> _Fetched:
    licenses: list[tuple[str, SignedLicense]] = []
    revocations: list[tuple[str, SignedRevocation]] = []
    chains: dict[str, tuple[int, str | None]] = {}
    for claimed, data, sig in _items(doc, "license", run):
        licenses.append((claimed, SignedLicense(data, sig)))
    for claimed, data, sig in _items(doc, "revocation", run):
        revocations.append((claimed, SignedRevocation(data, sig)))
    raw_chains = doc.get("chains")
    for item in raw_chains if isinstance(raw_chains, list) else []:
        model = item.get("model") if isinstance(item, Mapping) else None
        position = _position(item)
        if isinstance(model, str) and MODEL_NAME.match(model) and position is not None:
            chains[model] = position
        else:
            log.warning("ignoring a malformed chain position from the server: %.200r", item)
    return _Fetched(licenses, revocations, chains)


def _chain_order(items: Sequence[tuple[License, SignedLicense]]) -> list[tuple[License, SignedLicense]]:
    """``items`` with each license after the one it tops up (when that one is among them); otherwise
    in the order given. A cycle (which no issuer signs) leaves the order as it is."""
    by_id = {lic.license_id: (lic, s) for lic, s in items}
    out: list[tuple[License, SignedLicense]] = []
    placed: set[str] = set()
    for lic, signed in items:
        path: list[tuple[License, SignedLicense]] = []
        cur: tuple[License, SignedLicense] | None = (lic, signed)
        seen: set[str] = set()
        while cur is not None and cur[0].license_id not in placed and cur[0].license_id not in seen:
            seen.add(cur[0].license_id)
            path.append(cur)
            prev = cur[0].previous_license_id
            cur = by_id.get(prev) if prev is not None else None
        for entry in reversed(path):
            placed.add(entry[0].license_id)
            out.append(entry)
    return out


__all__ = [
    "DEFAULT_MAX_REPORT_BYTES",
    "METERING_DIR",
    "STATE_FILE",
    "MeteringClient",
    "MeteringSync",
    "SyncOutcome",
]
