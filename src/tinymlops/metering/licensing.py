"""The server half of pay-per-query: issuing, topping up and revoking licenses, and reconciling the
devices' usage reports (SQLAlchemy; the edge closure never imports this module).

**Licenses.** One chain per (device, model): :meth:`LicenseService.issue` starts it (a root license;
refused with :class:`~tinymlops.errors.ConflictError` when the chain exists — "top it up"),
:meth:`~LicenseService.top_up` adds a license whose ``previous_license_id`` is the chain's latest (a
top-up of an older license is a ConflictError naming the latest), :meth:`~LicenseService.revoke`
signs a :class:`~tinymlops.spec.license.Revocation` of the chain's latest license (naming any
license of the chain revokes the chain). A top-up of the revoked license reinstates the chain. A
top-up keeps the window start and version range of the license it tops up; its ``valid_until``
defaults to that license's. Licenses and revocations are signed with the issuer key given (the
workspace's release key: devices trust it already; the signatures are domain-separated,
:mod:`tinymlops.metering.license_signing`).

**Devices.** :meth:`~LicenseService.for_device` is what ``GET /devices/me/licenses`` answers: the
device's licenses in chain order, the signed revocations and, per chain, the server's position in
the usage ledger. A revocation counts as *delivered* (``revoked-use`` is judged from then) when the
device reports usage of its chain after it was sent — the agent reports only after installing what
it fetched, so an answer lost on the way (the device serving on, honestly, until its next contact)
is not taken for a delivery — at the last time it was sent before that report.
:meth:`~LicenseService.ingest_report` takes a usage report (``POST /devices/me/usage``) and, in this
order: refuses a body over the limit (:class:`~tinymlops.errors.PayloadTooLargeError`), a missing or
malformed signature header (:class:`~tinymlops.errors.SignatureError`); then verifies the report
with the key the device enrolled with — a report that does not parse, whose signature fails or
that names another device is refused (SpecError / SignatureError, 400) *and* recorded as a
``tamper`` flag (the request was authenticated, the device is accountable; an unsupported spec
version is refused without a flag). Then, in one transaction that starts by writing the device's
row (so one device's reports are reconciled one at a time — a row lock on PostgreSQL, the write
lock on SQLite): a digest already accepted from this device is a
:class:`~tinymlops.errors.DuplicateReportError` (409, a ``replay`` info flag, ``next_seq`` right
after that report's last entry, as :func:`~tinymlops.metering.reconcile.resume_after` answers;
nothing counted again — the unique (device, digest) constraint backs this up and is turned into
the same error); then
:func:`tinymlops.metering.reconcile.reconcile` decides over the stored entries around the report's
range — a gap is a :class:`~tinymlops.errors.ReportGapError` (409, nothing stored), a hostile report
a :class:`~tinymlops.errors.LicenseError` (400, ``reason`` and ``flag`` in its details; nothing
stored but its flag, written in a transaction of its own — a report under another device's license
is flagged on that license's chain too), else the new entries, the report and its flags
(``rollback``, ``clone``, ``overuse``, ``revoked-use``, ``replay``) are stored and the chain's
position moves. See :mod:`tinymlops.metering.reconcile` for what is flagged and why. A flag raised
again by the same device on the same chain (same kind) within :data:`FLAG_COALESCE_S` of its last
raising is counted on its row (``repeats``, ``last_at``): whatever an authenticated device sends —
refused reports, replays, forks that cost it nothing — the flags grow by at most one row per kind and
chain an hour. A report with no new entry keeps its row and digest but not its bytes.

**Reading.** :meth:`~LicenseService.get` / :meth:`~LicenseService.list` (newest first) give
:class:`LicenseView` (the license with its chain's usage), :meth:`~LicenseService.audit` the flags
(newest first; ``license_id`` selects the flags of that license's chain),
:meth:`~LicenseService.chains` / :meth:`~LicenseService.chain` every chain's (one chain's) position.
Bad input raises the UsageError family (400/404/409), naming the field.

**Usage, in the same words everywhere** (API, CLI, dashboard):

* *licensed* — the queries of every license of the chain (``chain_licensed``, ``ChainView.licensed``);
* *used* — the queries reserved as the device reported them, summed over **every branch** of its
  ledger: what is billed (``chain_used``, ``ChainView.reserved``). A restored or cloned ledger adds
  its branch's reservations, so *used* can pass *licensed*;
* *remaining* — what the **current branch** (the copy that reported last) may still reserve:
  licensed minus the reservations and forfeits on that branch, at least 0 (``chain_remaining``). On
  a forked chain (``branches`` > 1) *used* + *remaining* can exceed *licensed*: the other copies'
  use is billed, not taken from this copy's allowance.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, Select, func, insert, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from tinymlops.crypto.keys import key_id
from tinymlops.devices.records import DeviceRecord
from tinymlops.devices.schema import DeviceRow
from tinymlops.errors import (
    ConflictError,
    DuplicateReportError,
    LicenseError,
    NotFoundError,
    PayloadTooLargeError,
    ReportGapError,
    SignatureError,
    SpecError,
    UnsupportedVersionError,
    UsageError,
)
from tinymlops.metering.license_signing import (
    REPORT_SIGNATURE_HEADER,
    SignedUsageReport,
    sign_license,
    sign_revocation,
    verify_usage_report,
)
from tinymlops.metering.reconcile import (
    ALERT_KINDS,
    DEFAULT_REVOKED_USE_GRACE,
    FLAG_KINDS,
    Accepted,
    ChainSnapshot,
    Flag,
    Gap,
    IssuedLicense,
    IssuedRevocation,
    Refused,
    StoredEntry,
    Totals,
    locate,
    needs_fork_below,
    reconcile,
)
from tinymlops.metering.schema import (
    LicenseChainRow,
    LicenseRevocationRow,
    LicenseRow,
    LicensingFlagRow,
    UsageEntryRow,
    UsageReportRow,
)
from tinymlops.registry.db import session_factory
from tinymlops.spec.license import MAX_EPOCH, MAX_QUERIES, MAX_REASON_CHARS, MODEL_NAME, License, Revocation
from tinymlops.spec.usage_report import MAX_REPORT_BYTES, LedgerEntry, UsageReport

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_SIG_HEX = re.compile(r"^[0-9a-f]{128}$")
MAX_AUDIT_LIMIT = 1000
#: the most licenses one list() returns when asked for a limit
MAX_LIST_LIMIT = 100_000
#: a flag raised again by the same device on the same chain (of the same kind) within this many
#: seconds of its last raising is counted on the stored row (``repeats``), not added as a new one
FLAG_COALESCE_S = 3600.0

#: a license's status: the chain's latest (``active``), followed by a top-up (``superseded``), or
#: named by a revocation (``revoked``)
LICENSE_STATUSES = ("active", "superseded", "revoked")
#: a chain's status: ``revoked`` while its latest license is revoked
CHAIN_STATUSES = ("active", "revoked")


@dataclass(frozen=True)
class LicenseView:
    """One issued license with its chain's usage (times: epoch seconds)."""

    license_id: str
    device_id: str
    model: str
    queries: int
    valid_from: int
    valid_until: int
    min_version: int | None
    max_version: int | None
    previous_license_id: str | None
    issued_at: int
    issuer_key_id: str
    status: str  # active | superseded | revoked
    revoked_at: int | None
    revoke_reason: str | None
    root_license_id: str
    chain_licensed: int  # licensed: queries of every license of the chain
    chain_used: int  # used: queries reserved as reported, every branch (what is billed)
    chain_remaining: int  # remaining: chain_licensed - reserved - forfeited on the current branch, >= 0
    last_report_at: float | None
    alerts: int  # alert flags on the chain
    data: str  # base64 (standard, padded) of the exact signed license bytes
    signature: str  # 128 hex

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SignedDoc:
    """A license or revocation as the device receives it (``previous_license_id`` only on licenses)."""

    license_id: str
    model: str
    data: str  # base64 of the exact signed bytes
    signature: str  # 128 hex
    previous_license_id: str | None = None
    is_license: bool = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"license_id": self.license_id, "model": self.model}
        if self.is_license:
            out["previous_license_id"] = self.previous_license_id
        out["data"] = self.data
        out["signature"] = self.signature
        return out


