"""Usage reconciliation as a pure state machine: what the server makes of one verified usage report.

No I/O and no clock (like :class:`~tinymlops.metering.ledger.Ledger` on the device): the licensing
service (:mod:`tinymlops.metering.licensing`) loads a :class:`ChainSnapshot` of what it knows of one
(device, model) chain, calls :func:`reconcile`, and stores what the :class:`Accepted` decision says
(or answers the :class:`Gap` / :class:`Refused`).

**What the server knows of a chain.** Every distinct ledger entry the device ever signed and
reported, by ``(seq, hash)`` — several entries at one seq when the chain forked; they form a tree
rooted at the genesis hash. Each stored entry carries the totals of its branch up to it
(:class:`Totals`: licensed, reserved, forfeited, the license in force, whether that license was
revoked on the branch) and a branch number (a new number at each fork). The *current branch* is the
one the latest report that added entries extended; ``head`` is its last entry, and the server's
``next_seq`` is ``head.seq + 1``.

**Deciding on a report** (entries ``first_seq ..= last_seq``, linked from ``head_before``; the parser
checked the links inside the report, :class:`~tinymlops.spec.usage_report.UsageReport`):

1. *Link.* A report from seq 0 links to the genesis. Otherwise its ``head_before`` must be a stored
   entry at ``first_seq - 1``. If nothing is stored at that seq the report starts past every branch:
   :class:`Gap` with the current ``next_seq`` (a report between was lost, or two were reordered).
   If entries are stored there but none is ``head_before``, the device's chain left the stored
   ones somewhere before the report starts (a restored or cloned ledger reporting from a position
   the server gave the other copy): :class:`Gap` with ``next_seq`` the latest seq below the report
   where the stored chain already forks, else 0 — resending from there either links or steps back
   again, and from 0 every report links. A chain must be reported from seq 0.
2. *Overlap.* Leading entries already stored (same seq and hash, so the same predecessor) are
   resends and are skipped. A report with nothing new is accepted as a ``replay`` (info); its answer
   ``next_seq`` is ``last_seq + 1`` (:func:`resume_after`): the device showed that its chain holds the
   stored entries up to there, and nothing of what follows — it may be a copy whose chain leaves the
   stored one further on, and a position past what it showed would not link (a gap sends it back, and
   the fork would never be reported).
3. *Where the new entries go.* If the entry they follow already has other children, the report
   forks the stored chain there: a ``rollback`` (alert) — the device restored an older copy of its
   ledger, or a clone reported — and the new entries start a new branch. If it follows a branch tip
   other than the current head, a branch other than the current one grew again after a fork: a
   ``clone`` (alert; once per pair of branches). Either way the report's branch becomes current.
4. *Every new entry is checked against the licenses the server issued and the branch's totals.*
   Refused (:class:`Refused`, nothing stored, the flag alone is kept): an entry dated before the
   one it follows; a ``license`` entry for a license never issued to this device and model (or one
   issued to another device: ``clone``), whose ``ref`` is not the digest of the signed license,
   whose count is not the license's queries, or which does not top up the license in force; a
   ``reserve`` or ``revoke`` entry naming a license that is not in force; a ``revoke`` entry whose
   ``ref`` is not the digest of the revocation the server signed for that license, that revokes a
   license twice, or whose count is not the queries it forfeits (licensed − reserved − forfeited
   before it). These are ``tamper`` — an unmodified device never writes them.
   Accepted with a flag (the entries are real usage and are billed): reservations beyond the
   branch's licensed queries (``overuse``), reservations under a license the chain's revocation
   froze, written after a ``revoke`` entry or dated at least ``revoked_use_grace`` seconds after the
   revocation was delivered to the device (``revoked-use``); a top-up of a license the server revoked
   installed with no ``revoke`` entry before it on the branch (``revoked-use`` too: the revocation was
   skipped, so the queries it forfeits stay usable).

Every distinct entry is kept (both branches of a fork), so usage on a rolled-back or cloned device
is still counted, and nothing is ever counted twice (an entry is stored once by ``(seq, hash)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from tinymlops.spec.usage_report import LedgerEntry, UsageReport

#: every flag kind, and its severity
FLAG_SEVERITY: Final[Mapping[str, str]] = {
    "rollback": "alert",
    "clone": "alert",
    "tamper": "alert",
    "overuse": "alert",
    "revoked-use": "alert",
    "replay": "info",
}
FLAG_KINDS: Final = tuple(FLAG_SEVERITY)
ALERT_KINDS: Final = frozenset(k for k, s in FLAG_SEVERITY.items() if s == "alert")
#: seconds after a revocation's delivery before a reservation under the frozen license is revoked-use
#: (the device may be writing a block while it fetches the revocation; clocks differ a little)
DEFAULT_REVOKED_USE_GRACE: Final = 300.0


@dataclass(frozen=True, slots=True)
class Totals:
    """A branch's totals up to and including one entry."""

    licensed: int = 0  # queries of the license entries
    reserved: int = 0  # calls of the reserve entries
    forfeited: int = 0  # queries forfeited by revoke entries
    in_force: str | None = None  # the license the last license entry installed
    revoked: bool = False  # a revoke entry froze ``in_force`` (until a top-up)
    at: int = 0  # the last entry's time (device clock)

    @property
    def available(self) -> int:
        return self.licensed - self.reserved - self.forfeited

    def after(self, entry: LedgerEntry) -> Totals:
        """The totals once ``entry`` follows (no checks: see :func:`reconcile`)."""
        if entry.kind == "license":
            return Totals(self.licensed + entry.count, self.reserved, self.forfeited, entry.license_id, False, entry.at)
        if entry.kind == "reserve":
            return Totals(
                self.licensed, self.reserved + entry.count, self.forfeited, self.in_force, self.revoked, entry.at
            )
        return Totals(self.licensed, self.reserved, self.forfeited + entry.count, self.in_force, True, entry.at)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A ledger entry the server holds: the entry, its hash, its branch number and its branch's totals."""

    entry: LedgerEntry
    hash: str
    branch: int
    totals: Totals

    @property
    def seq(self) -> int:
        return self.entry.seq

    @property
    def key(self) -> tuple[int, str]:
        return (self.entry.seq, self.hash)


