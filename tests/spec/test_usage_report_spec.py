"""UsageReport v1 and ledger entries: strict parsing, canonical bytes, links and sums checked."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymlops.errors import SpecError, UnsupportedVersionError
from tinymlops.spec.usage_report import GENESIS_HASH, LedgerEntry, UsageReport

LIC = "ab" * 16


def chain(counts: list[int]) -> list[LedgerEntry]:
    out, head = [], GENESIS_HASH
    for i, n in enumerate(counts):
        kind = "license" if i == 0 else "reserve"
        e = LedgerEntry(i, head, kind, LIC, n, 1000 + i, "cd" * 32 if kind == "license" else None)
        out.append(e)
        head = e.hash
    return out


def report(counts: list[int], start: int = 0) -> UsageReport:
    entries = chain(counts)[start:]
    return UsageReport.build(device_id="0123456789abcdef", entries=entries, block_remaining=3, created_at=2000)


def test_round_trip_and_sums() -> None:
    r = report([100, 10, 10, 5])
    assert (r.licensed, r.reserved, r.first_seq, r.last_seq) == (100, 25, 0, 3)
    again = UsageReport.from_bytes(r.to_bytes())
    assert again == r and again.to_bytes() == r.to_bytes()
    tail = report([100, 10, 10, 5], start=2)
    assert tail.head_before == chain([100, 10, 10])[1].hash and tail.licensed == 0


def test_unknown_top_level_fields_kept_major_refused() -> None:
    doc = report([5, 5]).to_dict()
    doc["hint"] = "x"
    assert UsageReport.from_bytes(json.dumps(doc).encode()).extra == {"hint": "x"}
    doc["spec_version"] = "2.0"
    with pytest.raises(UnsupportedVersionError):
        UsageReport.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(reserved=d["reserved"] + 1), "add up"),
        (lambda d: d.update(head_after="1" * 64), "head_after"),
        (lambda d: d["entries"][1].update(count=99), "link"),
        (lambda d: d["entries"].pop(1), "seq"),
        (lambda d: d["entries"][0].update(extra=1), "unknown"),
        (lambda d: d["entries"][1].update(ref="cd" * 32), "null"),
        (lambda d: d.update(head_before="1" * 64), "genesis"),
    ],
)
def test_inconsistent_reports_are_refused(mutate, match: str) -> None:
    doc = report([50, 10, 10]).to_dict()
    mutate(doc)
    with pytest.raises(SpecError, match=match):
        UsageReport.from_bytes(json.dumps(doc).encode())


def test_entry_must_be_canonical() -> None:
    e = chain([5])[0]
    assert LedgerEntry.from_bytes(e.to_bytes()) == e
    with pytest.raises(SpecError, match="canonical"):
        LedgerEntry.from_bytes(json.dumps(e.to_dict(), indent=1).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_only_raises_spec_error(data: bytes) -> None:
    with pytest.raises(SpecError):
        UsageReport.from_bytes(data)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=30), st.data())
def test_any_chain_reports_round_trip_and_any_single_change_is_caught(counts: list[int], data) -> None:
    r = report(counts, start=data.draw(st.integers(0, len(counts) - 1)))
    assert UsageReport.from_bytes(r.to_bytes()) == r
    doc = r.to_dict()
    i = data.draw(st.integers(0, len(doc["entries"]) - 1))
    doc["entries"][i]["count"] += 1
    with pytest.raises(SpecError):
        UsageReport.from_bytes(json.dumps(doc).encode())