@dataclass(frozen=True)
class ChainPosition:
    """Where the server stands on one chain of a device: the first entry it has not received on the
    current branch, and the hash of the entry before it (None when nothing was received)."""

    model: str
    next_seq: int
    head: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "next_seq": self.next_seq, "head": self.head}


@dataclass(frozen=True)
class DeviceLicenses:
    """The body of ``GET /devices/me/licenses``."""

    device_id: str
    licenses: tuple[SignedDoc, ...]
    revocations: tuple[SignedDoc, ...]
    chains: tuple[ChainPosition, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "licenses": [d.to_dict() for d in self.licenses],
            "revocations": [d.to_dict() for d in self.revocations],
            "chains": [c.to_dict() for c in self.chains],
        }


@dataclass(frozen=True)
class ReportFlag:
    """A flag raised by one report, as the 201 body lists it."""

    kind: str
    severity: str  # alert | info
    seq: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReportResult:
    """The body of ``POST /devices/me/usage`` 201."""

    report_id: int
    digest: str
    model: str
    first_seq: int
    last_seq: int
    next_seq: int
    flags: tuple[ReportFlag, ...]
    revoked: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "digest": self.digest,
            "model": self.model,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "next_seq": self.next_seq,
            "flags": [f.to_dict() for f in self.flags],
            "revoked": list(self.revoked),
        }


