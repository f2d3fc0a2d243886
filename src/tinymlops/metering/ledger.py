"""The device's usage ledger as a pure state machine: no I/O, no clock of its own.

The ledger is an append-only hash chain of :class:`~tinymlops.spec.usage_report.LedgerEntry`
(``hash = sha256(canonical entry)``, each entry carrying the previous hash and a sequence number).
Like python-tuf's trusted metadata set, it only decides; a store persists (see
:mod:`tinymlops.metering.ledger_store`). Every change is two steps so that nothing is counted
before it is durable::

    entry = ledger.propose_reserve(64, now)   # may refuse: QuotaExceeded / LicenseExpired
    store.append(entry)                       # durable first ...
    ledger.apply(entry)                       # ... then in force: 64 calls may run
    ledger.authorize(now)                     # True: one call taken from the block (in memory)

Semantics:

* **Licenses** — :meth:`propose_license` takes a license already verified by its signature
  (:func:`~tinymlops.metering.license_signing.verify_license`); it must be for this device and
  model, and either start a chain (no ``previous_license_id``, nothing installed yet) or top up
  the license in force (``previous_license_id`` = its id). Queries of a chain are pooled; the
  validity window and version range are those of the latest license, whichever way they move: a
  top-up can extend them or shorten them (the issuer's newest signed word governs, and the queries
  left of earlier licenses are served inside it). A license is installed whatever its window says
  (before it starts, or after it ended — a device away longer than its license lasted must still take
  it, so that the top-up extending it can follow); its window is enforced at each reservation. Only
  a clock set back before the last entry refuses the install.
* **Reservations** — a block of calls is written before any of them runs. Calls of the open
  block are counted in memory only. After a crash, :meth:`replay` rebuilds the state from the
  entries with no open block: the calls left in it are lost, never regained. So the usable count
  can only go down across a crash, and by at most one block.
* **Revocations** — :meth:`propose_revoke` takes the issuer's revocation, already verified by its
  signature (:func:`~tinymlops.metering.license_signing.verify_revocation`); it must name the
  license in force, this device and model, and a license not revoked yet. Its ``revoke`` entry
  commits to the revocation's digest and counts the queries it forfeits: everything licensed and
  not yet reserved (``licensed - reserved - forfeited``; the open block is dropped too — its calls
  were reserved already). The chain is then frozen: every metered call is refused with
  :class:`~tinymlops.errors.LicenseRevokedError` until a top-up *of the revoked license*
  (``previous_license_id`` = its id) is installed, which reinstates the chain with the top-up's
  queries. A revocation never waits for the clock: its entry is dated no earlier than the last one.
* **Refusals** — beyond the chain's queries :class:`~tinymlops.errors.QuotaExceededError`;
  before ``valid_from`` / at or after ``valid_until`` :class:`~tinymlops.errors.LicenseExpiredError`;
  a clock earlier than the last entry's time (set back) is refused the same way with
  ``reason="clock-set-back"``; a revoked chain :class:`~tinymlops.errors.LicenseRevokedError`.
* :func:`verify_chain` checks a whole chain: broken link, bad hash, sequence gap or reorder,
  reservations beyond the licensed total (forfeits count with them, so the counts still add up),
  time going backwards, a license installed twice, a revocation that is not of the license in
  force or does not forfeit exactly what was left, a reservation under a revoked license before a
  top-up — each a :class:`~tinymlops.errors.LedgerTamperedError` naming the reason and seq.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence

from tinymlops.errors import (
    LedgerTamperedError,
    LicenseError,
    LicenseExpiredError,
    LicenseRevokedError,
    QuotaExceededError,
    UsageError,
)
from tinymlops.spec.license import License, Revocation
from tinymlops.spec.usage_report import GENESIS_HASH, LedgerEntry


def verify_chain(entries: Sequence[LedgerEntry]) -> str:
    """Check a whole chain from seq 0 and return its head hash (:data:`GENESIS_HASH` if empty).

    ``reserved`` below counts reservations and forfeits (``revoke`` entries) together: neither may
    go beyond what was licensed, and a revocation forfeits exactly what was left."""
    head, licensed, reserved, last_at, current = GENESIS_HASH, 0, 0, 0, None
    installed: set[str] = set()
    frozen = False  # the license in force is revoked (until a top-up)
    for i, entry in enumerate(entries):
        if entry.seq != i:
            raise LedgerTamperedError(
                f"ledger: entry {i} has seq {entry.seq} (a row deleted, inserted or reordered)",
                reason="sequence-gap",
                seq=i,
            )
        if entry.prev_hash != head:
            raise LedgerTamperedError(
                f"ledger: entry seq {entry.seq} does not link to the hash of entry {entry.seq - 1} (a row was edited)",
                reason="broken-link",
                seq=entry.seq,
            )
        if entry.at < last_at:
            raise LedgerTamperedError(
                f"ledger: entry seq {entry.seq} is dated before the entry preceding it",
                reason="time-backwards",
                seq=entry.seq,
            )
        if entry.kind == "license":
            if entry.license_id in installed:
                raise LedgerTamperedError(
                    f"ledger: entry seq {entry.seq} installs license {entry.license_id} a second time",
                    reason="duplicate-license",
                    seq=entry.seq,
                )
            installed.add(entry.license_id)
            licensed += entry.count
            current = entry.license_id
            frozen = False
            head, last_at = entry.hash, entry.at
            continue
        what = "revocation" if entry.kind == "revoke" else "reservation"
        if entry.license_id != current:
            raise LedgerTamperedError(
                f"ledger: {what} seq {entry.seq} names license {entry.license_id}, not the one in force ({current})",
                reason="wrong-license",
                seq=entry.seq,
            )
        if entry.kind == "revoke":
            if frozen:
                raise LedgerTamperedError(
                    f"ledger: entry seq {entry.seq} revokes license {entry.license_id} a second time",
                    reason="duplicate-revoke",
                    seq=entry.seq,
                )
            if entry.count != licensed - reserved:
                raise LedgerTamperedError(
                    f"ledger: revocation seq {entry.seq} forfeits {entry.count} queries, "
                    f"but {licensed - reserved} were left",
                    reason="counts",
                    seq=entry.seq,
                )
            frozen = True
        elif frozen:
            raise LedgerTamperedError(
                f"ledger: reservation seq {entry.seq} under license {entry.license_id} after its revocation",
                reason="revoked",
                seq=entry.seq,
            )
        reserved += entry.count
        if reserved > licensed:
            raise LedgerTamperedError(
                f"ledger: reservations up to seq {entry.seq} add up to {reserved}, more than the {licensed} licensed",
                reason="counts",
                seq=entry.seq,
            )
        head, last_at = entry.hash, entry.at
    return head


class Ledger:
    """The usage ledger of one model on one device (see the module doc)."""

    def __init__(self, device_id: str, model: str, *, nonce: Callable[[], str] | None = None) -> None:
        self.device_id = device_id
        self.model = model
        #: 16 hex digits for each new entry (random by default; a test may pass a deterministic source)
        self._nonce = nonce or (lambda: secrets.token_hex(8))
        self.head = GENESIS_HASH
        self.next_seq = 0
        self.last_at = 0
        #: queries of every license installed, summed
        self.licensed = 0
        #: queries reserved by every block written
        self.reserved = 0
        #: queries forfeited by revocations (the ``revoke`` entries' counts)
        self.forfeited = 0
        #: calls of the open block not yet served (memory only: lost on a crash)
        self.block_remaining = 0
        self.current: License | None = None
        self.licenses: dict[str, License] = {}
        #: the revocation of the license in force, while the chain is frozen (None: not revoked)
        self.revoked: Revocation | None = None
        #: every revocation applied, by the license id it revokes
        self.revocations: dict[str, Revocation] = {}
        self._not_before = math.inf  # no license: every call is refused by the quota first
        self._not_after = -math.inf

    # --- reading -------------------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        """Calls this device may still serve (the open block's included)."""
        return self.licensed - self.reserved - self.forfeited + self.block_remaining

    # --- licenses ------------------------------------------------------------------------------
    def propose_license(self, license: License, now: float) -> LedgerEntry:
        """The entry that installs ``license`` (verified by its signature already), or a refusal."""
        self._check_license(license)
        self._check_clock(now, license, window=False)  # installed before it starts or after it ended alike
        return LedgerEntry(
            seq=self.next_seq,
            prev_hash=self.head,
            kind="license",
            license_id=license.license_id,
            count=license.queries,
            at=int(now),
            ref=license.digest,
            nonce=self._nonce(),
        )

    def _check_license(self, license: License, *, seq: int | None = None) -> None:
        """The rules a license must meet to join this chain: this device and model, not installed
        yet, and either starting the chain or topping up the license in force. A refusal is a
        :class:`LicenseError` when proposing; with ``seq`` (an entry already stored: applying or
        replaying) the same rule broken is tampering, :class:`LedgerTamperedError` with the same reason."""

        def refuse(message: str, reason: str) -> None:
            if seq is None:
                raise LicenseError(message, reason=reason, license_id=license.license_id)
            raise LedgerTamperedError(f"ledger: entry seq {seq}: {message}", reason=reason, seq=seq)

        if license.device_id != self.device_id:
            refuse(
                f"license {license.license_id} is for device {license.device_id}, this device is {self.device_id}",
                "other-device",
            )
        if license.model != self.model:
            refuse(
                f"license {license.license_id} is for model '{license.model}', this ledger meters '{self.model}'",
                "other-model",
            )
        if license.license_id in self.licenses:
            refuse(f"license {license.license_id} is already installed", "duplicate")
        current = self.current.license_id if self.current else None
        if license.previous_license_id != current:
            refuse(
                f"license {license.license_id} tops up {license.previous_license_id or 'nothing'}, "
                f"but the license in force is {current or 'none'}",
                "broken-chain",
            )

    # --- revocations ------------------------------------------------------------------------------
    def propose_revoke(self, revocation: Revocation, now: float) -> LedgerEntry:
        """The entry that writes ``revocation`` (verified by its signature already) into the chain, or
        a :class:`LicenseError`. It forfeits every query licensed and not reserved yet; it is dated
        ``now``, or the last entry's time when the clock reads earlier (a revocation never waits)."""
        self._check_revocation(revocation)
        return LedgerEntry(
            seq=self.next_seq,
            prev_hash=self.head,
            kind="revoke",
            license_id=revocation.license_id,
            count=self.licensed - self.reserved - self.forfeited,
            at=max(int(now), self.last_at),
            ref=revocation.digest,
            nonce=self._nonce(),
        )

    def _check_revocation(self, revocation: Revocation, *, seq: int | None = None) -> None:
        """A revocation must be for this device and model and name the license in force, not revoked
        yet. Refused as :meth:`_check_license` refuses (LicenseError, or LedgerTamperedError with ``seq``)."""

        def refuse(message: str, reason: str) -> None:
            if seq is None:
                raise LicenseError(message, reason=reason, license_id=revocation.license_id)
            raise LedgerTamperedError(f"ledger: entry seq {seq}: {message}", reason=reason, seq=seq)

        lid = revocation.license_id
        if revocation.device_id != self.device_id:
            refuse(
                f"revocation of license {lid} is for device {revocation.device_id}, this device is {self.device_id}",
                "other-device",
            )
        if revocation.model != self.model:
            refuse(
                f"revocation of license {lid} is for model '{revocation.model}', this ledger meters '{self.model}'",
                "other-model",
            )
        if lid in self.revocations:
            refuse(f"license {lid} is revoked already", "duplicate")
        current = self.current.license_id if self.current else None
        if lid != current:
            refuse(f"revocation of license {lid}, but the license in force is {current or 'none'}", "not-in-force")

    # --- reservations and calls ------------------------------------------------------------------
    def propose_reserve(self, n: int, now: float) -> LedgerEntry:
        """The entry reserving a block of up to ``n`` calls (fewer when fewer are left), or a refusal."""
        if n < 1:
            raise UsageError(f"a reservation is at least 1 call, got {n}")
        if self.block_remaining > 0:  # one open block at most: a crash never loses more than one
            raise UsageError(f"the open block still holds {self.block_remaining} calls; reserve when it is empty")
        if self.current is None:
            raise QuotaExceededError(
                f"no license is installed for model '{self.model}' on this device: metered predictions are refused "
                "until the device gets one at its next contact with the control plane",
                reason="no-license",
                remaining=0,
                limit=0,
                license_id=None,
            )
        if self.revoked is not None:
            raise self._revoked_error()
        self._check_clock(now, self.current)
        available = self.licensed - self.reserved - self.forfeited
        if available <= 0:
            raise QuotaExceededError(
                f"all {self.licensed} prepaid queries of license {self.current.license_id} are used; "
                "a top-up is needed",
                reason="quota",
                remaining=0,
                limit=self.licensed,
                license_id=self.current.license_id,
            )
        return LedgerEntry(
            seq=self.next_seq,
            prev_hash=self.head,
            kind="reserve",
            license_id=self.current.license_id,
            count=min(n, available),
            at=int(now),
            nonce=self._nonce(),
        )

    def _revoked_error(self) -> LicenseRevokedError:
        revoked = self.revoked
        assert revoked is not None
        return LicenseRevokedError(
            f"license {revoked.license_id} was revoked by its issuer at {revoked.revoked_at} "
            f"({revoked.reason or 'no reason given'}): metered predictions are refused until a top-up is installed",
            reason="revoked",
            remaining=0,
            limit=self.licensed,
            license_id=revoked.license_id,
            revoked_at=revoked.revoked_at,
        )

    def apply(self, entry: LedgerEntry, document: License | Revocation | None = None, *, live: bool = True) -> None:
        """Put an entry in force (after it is durable). ``document`` is the verified license a
        ``license`` entry installs, or the verified revocation a ``revoke`` entry writes: it must be
        the one the entry commits to and meet the same rules as :meth:`propose_license` /
        :meth:`propose_revoke` (else LedgerTamperedError: a stored chain that breaks them was forged).
        ``live=False`` (replaying a stored chain) opens no block."""
        if entry.seq != self.next_seq or entry.prev_hash != self.head:
            raise LedgerTamperedError(
                f"ledger: entry seq {entry.seq} does not follow the head (next seq {self.next_seq})",
                reason="broken-link",
                seq=entry.seq,
            )
        if entry.at < self.last_at:
            raise LedgerTamperedError(
                f"ledger: entry seq {entry.seq} is dated before the entry preceding it",
                reason="time-backwards",
                seq=entry.seq,
            )
        if entry.kind == "license":
            license = document if isinstance(document, License) else None
            if license is None or license.license_id != entry.license_id or license.digest != entry.ref:
                raise LedgerTamperedError(
                    f"ledger: entry seq {entry.seq} installs license {entry.license_id}, whose signed bytes are "
                    "missing or differ",
                    reason="license-mismatch",
                    seq=entry.seq,
                )
            if entry.count != license.queries:
                raise LedgerTamperedError(
                    f"ledger: entry seq {entry.seq} counts {entry.count} queries, the license grants {license.queries}",
                    reason="counts",
                    seq=entry.seq,
                )
            self._check_license(license, seq=entry.seq)
            self.licenses[license.license_id] = license
            self.current = license
            self.licensed += entry.count
            self._not_before = max(license.valid_from, self.last_at, entry.at)
            self._not_after = license.valid_until
            self.revoked = None  # a top-up of the revoked license reinstates the chain
        elif entry.kind == "revoke":
            revocation = document if isinstance(document, Revocation) else None
            if revocation is None or revocation.license_id != entry.license_id or revocation.digest != entry.ref:
                raise LedgerTamperedError(
                    f"ledger: entry seq {entry.seq} revokes license {entry.license_id}, whose signed revocation is "
                    "missing or differs",
                    reason="revocation-mismatch",
                    seq=entry.seq,
                )
            self._check_revocation(revocation, seq=entry.seq)
            left = self.licensed - self.reserved - self.forfeited
            if entry.count != left:
                raise LedgerTamperedError(
                    f"ledger: revocation seq {entry.seq} forfeits {entry.count} queries, but {left} were left",
                    reason="counts",
                    seq=entry.seq,
                )
            self.revocations[revocation.license_id] = revocation
            self.revoked = revocation
            self.forfeited += entry.count
            self.block_remaining = 0  # the open block's calls were reserved: dropped with the rest
        else:
            if self.current is None or entry.license_id != self.current.license_id:
                raise LedgerTamperedError(
                    f"ledger: reservation seq {entry.seq} names license {entry.license_id}, not the one in force",
                    reason="wrong-license",
                    seq=entry.seq,
                )
            if self.revoked is not None:
                raise LedgerTamperedError(
                    f"ledger: reservation seq {entry.seq} under license {entry.license_id} after its revocation",
                    reason="revoked",
                    seq=entry.seq,
                )
            if self.reserved + self.forfeited + entry.count > self.licensed:
                raise LedgerTamperedError(
                    f"ledger: reservation seq {entry.seq} goes beyond the {self.licensed} licensed queries",
                    reason="counts",
                    seq=entry.seq,
                )
            self.reserved += entry.count
            if live:
                self.block_remaining += entry.count
            self._not_before = max(self._not_before, entry.at)
        self.head = entry.hash
        self.next_seq += 1
        self.last_at = entry.at

    def authorize(self, now: float) -> bool:
        """Take one call from the open block: True; False when the block is empty (reserve first).
        A clock outside the window (or set back before the last entry) raises LicenseExpired."""
        if self.block_remaining <= 0:
            return False
        if not self._not_before <= now < self._not_after:
            assert self.current is not None  # a block exists only under a license
            self._check_clock(now, self.current)
        self.block_remaining -= 1
        return True

    def _check_clock(self, now: float, license: License, *, window: bool = True) -> None:
        """Refuse a clock set back before the last entry, and (``window``) one outside the license's window."""
        base = {"license_id": license.license_id, "remaining": self.remaining, "limit": self.licensed}
        if now < self.last_at:
            raise LicenseExpiredError(
                f"the device clock ({int(now)}) is before the ledger's last entry ({self.last_at}): "
                "it was set back; metered predictions are refused until it is right",
                reason="clock-set-back",
                now=now,
                last_entry_at=self.last_at,
                **base,
            )
        if not window:
            return
        if now < license.valid_from:
            raise LicenseExpiredError(
                f"license {license.license_id} is not valid before {license.valid_from} (now {int(now)})",
                reason="not-yet-valid",
                now=now,
                valid_from=license.valid_from,
                **base,
            )
        if now >= license.valid_until:
            raise LicenseExpiredError(
                f"license {license.license_id} expired at {license.valid_until} (now {int(now)})",
                reason="expired",
                now=now,
                valid_until=license.valid_until,
                **base,
            )

    # --- rebuilding from storage ----------------------------------------------------------------
    @classmethod
    def replay(
        cls,
        device_id: str,
        model: str,
        entries: Sequence[LedgerEntry],
        licenses: Mapping[str, License],
        revocations: Mapping[str, Revocation] | None = None,
    ) -> Ledger:
        """The state a stored chain leaves (no open block: calls left in a block at a crash are lost).
        ``licenses`` are the verified licenses by id, ``revocations`` the verified revocations by the
        license id they revoke. Raises LedgerTamperedError on any inconsistency."""
        verify_chain(entries)
        revocations = revocations or {}
        ledger = cls(device_id, model)
        for entry in entries:
            document: License | Revocation | None = None
            if entry.kind == "license":
                document = licenses.get(entry.license_id)
            elif entry.kind == "revoke":
                document = revocations.get(entry.license_id)
            ledger.apply(entry, document, live=False)
        return ledger


__all__ = ["Ledger", "verify_chain"]
