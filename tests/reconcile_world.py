"""The pure reconciliation driven without a database (a plain module: ``from reconcile_world import ...``).

:class:`MemoryServer` keeps what :class:`~tinymlops.metering.licensing.LicenseService` keeps in its
tables — every distinct entry, the current head and branch, the digests accepted — and does with each
:func:`~tinymlops.metering.reconcile.reconcile` decision what the service does. :class:`LedgerDevice`
is an honest device: the real pure :class:`~tinymlops.metering.ledger.Ledger`, with its entry log.
:func:`link` builds hand-made chains (kinds and counts as given, hashes linked)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import T0, Issuer
from tinymlops.crypto.keys import key_id
from tinymlops.metering.ledger import Ledger
from tinymlops.metering.reconcile import (
    Accepted,
    ChainSnapshot,
    Flag,
    Gap,
    IssuedLicense,
    IssuedRevocation,
    Refused,
    StoredEntry,
    reconcile,
    resume_after,
)
from tinymlops.spec.license import License
from tinymlops.spec.usage_report import GENESIS_HASH, LedgerEntry, UsageReport

MODEL = "tiny"


def issued(license: License, position: int) -> IssuedLicense:
    return IssuedLicense(
        license.license_id,
        license.device_id,
        license.model,
        license.digest,
        license.queries,
        license.previous_license_id,
        position,
    )


@dataclass
class Answer:
    """What the server answered: ``accepted`` / ``duplicate`` / ``gap`` / ``refused``, and where to go on."""

    kind: str
    next_seq: int
    flags: tuple[Flag, ...] = ()
    decision: object = None


@dataclass
class MemoryServer:
    device_id: str
    model: str = MODEL
    licenses: dict[str, IssuedLicense] = field(default_factory=dict)
    revocations: dict[str, IssuedRevocation] = field(default_factory=dict)
    grace: float = 300.0
    entries: dict[tuple[int, str], StoredEntry] = field(default_factory=dict)
    head: tuple[int, str] | None = None
    current_branch: int = 0
    branches: int = 0
    clone_pairs: frozenset[tuple[int, int]] = frozenset()
    used: int = 0
    flags: list[Flag] = field(default_factory=list)
    digests: set[str] = field(default_factory=set)

    def issue(self, license: License) -> None:
        position = sum(1 for lic in self.licenses.values() if lic.device_id == license.device_id)
        self.licenses[license.license_id] = issued(license, position)

    @property
    def next_seq(self) -> int:
        return 0 if self.head is None else self.head[0] + 1

    @property
    def alerts(self) -> list[Flag]:
        return [f for f in self.flags if f.severity == "alert"]

    def kinds(self) -> list[str]:
        return [f.kind for f in self.flags]

    def snapshot(self, window_start: int, window_end: int | None = None) -> ChainSnapshot:
        per_parent: dict[tuple[int, str], int] = {}
        for stored in self.entries.values():
            parent = (stored.seq, stored.entry.prev_hash)
            per_parent[parent] = per_parent.get(parent, 0) + 1
        forks = [seq for (seq, _), n in per_parent.items() if n > 1 and seq < window_start]
        return ChainSnapshot(
            device_id=self.device_id,
            model=self.model,
            head=self.head,
            current_branch=self.current_branch,
            branches=self.branches,
            window_start=window_start,
            window_end=window_end,
            max_seq=max((seq for seq, _ in self.entries), default=None),
            entries=tuple(
                e
                for e in self.entries.values()
                if e.seq >= window_start and (window_end is None or e.seq <= window_end)
            ),
            fork_below=max(forks, default=None),
            licenses=dict(self.licenses),
            revocations=dict(self.revocations),
            clone_pairs=self.clone_pairs,
            revoked_use_grace=self.grace,
        )

    def send(self, report: UsageReport) -> Answer:
        digest = hashlib.sha256(report.to_bytes()).hexdigest()
        if digest in self.digests:
            flag = Flag("replay", report.first_seq, "sent again")
            self.flags.append(flag)
            return Answer("duplicate", resume_after(report), (flag,))
        decision = reconcile(self.snapshot(max(report.first_seq - 1, 0), report.last_seq + 1), report)
        if isinstance(decision, Gap):
            return Answer("gap", decision.next_seq, decision=decision)
        if isinstance(decision, Refused):
            self.flags.append(decision.flag)
            return Answer("refused", self.next_seq, (decision.flag,), decision)
        assert isinstance(decision, Accepted)
        for stored in decision.new:
            assert stored.key not in self.entries
            self.entries[stored.key] = stored
        if decision.new:
            self.head = decision.head
        self.current_branch = decision.current_branch
        self.branches = decision.branches
        self.clone_pairs = decision.clone_pairs
        self.used += decision.reserved
        self.flags.extend(decision.flags)
        self.digests.add(digest)
        return Answer("accepted", decision.next_seq, decision.flags, decision)

    def branch_totals(self) -> StoredEntry | None:
        return None if self.head is None else self.entries[self.head]


class LedgerDevice:
    """An honest device: the real pure ledger and the entries it wrote, in order."""

    def __init__(self, key: Ed25519PrivateKey | None = None, model: str = MODEL, *, block: int = 8) -> None:
        self.key = key or Ed25519PrivateKey.generate()
        self.device_id = key_id(self.key)
        self.model = model
        self.block = block
        self.ledger = Ledger(self.device_id, model)
        self.log: list[LedgerEntry] = []
        self.licenses: dict[str, License] = {}
        self.now = T0

    def install(self, license: License) -> None:
        entry = self.ledger.propose_license(license, self.now)
        self.ledger.apply(entry, license)
        self.log.append(entry)
        self.licenses[license.license_id] = license

    def serve(self, calls: int) -> int:
        """Serve up to ``calls`` predictions (fewer when the quota runs out); how many were served."""
        served = 0
        for _ in range(calls):
            if not self.ledger.authorize(self.now):
                if self.ledger.licensed - self.ledger.reserved <= 0:
                    break
                entry = self.ledger.propose_reserve(self.block, self.now)
                self.ledger.apply(entry)
                self.log.append(entry)
                assert self.ledger.authorize(self.now)
            served += 1
        return served

    def report(self, start: int, end: int | None = None) -> UsageReport:
        entries = self.log[start:end]
        at_head = (end is None or end >= len(self.log)) and bool(entries)
        return UsageReport.build(
            device_id=self.device_id,
            entries=entries,
            block_remaining=self.ledger.block_remaining if at_head else 0,
            created_at=int(self.now),
        )

    def restored(self, length: int) -> LedgerDevice:
        """A copy of this device as it was after ``length`` entries (a restored backup or a clone):
        the same key, the ledger replayed from those entries, no open block."""
        copy = LedgerDevice(self.key, self.model, block=self.block)
        copy.log = list(self.log[:length])
        copy.licenses = dict(self.licenses)
        copy.ledger = Ledger.replay(self.device_id, self.model, copy.log, self.licenses)
        copy.now = self.now
        return copy

    @property
    def reserved(self) -> int:
        return sum(e.count for e in self.log if e.kind == "reserve")


def link(
    specs: Sequence[tuple[str, str, int] | tuple[str, str, int, str | None]],
    *,
    start: int = 0,
    prev: str = GENESIS_HASH,
    at: int = T0,
) -> list[LedgerEntry]:
    """Hand-made linked entries from ``(kind, license_id, count[, ref])``; license entries need a ref."""
    out: list[LedgerEntry] = []
    for i, spec in enumerate(specs):
        kind, lid, count = spec[0], spec[1], spec[2]
        ref = spec[3] if len(spec) > 3 else None
        entry = LedgerEntry(
            seq=start + i,
            prev_hash=prev,
            kind=kind,
            license_id=lid,
            count=count,
            at=at + i,
            ref=ref,
            nonce=secrets.token_hex(8),
        )
        out.append(entry)
        prev = entry.hash
    return out


def relink(entries: Iterable[LedgerEntry], prev: str) -> list[LedgerEntry]:
    """The same entries with their hashes recomputed from ``prev`` (what a forger does after an edit)."""
    out = []
    for e in entries:
        e = LedgerEntry(e.seq, prev, e.kind, e.license_id, e.count, e.at, e.ref, e.nonce)
        out.append(e)
        prev = e.hash
    return out


def report_of(device_id: str, entries: Sequence[LedgerEntry], *, block_remaining: int = 0) -> UsageReport:
    return UsageReport.build(device_id=device_id, entries=entries, block_remaining=block_remaining, created_at=T0)


__all__ = [
    "MODEL",
    "Answer",
    "Issuer",
    "LedgerDevice",
    "MemoryServer",
    "issued",
    "link",
    "relink",
    "report_of",
]