@dataclass(frozen=True)
class FlagView:
    """One stored flag (``model``/``license_id``/``seq``/``report_id`` None when the report that raised
    it could not be tied to them: a bad signature, a body that does not parse). ``detail``, ``seq``
    and ``report_id`` are the first raising's; ``repeats`` counts the raisings coalesced into it (the
    same kind, device and chain within :data:`FLAG_COALESCE_S` of the last), ``last_at`` the last."""

    id: int
    device_id: str
    model: str | None
    license_id: str | None
    kind: str
    severity: str
    seq: int | None
    detail: str
    report_id: int | None
    created_at: float
    repeats: int
    last_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChainView:
    """One (device, model) chain: its licenses' totals and the server's position in its usage ledger.
    ``licensed`` is every license of the chain, ``reserved`` what is *used* (the reservations reported
    on every branch: its licenses' ``chain_used``); ``next_seq``/``head`` are the current branch's;
    ``branches`` is 0 before any report."""

    device_id: str
    model: str
    root_license_id: str
    latest_license_id: str
    status: str  # active | revoked
    licensed: int
    reserved: int
    next_seq: int
    head: str | None
    branches: int
    reports: int
    last_report_at: float | None
    alerts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LicenseService:
    """Licenses and usage reconciliation over one metadata database (see the module doc).

    ``issuer_key`` signs licenses and revocations; ``clock`` is the server's (epoch seconds);
    ``revoked_use_grace`` how long after a revocation's delivery a reservation under the frozen
    license is still taken for one written before the device learnt of it."""

    def __init__(
        self,
        engine: Engine,
        issuer_key: Ed25519PrivateKey,
        *,
        clock: Callable[[], float] = time.time,
        revoked_use_grace: float = DEFAULT_REVOKED_USE_GRACE,
    ) -> None:
        if not isinstance(issuer_key, Ed25519PrivateKey):
            raise UsageError(f"the issuer key must be an Ed25519 private key, got {type(issuer_key).__name__}")
        self.engine = engine
        self.issuer_key = issuer_key
        self.issuer_key_id = key_id(issuer_key)
        if (
            isinstance(revoked_use_grace, bool)
            or not isinstance(revoked_use_grace, int | float)
            or revoked_use_grace < 0
        ):
            raise UsageError(f"revoked_use_grace must be a number of seconds >= 0, got {revoked_use_grace!r}")
        self.revoked_use_grace = float(revoked_use_grace)
        self._sessions = session_factory(engine)
        self._clock = clock

    # --- issuing ----------------------------------------------------------------------------------
    def issue(
        self,
        *,
        device_id: str,
        model: str,
        queries: int,
        valid_until: int,
        valid_from: int | None = None,
        min_version: int | None = None,
        max_version: int | None = None,
    ) -> LicenseView:
        """Start the (device, model) chain with a root license (see the module doc)."""
        _check_model(model)
        _check_int("queries", queries, 1, MAX_QUERIES)
        now = self._clock()
        valid_from = int(now) if valid_from is None else valid_from
        _check_window(valid_from, valid_until, now)
        _check_int("min_version", min_version, 0, MAX_EPOCH, nullable=True)
        _check_int("max_version", max_version, 0, MAX_EPOCH, nullable=True)
        if min_version is not None and max_version is not None and min_version > max_version:
            raise UsageError(f"min_version ({min_version}) is above max_version ({max_version})", field="min_version")
        if not isinstance(device_id, str) or not _HEX16.match(device_id):
            raise NotFoundError(f"no device with id {device_id!r}", device_id=str(device_id))
        with self._sessions() as session:
            device = self._lock_device(session, device_id)
            if device.status != "active":
                raise ConflictError(
                    f"device {device_id} is {device.status}: no license is issued to it", device_id=device_id
                )
            existing = session.scalar(
                select(LicenseChainRow).where(LicenseChainRow.device_id == device_id, LicenseChainRow.model == model)
            )
            if existing is not None:
                raise self._chain_exists(device_id, model, existing.latest_license_id)
            license = License(
                license_id=secrets.token_hex(16),
                device_id=device_id,
                device_public_key=device.signing_public,
                model=model,
                queries=queries,
                valid_from=valid_from,
                valid_until=valid_until,
                issued_at=int(now),
                issuer_key_id=self.issuer_key_id,
                min_version=min_version,
                max_version=max_version,
                previous_license_id=None,
            )
            chain = LicenseChainRow(
                device_id=device_id,
                model=model,
                root_license_id=license.license_id,
                latest_license_id=license.license_id,
                licensed=queries,
                created_at=now,
                clone_pairs=[],
            )
            session.add(chain)
            try:
                session.flush()
            except DBIntegrityError:  # another server process started the chain meanwhile
                session.rollback()
                latest = session.scalar(
                    select(LicenseChainRow.latest_license_id).where(
                        LicenseChainRow.device_id == device_id, LicenseChainRow.model == model
                    )
                )
                raise self._chain_exists(device_id, model, latest or "?") from None
            session.add(self._license_row(license, chain.id, 0, now))
            session.commit()
            return self._view(session, license.license_id)

    @staticmethod
    def _chain_exists(device_id: str, model: str, latest: str) -> ConflictError:
        return ConflictError(
            f"device {device_id} already has a license chain for model '{model}' (latest license {latest}): "
            "top it up instead of issuing a new license",
            device_id=device_id,
            model=model,
            latest_license_id=latest,
        )

    def top_up(self, license_id: str, *, queries: int, valid_until: int | None = None) -> LicenseView:
        """Add ``queries`` to the chain of ``license_id`` (which must be the chain's latest: a top-up of
        the revoked latest license reinstates the chain)."""
        _check_int("queries", queries, 1, MAX_QUERIES)
        now = self._clock()
        with self._sessions() as session:
            prev = self._license(session, license_id)
            device = self._lock_device(session, prev.device_id)
            chain = session.get(LicenseChainRow, prev.chain_id)
            assert chain is not None
            if chain.latest_license_id != license_id:
                raise ConflictError(
                    f"license {license_id} is not the latest of its chain: top up {chain.latest_license_id}",
                    license_id=license_id,
                    latest_license_id=chain.latest_license_id,
                )
            if device.status != "active":
                raise ConflictError(
                    f"device {device.id} is {device.status}: its licenses are not topped up", device_id=device.id
                )
            if valid_until is None:
                valid_until = prev.valid_until
                if valid_until <= now:
                    raise UsageError(
                        f"license {license_id} expired at {valid_until}: give the top-up a valid_until in the future",
                        field="valid_until",
                    )
            _check_window(prev.valid_from, valid_until, now)
            license = License(
                license_id=secrets.token_hex(16),
                device_id=prev.device_id,
                device_public_key=device.signing_public,
                model=prev.model,
                queries=queries,
                valid_from=prev.valid_from,
                valid_until=valid_until,
                issued_at=int(now),
                issuer_key_id=self.issuer_key_id,
                min_version=prev.min_version,
                max_version=prev.max_version,
                previous_license_id=license_id,
            )
            session.add(self._license_row(license, chain.id, prev.position + 1, now))
            chain.latest_license_id = license.license_id
            chain.licensed += queries
            session.commit()
            return self._view(session, license.license_id)

    def revoke(self, license_id: str, *, reason: str) -> LicenseView:
        """Revoke the chain of ``license_id``: its latest license, which is returned (now revoked)."""
        if not isinstance(reason, str) or not reason.strip():
            raise UsageError("a revocation needs a reason (a non-empty text)", field="reason")
        reason = reason.strip()
        if len(reason) > MAX_REASON_CHARS:
            raise UsageError(
                f"the reason is {len(reason)} characters, at most {MAX_REASON_CHARS} are kept", field="reason"
            )
        now = self._clock()
        with self._sessions() as session:
            named = self._license(session, license_id)
            self._lock_device(session, named.device_id)
            chain = session.get(LicenseChainRow, named.chain_id)
            assert chain is not None
            latest = chain.latest_license_id
            if session.get(LicenseRevocationRow, latest) is not None:
                raise ConflictError(
                    f"the chain of license {license_id} is already revoked (latest license {latest}); "
                    "a top-up of it reinstates the chain",
                    license_id=license_id,
                    latest_license_id=latest,
                )
            revocation = Revocation(
                license_id=latest,
                device_id=chain.device_id,
                model=chain.model,
                revoked_at=int(now),
                reason=reason,
                issuer_key_id=self.issuer_key_id,
            )
            signed = sign_revocation(revocation, self.issuer_key)
            session.add(
                LicenseRevocationRow(
                    license_id=latest,
                    chain_id=chain.id,
                    revoked_at=revocation.revoked_at,
                    reason=reason,
                    digest=hashlib.sha256(signed.data).hexdigest(),
                    data=signed.data,
                    signature=signed.signature.hex(),
                    served_at=None,
                    delivered_at=None,
                )
            )
            session.commit()
            return self._view(session, latest)

    def _license_row(self, license: License, chain_id: int, position: int, now: float) -> LicenseRow:
        signed = sign_license(license, self.issuer_key)
        return LicenseRow(
            license_id=license.license_id,
            chain_id=chain_id,
            device_id=license.device_id,
            model=license.model,
            position=position,
            queries=license.queries,
            valid_from=license.valid_from,
            valid_until=license.valid_until,
            min_version=license.min_version,
            max_version=license.max_version,
            previous_license_id=license.previous_license_id,
            issued_at=license.issued_at,
            issuer_key_id=license.issuer_key_id,
            digest=hashlib.sha256(signed.data).hexdigest(),
            data=signed.data,
            signature=signed.signature.hex(),
            created_at=now,
        )

    # --- reading ----------------------------------------------------------------------------------
    def get(self, license_id: str) -> LicenseView:
        with self._sessions() as session:
            self._license(session, license_id)
            return self._view(session, license_id)

    def list(
        self,
        *,
        device_id: str | None = None,
        model: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[LicenseView]:
        """Licenses, newest first, optionally of one device / model / status; at most ``limit`` (the
        newest; None: every one — a fleet's every license is tens of thousands)."""
        if status is not None and status not in LICENSE_STATUSES:
            raise UsageError(
                f"license status must be one of {', '.join(LICENSE_STATUSES)}, got {status!r:.40}", field="status"
            )
        _check_int("limit", limit, 1, MAX_LIST_LIMIT, nullable=True)
        L, C, R = LicenseRow, LicenseChainRow, LicenseRevocationRow
        q = _view_select().order_by(L.created_at.desc(), L.position.desc())
        if device_id is not None:
            q = q.where(L.device_id == device_id)
        if model is not None:
            q = q.where(L.model == model)
        if status == "revoked":
            q = q.where(R.license_id.is_not(None))
        elif status is not None:  # not revoked, and the chain's latest (active) or not (superseded)
            latest = C.latest_license_id == L.license_id
            q = q.where(R.license_id.is_(None), latest if status == "active" else ~latest)
        if limit is not None:
            q = q.limit(limit)
        with self._sessions() as session:
            return [_license_view(row) for row in session.execute(q).all()]

    def chains(self, *, device_id: str | None = None) -> list[ChainView]:
        """Every (device, model) chain (of one device), by device and model."""
        q = _chain_select().order_by(LicenseChainRow.device_id, LicenseChainRow.model)
        if device_id is not None:
            q = q.where(LicenseChainRow.device_id == device_id)
        with self._sessions() as session:
            return [_chain_view(row) for row in session.execute(q).all()]

    def chain(self, license_id: str) -> ChainView:
        """The chain ``license_id`` belongs to (NotFoundError: no such license)."""
        with self._sessions() as session:
            chain_id = self._license(session, license_id).chain_id
            return _chain_view(session.execute(_chain_select().where(LicenseChainRow.id == chain_id)).one())

    def audit(
        self,
        *,
        device_id: str | None = None,
        kind: str | None = None,
        license_id: str | None = None,
        limit: int = 100,
    ) -> list[FlagView]:
        """Flags, newest first: of one device, of one kind, of the chain of one license."""
        if kind is not None and kind not in FLAG_KINDS:
            raise UsageError(f"flag kind must be one of {', '.join(FLAG_KINDS)}, got {kind!r:.40}", field="kind")
        _check_int("limit", limit, 1, MAX_AUDIT_LIMIT)
        F = LicensingFlagRow
        q = select(F).order_by(F.created_at.desc(), F.id.desc()).limit(limit)
        if device_id is not None:
            q = q.where(F.device_id == device_id)
        if kind is not None:
            q = q.where(F.kind == kind)
        with self._sessions() as session:
            if license_id is not None:
                q = q.where(F.chain_id == self._license(session, license_id).chain_id)
            return [_flag_view(r) for r in session.scalars(q).all()]

    # --- the device's side --------------------------------------------------------------------------
    def for_device(self, device_id: str, *, model: str | None = None) -> DeviceLicenses:
        """What the device fetches at each contact (see the module doc); records first deliveries."""
        if model is not None:
            _check_model(model)
        now = self._clock()
        with self._sessions() as session:
            if session.get(DeviceRow, device_id) is None:
                raise NotFoundError(f"no device with id {device_id!r}", device_id=device_id)
            q = select(LicenseChainRow).where(LicenseChainRow.device_id == device_id).order_by(LicenseChainRow.model)
            if model is not None:
                q = q.where(LicenseChainRow.model == model)
            chains = list(session.scalars(q).all())
            ids = [c.id for c in chains]
            rows = session.scalars(
                select(LicenseRow).where(LicenseRow.chain_id.in_(ids)).order_by(LicenseRow.model, LicenseRow.position)
            ).all()
            revocations = session.execute(
                select(LicenseRevocationRow, LicenseRow.model)
                .join(LicenseRow, LicenseRow.license_id == LicenseRevocationRow.license_id)
                .where(LicenseRevocationRow.chain_id.in_(ids))
                .order_by(LicenseRow.model, LicenseRow.position)
            ).all()
            unconfirmed = [r.license_id for r, _ in revocations if r.delivered_at is None]
            if unconfirmed:  # sent again: the device's next report confirms this sending (see _confirm_delivery)
                session.execute(
                    update(LicenseRevocationRow)
                    .where(
                        LicenseRevocationRow.license_id.in_(unconfirmed), LicenseRevocationRow.delivered_at.is_(None)
                    )
                    .values(served_at=now)
                )
                session.commit()
            return DeviceLicenses(
                device_id=device_id,
                licenses=tuple(
                    SignedDoc(r.license_id, r.model, _b64(r.data), r.signature, r.previous_license_id) for r in rows
                ),
                revocations=tuple(
                    SignedDoc(r.license_id, m, _b64(r.data), r.signature, is_license=False) for r, m in revocations
                ),
                chains=tuple(ChainPosition(c.model, _next_seq(c), c.head_hash) for c in chains),
            )

    def ingest_report(self, device: DeviceRecord, body: bytes, signature_hex: str | None) -> ReportResult:
        """Check, reconcile and store one usage report from ``device`` (see the module doc)."""
        if not isinstance(device, DeviceRecord):
            raise UsageError(f"ingest_report needs the authenticated DeviceRecord, got {type(device).__name__}")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise UsageError(f"ingest_report needs the body as bytes, got {type(body).__name__}")
        body = bytes(body)
        if len(body) > MAX_REPORT_BYTES:
            raise PayloadTooLargeError(
                f"usage report: {len(body)} bytes, more than the {MAX_REPORT_BYTES} accepted", limit=MAX_REPORT_BYTES
            )
        if signature_hex is None:
            raise SignatureError(
                f"usage report: the {REPORT_SIGNATURE_HEADER} header is missing", member="usage report"
            )
        if not isinstance(signature_hex, str) or not _SIG_HEX.match(signature_hex):
            raise SignatureError(
                f"usage report: the {REPORT_SIGNATURE_HEADER} header must be 128 lowercase hex digits",
                member="usage report",
            )
        digest = hashlib.sha256(body).hexdigest()
        try:
            report = verify_usage_report(SignedUsageReport(body, bytes.fromhex(signature_hex)), device.signing_public)
        except UnsupportedVersionError:
            raise
        except (SpecError, SignatureError) as exc:
            self._flag_alone(
                device.id, None, Flag("tamper", None, f"usage report {digest} refused: {exc.message}"), None
            )
            raise
        if report.device_id != device.id:  # the key is the device's, so its key id is the device id
            raise SpecError(f"usage report: names device {report.device_id}, but was sent by device {device.id}")
        try:
            return self._ingest(device, report, digest, signature_hex)
        except DBIntegrityError:
            # another server process stored the same digest between our check and our insert
            with self._sessions() as session:
                stored = session.scalar(
                    select(UsageReportRow).where(UsageReportRow.device_id == device.id, UsageReportRow.digest == digest)
                )
                if stored is None:
                    raise
                error = self._duplicate(stored)
            self._replay(device.id, stored, error.next_seq)
            raise error from None

    def _ingest(self, device: DeviceRecord, report: UsageReport, digest: str, signature_hex: str) -> ReportResult:
        now = self._clock()
        refused: tuple[Refused, int | None, str | None] | None = None
        with self._sessions() as session:
            self._lock_device(session, device.id)
            stored = session.scalar(
                select(UsageReportRow).where(UsageReportRow.device_id == device.id, UsageReportRow.digest == digest)
            )
            if stored is not None:
                error = self._duplicate(stored)
                session.rollback()
                self._replay(device.id, stored, error.next_seq)
                raise error
            named = {e.license_id for e in report.entries} | {report.license_id}
            issued = self._issued(session, named)
            located = locate(report, device.id, issued.get(report.license_id))
            if isinstance(located, Refused):
                owner = session.get(LicenseRow, report.license_id) if located.reason == "other-device" else None
                # another device's license: the flag joins that license's chain, where its owner sees it
                refused = (located, None, None) if owner is None else (located, owner.chain_id, owner.model)
            else:
                chain = session.scalar(
                    select(LicenseChainRow).where(
                        LicenseChainRow.device_id == device.id, LicenseChainRow.model == located
                    )
                )
                assert chain is not None  # a license issued to the device belongs to one of its chains
                self._confirm_delivery(session, chain.id)
                decision = reconcile(self._snapshot(session, chain, report, named), report)
                if isinstance(decision, Gap):
                    raise ReportGapError(
                        f"usage report (seq {report.first_seq}..{report.last_seq}) not stored: {decision.detail}",
                        first_seq=report.first_seq,
                        next_seq=decision.next_seq,
                    )
                if isinstance(decision, Refused):
                    refused = (decision, chain.id, chain.model)
                else:
                    return self._accept(session, device.id, chain, report, digest, signature_hex, decision, now)
        assert refused is not None
        decision, chain_id, model = refused
        self._flag_alone(device.id, chain_id, decision.flag, model)
        raise LicenseError(
            f"usage report refused: {decision.flag.detail}",
            reason=decision.reason,
            flag=decision.flag.kind,
            seq=decision.flag.seq,
            license_id=decision.flag.license_id,
        )

    def _accept(
        self,
        session: Session,
        device_id: str,
        chain: LicenseChainRow,
        report: UsageReport,
        digest: str,
        signature_hex: str,
        decision: Accepted,
        now: float,
    ) -> ReportResult:
        row = UsageReportRow(
            chain_id=chain.id,
            device_id=device_id,
            digest=digest,
            license_id=report.license_id,
            first_seq=report.first_seq,
            last_seq=report.last_seq,
            head_before=report.head_before,
            head_after=report.head_after,
            licensed=report.licensed,
            reserved=report.reserved,
            block_remaining=report.block_remaining,
            new_entries=len(decision.new),
            created_at=report.created_at,
            received_at=now,
            signature=signature_hex,
            # a report with nothing new repeats entries whose signed words earlier reports keep
            body=report.to_bytes() if decision.new else b"",
        )
        session.add(row)
        session.flush()
        if decision.new:
            session.execute(insert(UsageEntryRow), [_entry_values(chain.id, row.id, s) for s in decision.new])
        for flag in decision.flags:
            _record_flag(session, device_id, chain.id, chain.model, flag, row.id, now)
        if decision.head is not None and decision.new:
            head = decision.new[-1]
            chain.head_seq, chain.head_hash = decision.head
            chain.branch_licensed = head.totals.licensed
            chain.branch_reserved = head.totals.reserved
            chain.branch_forfeited = head.totals.forfeited
        chain.current_branch = decision.current_branch
        chain.branches = decision.branches
        chain.used += decision.reserved
        chain.reports += 1
        chain.last_report_at = now
        chain.clone_pairs = sorted([a, b] for a, b in decision.clone_pairs)
        session.flush()
        revoked = self._revoked_chains(session, device_id)
        session.commit()
        return ReportResult(
            report_id=row.id,
            digest=digest,
            model=chain.model,
            first_seq=report.first_seq,
            last_seq=report.last_seq,
            next_seq=decision.next_seq,
            flags=tuple(ReportFlag(f.kind, f.severity, f.seq, f.detail) for f in decision.flags),
            revoked=revoked,
        )

    @staticmethod
    def _duplicate(stored: UsageReportRow) -> DuplicateReportError:
        # the device goes on right after the report: its chain holds those entries, and nothing more
        # is known of it (reconcile.resume_after)
        next_seq = stored.last_seq + 1
        return DuplicateReportError(
            f"usage report {stored.digest} (seq {stored.first_seq}..{stored.last_seq}) was already accepted "
            f"(report {stored.id}); it is not counted again",
            digest=stored.digest,
            next_seq=next_seq,
        )

    def _replay(self, device_id: str, stored: UsageReportRow, next_seq: int) -> None:
        with self._sessions() as session:
            chain = session.get(LicenseChainRow, stored.chain_id)
            model = chain.model if chain is not None else None
        flag = Flag(
            "replay",
            stored.first_seq,
            f"usage report {stored.digest} (seq {stored.first_seq}..{stored.last_seq}) sent again; it was counted "
            f"once, as report {stored.id} (next seq {next_seq})",
            stored.license_id,
        )
        self._flag_alone(device_id, stored.chain_id, flag, model, report_id=stored.id)

    def _flag_alone(
        self, device_id: str, chain_id: int | None, flag: Flag, model: str | None, *, report_id: int | None = None
    ) -> None:
        """Record a flag in a transaction of its own (the report that raised it is refused); one
        device's flags are written one at a time (the device's row is written first)."""
        with self._sessions() as session:
            self._lock_device(session, device_id)
            _record_flag(session, device_id, chain_id, model, flag, report_id, self._clock())
            session.commit()

    # --- loading what reconcile needs ---------------------------------------------------------------
    def _snapshot(
        self, session: Session, chain: LicenseChainRow, report: UsageReport, named: Iterable[str]
    ) -> ChainSnapshot:
        """What reconcile needs of ``chain`` to decide on ``report``: the stored entries from the one
        before the report to the one after it, the highest seq, the licenses (the chain's and
        ``named``), the chain's revocations, and — only when the report does not link while entries
        are stored before it (:func:`~tinymlops.metering.reconcile.needs_fork_below`) — the latest fork
        below it: that query reads the chain's every earlier entry, so an ordinary report never pays it."""
        E = UsageEntryRow
        window_start, window_end = max(report.first_seq - 1, 0), report.last_seq + 1
        rows = session.scalars(
            select(E).where(E.chain_id == chain.id, E.seq >= window_start, E.seq <= window_end)
        ).all()
        entries = tuple(_stored_entry(r) for r in rows)
        max_seq = session.scalar(select(func.max(E.seq)).where(E.chain_id == chain.id))
        fork_below = None
        if needs_fork_below(report, entries):
            forks = (
                select(E.seq)
                .where(E.chain_id == chain.id, E.seq < window_start)
                .group_by(E.seq, E.prev_hash)
                .having(func.count() > 1)
                .subquery()
            )
            fork_below = session.scalar(select(func.max(forks.c.seq)))
        chain_ids = session.scalars(select(LicenseRow.license_id).where(LicenseRow.chain_id == chain.id)).all()
        licenses = self._issued(session, set(chain_ids) | set(named))
        revocations = {
            r.license_id: IssuedRevocation(r.license_id, r.digest, licenses[r.license_id].position, r.delivered_at)
            for r in session.scalars(select(LicenseRevocationRow).where(LicenseRevocationRow.chain_id == chain.id))
        }
        head = None if chain.head_seq is None or chain.head_hash is None else (chain.head_seq, chain.head_hash)
        return ChainSnapshot(
            device_id=chain.device_id,
            model=chain.model,
            head=head,
            current_branch=chain.current_branch,
            branches=chain.branches,
            window_start=window_start,
            window_end=window_end,
            max_seq=max_seq,
            entries=entries,
            fork_below=fork_below,
            licenses=licenses,
            revocations=revocations,
            clone_pairs=frozenset((a, b) for a, b in chain.clone_pairs or ()),
            revoked_use_grace=self.revoked_use_grace,
        )

    @staticmethod
    def _confirm_delivery(session: Session, chain_id: int) -> None:
        """The device reports: the revocations of the chain sent to it before have reached it — the
        agent reports only after it has installed what it fetched; an answer lost on the way is not
        followed by a report, and is sent again at the next contact. Delivered: when last sent."""
        R = LicenseRevocationRow
        session.execute(
            update(R)
            .where(R.chain_id == chain_id, R.delivered_at.is_(None), R.served_at.is_not(None))
            .values(delivered_at=R.served_at)
            .execution_options(synchronize_session=False)
        )

    @staticmethod
    def _issued(session: Session, ids: Iterable[str]) -> dict[str, IssuedLicense]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        L = LicenseRow
        return {
            r.license_id: IssuedLicense(
                r.license_id, r.device_id, r.model, r.digest, r.queries, r.previous_license_id, r.position
            )
            for r in session.execute(
                select(
                    L.license_id, L.device_id, L.model, L.digest, L.queries, L.previous_license_id, L.position
                ).where(L.license_id.in_(wanted))
            ).all()
        }

    # --- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _lock_device(session: Session, device_id: str) -> DeviceRow:
        """Write the device's row first: serialises every licensing write about one device."""
        locked = session.execute(
            update(DeviceRow)
            .where(DeviceRow.id == device_id)
            .values(status=DeviceRow.status)
            .execution_options(synchronize_session=False)
        )
        if locked.rowcount != 1:
            raise NotFoundError(f"no device with id {device_id!r}", device_id=device_id)
        row = session.get(DeviceRow, device_id)
        assert row is not None
        return row

    @staticmethod
    def _license(session: Session, license_id: str) -> LicenseRow:
        row = session.get(LicenseRow, license_id) if isinstance(license_id, str) and _HEX32.match(license_id) else None
        if row is None:
            raise NotFoundError(f"no license with id {license_id!r}", license_id=str(license_id))
        return row

    @staticmethod
    def _revoked_chains(session: Session, device_id: str) -> tuple[str, ...]:
        """The latest licenses of ``device_id``'s chains that are revoked."""
        C, R = LicenseChainRow, LicenseRevocationRow
        return tuple(
            session.scalars(
                select(C.latest_license_id)
                .join(R, R.license_id == C.latest_license_id)
                .where(C.device_id == device_id)
                .order_by(C.latest_license_id)
            ).all()
        )

    @staticmethod
    def _view(session: Session, license_id: str) -> LicenseView:
        return _license_view(session.execute(_view_select().where(LicenseRow.license_id == license_id)).one())


def _alerts_of(chain_id: Any) -> Any:
    """The number of alert flags on the chain ``chain_id`` (a column of the enclosing query): a
    correlated count, one index probe per row (ix_licensing_flags_chain)."""
    F = LicensingFlagRow
    return (
        select(func.count())
        .where(F.chain_id == chain_id, F.kind.in_(sorted(ALERT_KINDS)))
        .scalar_subquery()
        .label("alerts")
    )


def _chain_select() -> Select[Any]:
    """Chains with whether their latest license is revoked and their alert count: one statement,
    plain columns (no ORM objects to build per row)."""
    C, R = LicenseChainRow, LicenseRevocationRow
    revoked = select(R.license_id).where(R.license_id == C.latest_license_id).exists()
    return select(
        C.device_id,
        C.model,
        C.root_license_id,
        C.latest_license_id,
        revoked.label("revoked"),
        C.licensed,
        C.used,
        C.head_seq,
        C.head_hash,
        C.branches,
        C.reports,
        C.last_report_at,
        _alerts_of(C.id),
    )


def _chain_view(r: Any) -> ChainView:
    return ChainView(
        device_id=r.device_id,
        model=r.model,
        root_license_id=r.root_license_id,
        latest_license_id=r.latest_license_id,
        status="revoked" if r.revoked else "active",
        licensed=r.licensed,
        reserved=r.used,
        next_seq=0 if r.head_seq is None else r.head_seq + 1,
        head=r.head_hash,
        branches=r.branches,
        reports=r.reports,
        last_report_at=r.last_report_at,
        alerts=r.alerts,
    )


def _view_select() -> Select[Any]:
    """Licenses with their chain's usage, their revocation (None: not revoked) and the chain's alert
    count: one statement however many licenses it lists, plain columns (no ORM objects per row)."""
    L, C, R = LicenseRow, LicenseChainRow, LicenseRevocationRow
    return (
        select(
            L.license_id,
            L.device_id,
            L.model,
            L.queries,
            L.valid_from,
            L.valid_until,
            L.min_version,
            L.max_version,
            L.previous_license_id,
            L.issued_at,
            L.issuer_key_id,
            L.data,
            L.signature,
            C.latest_license_id,
            C.root_license_id,
            C.licensed,
            C.used,
            C.branch_reserved,
            C.branch_forfeited,
            C.last_report_at,
            R.license_id.label("revoked_id"),
            R.revoked_at,
            R.reason,
            _alerts_of(L.chain_id),
        )
        .join(C, C.id == L.chain_id)
        .outerjoin(R, R.license_id == L.license_id)
    )


def _license_view(r: Any) -> LicenseView:
    if r.revoked_id is not None:
        status = "revoked"
    elif r.latest_license_id != r.license_id:
        status = "superseded"
    else:
        status = "active"
    return LicenseView(
        license_id=r.license_id,
        device_id=r.device_id,
        model=r.model,
        queries=r.queries,
        valid_from=r.valid_from,
        valid_until=r.valid_until,
        min_version=r.min_version,
        max_version=r.max_version,
        previous_license_id=r.previous_license_id,
        issued_at=r.issued_at,
        issuer_key_id=r.issuer_key_id,
        status=status,
        revoked_at=r.revoked_at,
        revoke_reason=r.reason,
        root_license_id=r.root_license_id,
        chain_licensed=r.licensed,
        chain_used=r.used,
        chain_remaining=max(0, r.licensed - r.branch_reserved - r.branch_forfeited),
        last_report_at=r.last_report_at,
        alerts=r.alerts,
        data=_b64(r.data),
        signature=r.signature,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _next_seq(chain: LicenseChainRow) -> int:
    return 0 if chain.head_seq is None else chain.head_seq + 1


def _check_model(model: object) -> None:
    if not isinstance(model, str) or not MODEL_NAME.match(model):
        raise UsageError(f"not a model name (letters, digits, . _ -; at most 128): {model!r:.80}", field="model")


def _check_int(name: str, value: object, low: int, high: int, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{name} must be an integer in [{low}, {high}], got {value!r:.40}", field=name)


def _check_window(valid_from: object, valid_until: object, now: float) -> None:
    _check_int("valid_from", valid_from, 0, MAX_EPOCH)
    _check_int("valid_until", valid_until, 0, MAX_EPOCH)
    assert isinstance(valid_from, int) and isinstance(valid_until, int)
    if valid_until <= valid_from:
        raise UsageError(f"valid_until ({valid_until}) must be after valid_from ({valid_from})", field="valid_until")
    if valid_until <= now:
        raise UsageError(
            f"valid_until ({valid_until}) is not in the future (now {int(now)}): the license would be dead",
            field="valid_until",
        )


def _stored_entry(row: UsageEntryRow) -> StoredEntry:
    entry = LedgerEntry(
        seq=row.seq,
        prev_hash=row.prev_hash,
        kind=row.kind,
        license_id=row.license_id,
        count=row.count,
        at=row.at,
        ref=row.ref,
        nonce=row.nonce,
    )
    totals = Totals(row.licensed, row.reserved, row.forfeited, row.in_force, row.revoked, row.at)
    return StoredEntry(entry, row.hash, row.branch, totals)


def _entry_values(chain_id: int, report_id: int, stored: StoredEntry) -> dict[str, Any]:
    e, t = stored.entry, stored.totals
    return {
        "chain_id": chain_id,
        "report_id": report_id,
        "seq": e.seq,
        "hash": stored.hash,
        "prev_hash": e.prev_hash,
        "kind": e.kind,
        "license_id": e.license_id,
        "count": e.count,
        "at": e.at,
        "ref": e.ref,
        "nonce": e.nonce,
        "branch": stored.branch,
        "licensed": t.licensed,
        "reserved": t.reserved,
        "forfeited": t.forfeited,
        "in_force": t.in_force,
        "revoked": t.revoked,
    }


def _record_flag(
    session: Session,
    device_id: str,
    chain_id: int | None,
    model: str | None,
    flag: Flag,
    report_id: int | None,
    now: float,
) -> None:
    """Store ``flag``, or count it on the device's last flag of the same kind on the same chain when
    that one was last raised within :data:`FLAG_COALESCE_S`: whatever a device sends — refused
    reports, replays, forks that cost it nothing (a license entry with a fresh nonce at seq 0) — its
    flags grow by at most one row per kind and chain an hour."""
    F = LicensingFlagRow
    same_chain = F.chain_id.is_(None) if chain_id is None else F.chain_id == chain_id
    last = session.scalar(
        select(F)
        .where(F.device_id == device_id, same_chain, F.kind == flag.kind, F.last_at >= now - FLAG_COALESCE_S)
        .order_by(F.id.desc())
        .limit(1)
    )
    if last is not None:
        last.repeats += 1
        last.last_at = max(last.last_at, now)
        return
    session.add(
        F(
            chain_id=chain_id,
            device_id=device_id,
            model=model,
            license_id=flag.license_id,
            kind=flag.kind,
            severity=flag.severity,
            seq=flag.seq,
            detail=flag.detail,
            report_id=report_id,
            created_at=now,
            repeats=1,
            last_at=now,
        )
    )


def _flag_view(row: LicensingFlagRow) -> FlagView:
    return FlagView(
        id=row.id,
        device_id=row.device_id,
        model=row.model,
        license_id=row.license_id,
        kind=row.kind,
        severity=row.severity,
        seq=row.seq,
        detail=row.detail,
        report_id=row.report_id,
        created_at=row.created_at,
        repeats=row.repeats,
        last_at=row.last_at,
    )


__all__ = [
    "CHAIN_STATUSES",
    "LICENSE_STATUSES",
    "ChainPosition",
    "ChainView",
    "DeviceLicenses",
    "FlagView",
    "LicenseService",
    "LicenseView",
    "ReportFlag",
    "ReportResult",
    "SignedDoc",
]