@dataclass(frozen=True, slots=True)
class IssuedLicense:
    """What the server issued under a license id: to whom, for what, its digest and place in its chain."""

    license_id: str
    device_id: str
    model: str
    digest: str
    queries: int
    previous_license_id: str | None
    position: int  # 0 for the root, 1 for its first top-up, ...


@dataclass(frozen=True, slots=True)
class IssuedRevocation:
    """A revocation the server signed for one license of the chain, and when the device first got it."""

    license_id: str
    digest: str
    position: int  # the revoked license's position in the chain
    delivered_at: float | None  # server clock: when the device had it (None: not known to have it yet)


@dataclass(frozen=True)
class ChainSnapshot:
    """What the server knows of one (device, model) chain that a report can touch.

    ``entries`` must hold every stored entry with ``window_start <= seq <= window_end`` on every
    branch, ``window_start`` at most the report's ``first_seq - 1`` (or 0) and ``window_end`` (None:
    no end) at least its ``last_seq + 1``; ``max_seq`` is the highest seq stored (None: nothing, or
    take it from the window). ``fork_below`` is the largest seq below ``window_start`` where the
    stored chain forks — two stored entries there follow the same entry (None: none); it is read
    only when :func:`needs_fork_below` says so (a caller may leave it None otherwise). ``licenses``
    maps at least the
    license ids the report names to what was issued under them (to any device: an id missing here
    was never issued); ``revocations`` the chain's revocations by license id."""

    device_id: str
    model: str
    head: tuple[int, str] | None = None
    current_branch: int = 0
    branches: int = 0
    window_start: int = 0
    window_end: int | None = None
    max_seq: int | None = None
    entries: tuple[StoredEntry, ...] = ()
    fork_below: int | None = None
    licenses: Mapping[str, IssuedLicense] = field(default_factory=dict)
    revocations: Mapping[str, IssuedRevocation] = field(default_factory=dict)
    clone_pairs: frozenset[tuple[int, int]] = frozenset()
    revoked_use_grace: float = DEFAULT_REVOKED_USE_GRACE

    @property
    def next_seq(self) -> int:
        return 0 if self.head is None else self.head[0] + 1


@dataclass(frozen=True, slots=True)
class Flag:
    kind: str
    seq: int | None
    detail: str
    license_id: str | None = None

    @property
    def severity(self) -> str:
        return FLAG_SEVERITY[self.kind]


@dataclass(frozen=True)
class Accepted:
    """Store ``new`` (in order) and the flags; the chain's current head/branch become these."""

    new: tuple[StoredEntry, ...]
    head: tuple[int, str] | None
    current_branch: int
    branches: int
    next_seq: int  # the answer to the device: where to send from next
    flags: tuple[Flag, ...]
    clone_pairs: frozenset[tuple[int, int]]

    @property
    def reserved(self) -> int:
        """Calls reserved by the new entries (what this report adds to the bill)."""
        return sum(s.entry.count for s in self.new if s.entry.kind == "reserve")


