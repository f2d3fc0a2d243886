"""Usage ledger entries and usage reports: what a device tells the server about its metered queries.

**A ledger entry** is one link of the device's append-only hash chain (canonical JSON; its hash is
``sha256(canonical bytes)``, the next entry's ``prev_hash``)::

    {"seq": 0, "prev_hash": "<64 hex>", "kind": "license" | "reserve" | "revoke",
     "license_id": "<32 hex>", "count": 64, "at": 1718000000, "ref": "<64 hex>" | null,
     "nonce": "<16 hex>"}

``license`` entries install a license (or a top-up): ``count`` is its queries, ``ref`` the sha256
of its signed bytes. ``reserve`` entries are durable blocks of calls, written *before* the calls
they allow run: ``count`` calls, ``ref`` null. ``revoke`` entries record the issuer's signed
revocation of the license in force (``license_id``), learnt at a contact with the server: ``ref``
is the sha256 of the revocation's signed bytes and ``count`` the queries forfeited by it (the
chain's licensed minus reserved at that moment; 0 allowed) — after it the device refuses metered
calls until a top-up is installed. ``nonce`` is 64 random bits, so no two entries are
alike: an older copy of the ledger written on again forks (other hashes at the same seq) even when
it repeats the same counts at the same second — a fork the monotonic counter and the server can both
see. The first entry has ``seq`` 0 and ``prev_hash`` :data:`GENESIS_HASH`. Entries are exact:
unknown fields are refused (a hash chain admits no slack).

**A usage report** (signed by the device's Ed25519 key; unknown fields are kept byte-for-byte and
only an unsupported major version is refused)::

    {
      "spec_version": "1.0",
      "device_id": "<16 hex>", "license_id": "<32 hex>",   # the license in force at the last entry
      "first_seq": 12, "last_seq": 20,                      # the entries in the report, inclusive
      "head_before": "<64 hex>",                            # hash of entry first_seq - 1 (genesis if 0)
      "head_after": "<64 hex>",                             # hash of entry last_seq
      "licensed": 0, "reserved": 512,                       # sums of the license / reserve entries'
                                                            # counts (revoke entries are in neither)
      "block_remaining": 17,                                # calls of the open block not yet served
                                                            # (0 when the report stops short of the head)
      "entries": [<ledger entry>, ...],                      # exactly first_seq ..= last_seq
      "created_at": 1718000060
    }

The parser checks everything a server can check without state: the entries are consecutive, each
links to the previous one's hash starting from ``head_before``, the last one hashes to
``head_after``, and the sums are the entries' sums. Standard library only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError
from tinymlops.spec._parse import HEX16, HEX32, HEX64, check_version, read_hex, read_int
from tinymlops.spec.license import MAX_EPOCH, MAX_QUERIES
from tinymlops.spec.manifest import canonical_json, parse_json_strict

USAGE_REPORT_MAJOR = 1
USAGE_REPORT_VERSION = "1.0"
GENESIS_HASH = "0" * 64
ENTRY_KINDS = ("license", "reserve", "revoke")
MAX_SEQ = 2**53
#: entries one report may carry; a device with more sends several reports
MAX_REPORT_ENTRIES = 4096
MAX_REPORT_BYTES = 2 * 1024 * 1024

_ENTRY_FIELDS = frozenset({"seq", "prev_hash", "kind", "license_id", "count", "at", "ref", "nonce"})
_REPORT_FIELDS = (
    "spec_version",
    "device_id",
    "license_id",
    "first_seq",
    "last_seq",
    "head_before",
    "head_after",
    "licensed",
    "reserved",
    "block_remaining",
    "entries",
    "created_at",
)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    prev_hash: str
    kind: str
    license_id: str
    count: int
    at: int
    ref: str | None = None
    nonce: str = "0" * 16

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "kind": self.kind,
            "license_id": self.license_id,
            "count": self.count,
            "at": self.at,
            "ref": self.ref,
            "nonce": self.nonce,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "ledger entry") -> LedgerEntry:
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: must be an object, got {type(data).__name__}")
        if set(data) != _ENTRY_FIELDS:
            missing, unknown = sorted(_ENTRY_FIELDS - set(data)), sorted(set(data) - _ENTRY_FIELDS)
            raise SpecError(
                f"{where}: fields must be exactly {sorted(_ENTRY_FIELDS)} (missing {missing}, unknown {unknown})"
            )
        kind = data["kind"]
        if kind not in ENTRY_KINDS:
            raise SpecError(f"{where}: field 'kind' must be one of {', '.join(ENTRY_KINDS)}, got {kind!r:.40}")
        ref = data["ref"]
        if kind == "license":
            ref = read_hex(where, data, "ref", HEX64, "the license's sha256 (64 lowercase hex digits)")
        elif kind == "revoke":
            ref = read_hex(where, data, "ref", HEX64, "the revocation's sha256 (64 lowercase hex digits)")
        elif ref is not None:
            raise SpecError(f"{where}: field 'ref' must be null on a {kind} entry")
        return cls(
            seq=read_int(where, data, "seq", low=0, high=MAX_SEQ),
            prev_hash=read_hex(where, data, "prev_hash", HEX64, "64 lowercase hex digits"),
            kind=kind,
            license_id=read_hex(where, data, "license_id", HEX32, "32 lowercase hex digits"),
            # a revocation may forfeit nothing (the chain was used up); every other entry counts >= 1
            count=read_int(where, data, "count", low=0 if kind == "revoke" else 1, high=MAX_QUERIES),
            at=read_int(where, data, "at", low=0, high=MAX_EPOCH),
            ref=ref,
            nonce=read_hex(where, data, "nonce", HEX16, "16 lowercase hex digits"),
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, where: str = "ledger entry") -> LedgerEntry:
        """Parse strictly; the bytes must be the canonical encoding (so the hash is well-defined)."""
        entry = cls.from_dict(parse_json_strict(bytes(raw), where), where=where)
        if entry.to_bytes() != bytes(raw):
            raise SpecError(f"{where}: not in canonical form")
        return entry


def check_links(entries: Sequence[LedgerEntry], head_before: str, first_seq: int, *, doc: str) -> str:
    """Check that ``entries`` are consecutive from ``first_seq`` and each links to the previous
    hash starting at ``head_before``; return the last hash. Raises :class:`SpecError` naming the seq."""
    head = head_before
    for i, entry in enumerate(entries):
        if entry.seq != first_seq + i:
            raise SpecError(f"{doc}: entry {i} has seq {entry.seq}, expected {first_seq + i} (a gap or reorder)")
        if entry.prev_hash != head:
            raise SpecError(f"{doc}: entry seq {entry.seq} does not link to the previous entry's hash")
        head = entry.hash
    return head


@dataclass(frozen=True)
class UsageReport:
    device_id: str
    license_id: str
    first_seq: int
    last_seq: int
    head_before: str
    head_after: str
    licensed: int
    reserved: int
    block_remaining: int
    entries: tuple[LedgerEntry, ...]
    created_at: int
    spec_version: str = USAGE_REPORT_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: bytes | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            spec_version=self.spec_version,
            device_id=self.device_id,
            license_id=self.license_id,
            first_seq=self.first_seq,
            last_seq=self.last_seq,
            head_before=self.head_before,
            head_after=self.head_after,
            licensed=self.licensed,
            reserved=self.reserved,
            block_remaining=self.block_remaining,
            entries=[e.to_dict() for e in self.entries],
            created_at=self.created_at,
        )
        return out

    def to_bytes(self) -> bytes:
        return self.raw if self.raw is not None else canonical_json(self.to_dict())

    @classmethod
    def build(
        cls,
        *,
        device_id: str,
        entries: Sequence[LedgerEntry],
        block_remaining: int,
        created_at: int,
    ) -> UsageReport:
        """The report over ``entries`` (consecutive, linked), counts summed here; checked by the parser.
        Its ``license_id`` is the last entry's: the license in force at it."""
        if not entries:
            raise SpecError("usage report: needs at least one ledger entry")
        report = cls(
            device_id=device_id,
            license_id=entries[-1].license_id,
            first_seq=entries[0].seq,
            last_seq=entries[-1].seq,
            head_before=entries[0].prev_hash,
            head_after=entries[-1].hash,
            licensed=sum(e.count for e in entries if e.kind == "license"),
            reserved=sum(e.count for e in entries if e.kind == "reserve"),
            block_remaining=block_remaining,
            entries=tuple(entries),
            created_at=created_at,
        )
        return cls.from_dict(report.to_dict())

    @classmethod
    def from_dict(cls, data: Any, *, raw: bytes | None = None) -> UsageReport:
        doc = "usage report"
        if not isinstance(data, Mapping):
            raise SpecError(f"{doc}: must be an object, got {type(data).__name__}")
        version = check_version(doc, data, USAGE_REPORT_MAJOR)
        raw_entries = data.get("entries")
        if not isinstance(raw_entries, list) or not 1 <= len(raw_entries) <= MAX_REPORT_ENTRIES:
            raise SpecError(f"{doc}: field 'entries' must be a list of 1..{MAX_REPORT_ENTRIES} ledger entries")
        entries = tuple(LedgerEntry.from_dict(e, where=f"{doc}: entries[{i}]") for i, e in enumerate(raw_entries))
        report = cls(
            spec_version=version,
            device_id=read_hex(doc, data, "device_id", HEX16, "16 lowercase hex digits"),
            license_id=read_hex(doc, data, "license_id", HEX32, "32 lowercase hex digits"),
            first_seq=read_int(doc, data, "first_seq", low=0, high=MAX_SEQ),
            last_seq=read_int(doc, data, "last_seq", low=0, high=MAX_SEQ),
            head_before=read_hex(doc, data, "head_before", HEX64, "64 lowercase hex digits"),
            head_after=read_hex(doc, data, "head_after", HEX64, "64 lowercase hex digits"),
            licensed=read_int(doc, data, "licensed", low=0, high=MAX_QUERIES * MAX_REPORT_ENTRIES),
            reserved=read_int(doc, data, "reserved", low=0, high=MAX_QUERIES * MAX_REPORT_ENTRIES),
            block_remaining=read_int(doc, data, "block_remaining", low=0, high=MAX_QUERIES),
            entries=entries,
            created_at=read_int(doc, data, "created_at", low=0, high=MAX_EPOCH),
            extra={k: v for k, v in data.items() if k not in _REPORT_FIELDS},
            raw=raw,
        )
        if report.first_seq > report.last_seq or report.last_seq - report.first_seq + 1 != len(entries):
            raise SpecError(
                f"{doc}: seq range {report.first_seq}..{report.last_seq} does not match its {len(entries)} entries"
            )
        if report.first_seq == 0 and report.head_before != GENESIS_HASH:
            raise SpecError(f"{doc}: a report starting at seq 0 must start from the genesis hash")
        if check_links(entries, report.head_before, report.first_seq, doc=doc) != report.head_after:
            raise SpecError(f"{doc}: head_after is not the hash of entry {report.last_seq}")
        for kind, total in (("license", report.licensed), ("reserve", report.reserved)):
            actual = sum(e.count for e in entries if e.kind == kind)
            if actual != total:
                raise SpecError(f"{doc}: the {kind} entries add up to {actual}, the report says {total}")
        return report

    @classmethod
    def from_bytes(cls, raw: bytes) -> UsageReport:
        raw = bytes(raw)
        if len(raw) > MAX_REPORT_BYTES:
            raise SpecError(f"usage report: {len(raw)} bytes, more than the {MAX_REPORT_BYTES} accepted")
        return cls.from_dict(parse_json_strict(raw, "usage report"), raw=raw)


__all__ = [
    "ENTRY_KINDS",
    "GENESIS_HASH",
    "USAGE_REPORT_MAJOR",
    "USAGE_REPORT_VERSION",
    "LedgerEntry",
    "UsageReport",
    "check_links",
]
