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
  left of earlier licenses are served inside it).
* **Reservations** — a block of calls is written before any of them runs. Calls of the open
  block are counted in memory only. After a crash, :meth:`replay` rebuilds the state from the
  entries with no open block: the calls left in it are lost, never regained. So the usable count
  can only go down across a crash, and by at most one block.
* **Refusals** — beyond the chain's queries :class:`~tinymlops.errors.QuotaExceededError`;
  before ``valid_from`` / at or after ``valid_until`` :class:`~tinymlops.errors.LicenseExpiredError`;
  a clock earlier than the last entry's time (set back) is refused the same way with
  ``reason="clock-set-back"``.
* :func:`verify_chain` checks a whole chain: broken link, bad hash, sequence gap or reorder,
  reservations beyond the licensed total, time going backwards, a license installed twice — each a
  :class:`~tinymlops.errors.LedgerTamperedError` naming the reason and seq.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence

from tinymlops.errors import (
    LedgerTamperedError,
    LicenseError,
    LicenseExpiredError,
    QuotaExceededError,
    UsageError,
)
from tinymlops.spec.license import License
from tinymlops.spec.usage_report import GENESIS_HASH, LedgerEntry


def verify_chain(entries: Sequence[LedgerEntry]) -> str:
    """Check a whole chain from seq 0 and return its head hash (:data:`GENESIS_HASH` if empty)."""
    head, licensed, reserved, last_at, current = GENESIS_HASH, 0, 0, 0, None
    installed: set[str] = set()
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
        else:
            if entry.license_id != current:
                raise LedgerTamperedError(
                    f"ledger: reservation seq {entry.seq} names license {entry.license_id}, "
                    f"not the one in force ({current})",
                    reason="wrong-license",
                    seq=entry.seq,
                )
            reserved += entry.count
            if reserved > licensed:
                raise LedgerTamperedError(
                    f"ledger: reservations up to seq {entry.seq} add up to {reserved}, "
                    f"more than the {licensed} licensed",
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
        #: calls of the open block not yet served (memory only: lost on a crash)
        self.block_remaining = 0
        self.current: License | None = None
        self.licenses: dict[str, License] = {}
        self._not_before = math.inf  # no license: every call is refused by the quota first
        self._not_after = -math.inf

    # --- reading -------------------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        """Calls this device may still serve (the open block's included)."""
        return self.licensed - self.reserved + self.block_remaining

    # --- licenses ------------------------------------------------------------------------------
    def propose_license(self, license: License, now: float) -> LedgerEntry:
        """The entry that installs ``license`` (verified by its signature already), or a refusal."""
        self._check_license(license)
        self._check_clock(now, license, early_ok=True)  # a license may be installed before it starts
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

    # --- reservations and calls ------------------------------------------------------------------
    def propose_reserve(self, n: int, now: float) -> LedgerEntry:
        """The entry reserving a block of up to ``n`` calls (fewer when fewer are left), or a refusal."""
        if n < 1:
            raise UsageError(f"a reservation is at least 1 call, got {n}")
        if self.block_remaining > 0:  # one open block at most: a crash never loses more than one
            raise UsageError(f"the open block still holds {self.block_remaining} calls; reserve when it is empty")
        if self.current is None:
            raise QuotaExceededError(
                "no license is installed for this model: metered predictions are refused",
                reason="no-license",
                remaining=0,
                limit=0,
                license_id=None,
            )
        self._check_clock(now, self.current)
        available = self.licensed - self.reserved
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

    def apply(self, entry: LedgerEntry, license: License | None = None, *, live: bool = True) -> None:
        """Put an entry in force (after it is durable). ``license`` is the verified license a
        ``license`` entry installs: it must be the one the entry commits to and meet the same rules as
        :meth:`propose_license` (else LedgerTamperedError: a stored chain that breaks them was forged).
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
        else:
            if self.current is None or entry.license_id != self.current.license_id:
                raise LedgerTamperedError(
                    f"ledger: reservation seq {entry.seq} names license {entry.license_id}, not the one in force",
                    reason="wrong-license",
                    seq=entry.seq,
                )
            if self.reserved + entry.count > self.licensed:
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

    def _check_clock(self, now: float, license: License, *, early_ok: bool = False) -> None:
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
        if now < license.valid_from and not early_ok:
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
        cls, device_id: str, model: str, entries: Sequence[LedgerEntry], licenses: Mapping[str, License]
    ) -> Ledger:
        """The state a stored chain leaves (no open block: calls left in a block at a crash are lost).
        ``licenses`` are the verified licenses by id. Raises LedgerTamperedError on any inconsistency."""
        verify_chain(entries)
        ledger = cls(device_id, model)
        for entry in entries:
            ledger.apply(entry, licenses.get(entry.license_id) if entry.kind == "license" else None, live=False)
        return ledger


__all__ = ["Ledger", "verify_chain"]