@dataclass(frozen=True)
class Gap:
    """Nothing stored: the device must send again from ``next_seq``."""

    next_seq: int
    detail: str


@dataclass(frozen=True)
class Refused:
    """Nothing stored but the flag (``tamper`` or ``clone``): the report is hostile."""

    flag: Flag
    reason: str  # a short machine-readable name of the check


Decision = Accepted | Gap | Refused


class _Tree:
    """The snapshot's entries indexed by key, by seq and by parent hash."""

    def __init__(self, entries: Iterable[StoredEntry]) -> None:
        self.by_key: dict[tuple[int, str], StoredEntry] = {}
        self.by_seq: dict[int, list[StoredEntry]] = {}
        self.children: dict[tuple[int, str], list[StoredEntry]] = {}
        for stored in entries:
            self.by_key[stored.key] = stored
            self.by_seq.setdefault(stored.seq, []).append(stored)
            self.children.setdefault((stored.seq - 1, stored.entry.prev_hash), []).append(stored)

    def kids(self, seq: int, hash: str) -> list[StoredEntry]:
        return self.children.get((seq, hash), [])


def locate(report: UsageReport, device_id: str, issued: IssuedLicense | None) -> str | Refused:
    """The model of the chain ``report`` is about (from the license it names), or why it is refused."""
    if report.entries[-1].license_id != report.license_id:
        return _refuse(
            "tamper",
            report.last_seq,
            f"the report names license {report.license_id}, but its last entry is under "
            f"{report.entries[-1].license_id}",
            "report-license",
            report.license_id,
        )
    if issued is None:
        return _refuse(
            "tamper",
            report.last_seq,
            f"the report names license {report.license_id}, which this server never issued",
            "unknown-license",
            report.license_id,
        )
    if issued.device_id != device_id:
        return _refuse(
            "clone",
            report.last_seq,
            f"license {report.license_id} was issued to device {issued.device_id}, but device {device_id} reports "
            "usage under it",
            "other-device",
            report.license_id,
        )
    return issued.model


def needs_fork_below(report: UsageReport, entries: Iterable[StoredEntry]) -> bool:
    """Whether :func:`reconcile` reads the snapshot's ``fork_below`` for ``report`` over these stored
    ``entries`` (the window's): only when the report does not link — its ``head_before`` is none of
    the entries stored at ``first_seq - 1`` — while entries are stored there (a gap sent back to the
    latest fork)."""
    if report.first_seq == 0:
        return False
    before = [s.hash for s in entries if s.seq == report.first_seq - 1]
    return bool(before) and report.head_before not in before


def resume_after(report: UsageReport) -> int:
    """Where a device should send from after a report whose entries the server holds already (a
    replay): right after them. The report shows that the device's chain holds the stored entries up
    to ``last_seq``; what follows on the device may be anything — the stored chain's next entries, or
    a fork (a restored or cloned ledger) that only a report from there can show."""
    return report.last_seq + 1


def reconcile(snapshot: ChainSnapshot, report: UsageReport) -> Decision:
    """Decide on ``report`` (verified: parsed, signature checked, from ``snapshot.device_id``) — see the
    module doc."""
    tree = _Tree(snapshot.entries)
    first = report.first_seq
    if first > 0 and first - 1 < snapshot.window_start:
        raise ValueError(f"the snapshot's window starts at {snapshot.window_start}, the report needs {first - 1}")
    if snapshot.window_end is not None and snapshot.window_end <= report.last_seq:
        raise ValueError(f"the snapshot's window ends at {snapshot.window_end}, the report needs {report.last_seq + 1}")

    # 1. link
    pred: StoredEntry | None = None
    if first > 0:
        pred = tree.by_key.get((first - 1, report.head_before))
        if pred is None:
            if tree.by_seq.get(first - 1):
                forks = [seq + 1 for (seq, _), kids in tree.children.items() if len(kids) > 1 and seq + 1 < first]
                if snapshot.fork_below is not None:
                    forks.append(snapshot.fork_below)
                resume = max(forks, default=0)
                return Gap(
                    resume,
                    f"the report starts at seq {first}, but its entry {first - 1} is none of the stored ones: "
                    f"the device's chain left the stored chain before; send again from seq {resume}",
                )
            return Gap(
                snapshot.next_seq,
                f"the report starts at seq {first}, past the entries the server has (next seq "
                f"{snapshot.next_seq}): a report between was lost or they arrived out of order",
            )

    # 2. overlap: leading entries already stored are resends
    entries = report.entries
    hashes = [e.hash for e in entries]
    skip = 0
    while skip < len(entries) and (entries[skip].seq, hashes[skip]) in tree.by_key:
        pred = tree.by_key[(entries[skip].seq, hashes[skip])]
        skip += 1
    new = entries[skip:]
    if not new:
        return Accepted(
            new=(),
            head=snapshot.head,
            current_branch=snapshot.current_branch,
            branches=snapshot.branches,
            next_seq=resume_after(report),
            flags=(
                Flag(
                    "replay",
                    report.first_seq,
                    f"every entry of the report (seq {report.first_seq}..{report.last_seq}) was already received; "
                    "nothing is counted again",
                    report.license_id,
                ),
            ),
            clone_pairs=snapshot.clone_pairs,
        )

    # 3. where the new entries go
    flags: list[Flag] = []
    clone_pairs = snapshot.clone_pairs
    start = new[0]
    pred_key = (start.seq - 1, start.prev_hash)
    siblings = tree.kids(*pred_key)
    branches = snapshot.branches
    if siblings:
        branch = branches
        branches += 1
        reach = max(tree.by_seq) if snapshot.max_seq is None else snapshot.max_seq
        flags.append(
            Flag(
                "rollback",
                start.seq,
                f"the report forks the stored chain at seq {start.seq}: its entry there differs from the "
                f"{len(siblings)} stored one(s) after the same entry, and the stored chain already reaches seq "
                f"{reach} — an older copy of the ledger was restored, or a clone reported",
                start.license_id,
            )
        )
    elif pred is None:  # nothing stored yet: the chain's first report
        branch = 0
        branches = max(branches, 1)
    else:
        branch = pred.branch
        if snapshot.head is not None and pred.key != snapshot.head:
            pair = (min(branch, snapshot.current_branch), max(branch, snapshot.current_branch))
            if pair not in clone_pairs:
                clone_pairs = clone_pairs | {pair}
                flags.append(
                    Flag(
                        "clone",
                        start.seq,
                        f"branch {branch} grows again at seq {start.seq} after branch {snapshot.current_branch} "
                        "forked from it: two ledgers with this identity are both in use",
                        start.license_id,
                    )
                )

    # 4. check every new entry and carry the totals
    totals = pred.totals if pred is not None else Totals()
    stored: list[StoredEntry] = []
    overuse: list[tuple[int, int]] = []  # (seq, calls beyond the licensed)
    revoked_use: list[tuple[int, int, str]] = []  # (seq, calls, license)
    for entry, hash in zip(new, hashes[skip:], strict=True):
        refusal = _check(snapshot, totals, entry)
        if refusal is not None:
            return refusal
        skipped = _skipped_revocation(snapshot, totals, entry)
        if skipped is not None:
            flags.append(skipped)
        if entry.kind == "reserve":
            if _revoked_use(snapshot, totals, entry):
                revoked_use.append((entry.seq, entry.count, entry.license_id))
            elif entry.count > totals.available:
                overuse.append((entry.seq, entry.count - max(totals.available, 0)))
        totals = totals.after(entry)
        stored.append(StoredEntry(entry, hash, branch, totals))
    if revoked_use:
        seq, _, lic = revoked_use[0]
        calls = sum(c for _, c, _ in revoked_use)
        flags.append(
            Flag(
                "revoked-use",
                seq,
                f"{len(revoked_use)} reservation(s) from seq {seq} ({calls} calls) under license {lic} after its "
                "revocation reached the device",
                lic,
            )
        )
    if overuse:
        seq, _ = overuse[0]
        flags.append(
            Flag(
                "overuse",
                seq,
                f"reservations from seq {seq} go {sum(x for _, x in overuse)} calls beyond the "
                f"{totals.licensed} queries licensed on this branch",
                stored[-1].entry.license_id,
            )
        )
    last = stored[-1]
    return Accepted(
        new=tuple(stored),
        head=last.key,
        current_branch=branch,
        branches=branches,
        next_seq=last.seq + 1,
        flags=tuple(flags),
        clone_pairs=clone_pairs,
    )


def _skipped_revocation(snapshot: ChainSnapshot, totals: Totals, entry: LedgerEntry) -> Flag | None:
    """A top-up installed on a license the server revoked, with no ``revoke`` entry before it on the
    branch: the device never wrote the revocation (a patched agent, or the revocation stripped from
    its licenses answer on the way), so the queries it forfeits stay pooled with the top-up's."""
    if entry.kind != "license" or totals.revoked or totals.in_force is None:
        return None
    lic = snapshot.licenses.get(entry.license_id)
    if lic is None or lic.previous_license_id != totals.in_force or totals.in_force not in snapshot.revocations:
        return None
    return Flag(
        "revoked-use",
        entry.seq,
        f"top-up {entry.license_id} installed at seq {entry.seq} on license {totals.in_force}, which was revoked, "
        f"without the revocation: the {max(totals.available, 0)} queries it forfeits stay usable",
        entry.license_id,
    )


def _revoked_use(snapshot: ChainSnapshot, totals: Totals, entry: LedgerEntry) -> bool:
    if totals.revoked:  # after the device's own revoke entry, before a top-up
        return True
    lic = snapshot.licenses.get(entry.license_id)
    if lic is None:
        return False
    return any(
        rev.delivered_at is not None
        and lic.position <= rev.position
        and entry.at >= rev.delivered_at + snapshot.revoked_use_grace
        for rev in snapshot.revocations.values()
    )


def _refuse(kind: str, seq: int | None, detail: str, reason: str, license_id: str | None) -> Refused:
    return Refused(Flag(kind, seq, detail, license_id), reason)


def _check(snapshot: ChainSnapshot, totals: Totals, entry: LedgerEntry) -> Refused | None:
    """Why ``entry`` cannot follow a branch at ``totals`` (a refusal), or None."""
    seq, lid = entry.seq, entry.license_id
    if entry.at < totals.at:
        return _refuse(
            "tamper",
            seq,
            f"entry seq {seq} is dated {entry.at}, before the entry it follows ({totals.at})",
            "time",
            lid,
        )
    if entry.kind == "license":
        lic = snapshot.licenses.get(lid)
        if lic is None:
            return _refuse(
                "tamper", seq, f"entry seq {seq} installs license {lid}, never issued", "unknown-license", lid
            )
        if lic.device_id != snapshot.device_id:
            return _refuse(
                "clone",
                seq,
                f"entry seq {seq} installs license {lid}, issued to device {lic.device_id}",
                "other-device",
                lid,
            )
        if lic.model != snapshot.model:
            return _refuse(
                "tamper",
                seq,
                f"entry seq {seq} installs license {lid} of model '{lic.model}' in the '{snapshot.model}' ledger",
                "other-model",
                lid,
            )
        if entry.ref != lic.digest:
            return _refuse(
                "tamper",
                seq,
                f"entry seq {seq} installs license {lid}, but its ref is not the digest of the license issued",
                "license-digest",
                lid,
            )
        if entry.count != lic.queries:
            return _refuse(
                "tamper",
                seq,
                f"entry seq {seq} counts {entry.count} queries for license {lid}, which grants {lic.queries}",
                "counts",
                lid,
            )
        if lic.previous_license_id != totals.in_force:
            return _refuse(
                "tamper",
                seq,
                f"entry seq {seq} installs license {lid}, which tops up {lic.previous_license_id or 'nothing'}, "
                f"but the license in force is {totals.in_force or 'none'}",
                "license-chain",
                lid,
            )
        return None
    if totals.in_force is None or lid != totals.in_force:
        return _refuse(
            "tamper",
            seq,
            f"{entry.kind} entry seq {seq} names license {lid}, not the one in force ({totals.in_force or 'none'})",
            "not-in-force",
            lid,
        )
    if entry.kind == "revoke":
        rev = snapshot.revocations.get(lid)
        if rev is None or entry.ref != rev.digest:
            what = "was never revoked" if rev is None else "was revoked by another document"
            return _refuse("tamper", seq, f"revoke entry seq {seq}: license {lid} {what}", "revocation-digest", lid)
        if totals.revoked:
            return _refuse("tamper", seq, f"revoke entry seq {seq} revokes license {lid} twice", "revoked-twice", lid)
        expected = max(totals.available, 0)
        if entry.count != expected:
            return _refuse(
                "tamper",
                seq,
                f"revoke entry seq {seq} forfeits {entry.count} queries; the branch had {expected} left",
                "counts",
                lid,
            )
    return None


__all__ = [
    "ALERT_KINDS",
    "DEFAULT_REVOKED_USE_GRACE",
    "FLAG_KINDS",
    "FLAG_SEVERITY",
    "Accepted",
    "ChainSnapshot",
    "Decision",
    "Flag",
    "Gap",
    "IssuedLicense",
    "IssuedRevocation",
    "Refused",
    "StoredEntry",
    "Totals",
    "locate",
    "needs_fork_below",
    "reconcile",
    "resume_after",
]
