"""Attacks on the device's usage ledger file: edited rows, deleted rows, a swapped license, a ledger
copied from another device, a clock set back. Each is refused with a clear error and never fails open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import T0, Clock, Issuer
from tinymlops.errors import LedgerTamperedError, LicenseExpiredError, QuotaExceededError
from tinymlops.metering import Meter
from tinymlops.spec.usage_report import LedgerEntry


@pytest.fixture
def used(tmp_path: Path):
    """A ledger with a 100-query license, 3 blocks of 8 reserved (20 calls served), closed."""
    issuer, device, clock = Issuer(), Ed25519PrivateKey.generate(), Clock()
    path = tmp_path / "tiny.ledger.sqlite3"

    def open_meter(key: Ed25519PrivateKey = device, counter: bool = False) -> Meter:
        return Meter.open(
            path, "tiny", device_key=key, trusted_issuer_keys=[issuer.public], block=8, clock=clock, counter=counter
        )

    meter = open_meter()
    first = meter.install(issuer.signed(device, queries=100))
    for i in range(20):
        clock.now = T0 + i
        meter.authorize()
    meter.close()
    return issuer, device, clock, path, open_meter, first


def sql(path: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(statement, args)
    conn.close()


def refused(open_meter, reason: str) -> LedgerTamperedError:
    with pytest.raises(LedgerTamperedError) as info:
        open_meter()
    assert info.value.details["reason"] == reason, info.value.message
    return info.value


def test_the_untouched_ledger_opens_and_lost_the_open_block_only(used) -> None:
    *_, open_meter, _ = used
    meter = open_meter()
    assert meter.remaining == 100 - 24  # 20 served + 4 left in the block at close: lost, never regained
    meter.close()


def test_an_edited_count_is_refused(used) -> None:
    *_, path, open_meter, _first = used
    conn = sqlite3.connect(path)
    (body,) = conn.execute("SELECT body FROM entries WHERE seq = 2").fetchone()
    conn.close()
    entry = LedgerEntry.from_bytes(body)
    forged = LedgerEntry(entry.seq, entry.prev_hash, entry.kind, entry.license_id, 1, entry.at, entry.ref, entry.nonce)
    # the attacker rewrites body and hash consistently: the next entry's link still breaks
    sql(path, "UPDATE entries SET body = ?, hash = ? WHERE seq = 2", forged.to_bytes(), forged.hash)
    refused(open_meter, "broken-link")
    # body edited without the hash column: the row does not hash to what it stores
    sql(path, "UPDATE entries SET body = ? WHERE seq = 2", entry.to_bytes().replace(b'"count":8', b'"count":7'))
    refused(open_meter, "bad-hash")


def test_the_whole_chain_rewritten_consistently_is_caught_by_the_license_count(used) -> None:
    *_, path, open_meter, _first = used
    conn = sqlite3.connect(path)
    rows = [LedgerEntry.from_bytes(b) for (b,) in conn.execute("SELECT body FROM entries ORDER BY seq")]
    conn.close()
    # rebuild every hash with a bigger license count: the signed license still says 100
    head, fixed = "0" * 64, []
    for e in rows:
        count = 10**6 if e.kind == "license" else e.count
        e = LedgerEntry(e.seq, head, e.kind, e.license_id, count, e.at, e.ref, e.nonce)
        fixed.append(e)
        head = e.hash
    for e in fixed:
        sql(path, "UPDATE entries SET body = ?, hash = ? WHERE seq = ?", e.to_bytes(), e.hash, e.seq)
    refused(open_meter, "counts")


def test_a_deleted_row_in_the_middle_is_refused(used) -> None:
    *_, path, open_meter, _ = used
    sql(path, "DELETE FROM entries WHERE seq = 1")
    refused(open_meter, "sequence-gap")


def test_a_deleted_or_swapped_license_is_refused(used) -> None:
    issuer, device, _, path, open_meter, _first = used
    other = issuer.signed(device, queries=10**6)
    sql(path, "UPDATE licenses SET data = ?, signature = ?", other.data, other.signature)
    assert "holds another license" in refused(open_meter, "license-mismatch").message
    other_id = other.data.split(b'"license_id":"')[1][:32].decode()
    sql(path, "UPDATE licenses SET license_id = ?", other_id)
    assert "missing or differ" in refused(open_meter, "license-mismatch").message
    sql(path, "UPDATE licenses SET signature = ?", b"\x00" * 64)
    refused(open_meter, "license-signature")
    sql(path, "DELETE FROM licenses")
    refused(open_meter, "license-mismatch")


def test_a_ledger_copied_from_another_device_is_refused(used) -> None:
    *_, open_meter, _ = used
    with pytest.raises(LedgerTamperedError, match="another device") as info:
        open_meter(key=Ed25519PrivateKey.generate())
    assert info.value.details["reason"] == "other-device"


def test_clock_set_back_is_refused_across_a_restart(used) -> None:
    _, _, clock, _, open_meter, _ = used
    clock.now = T0 + 5  # before the last reservation (T0 + 16)
    meter = open_meter()
    with pytest.raises(LicenseExpiredError, match="set back") as info:
        meter.authorize()
    assert info.value.details["reason"] == "clock-set-back"
    clock.now = T0 + 30
    meter.authorize()  # the right time again: served
    meter.close()


def _rewrite(path: Path, entries: list[LedgerEntry]) -> None:
    """Replace every row with ``entries``, relinked and rehashed consistently (no key on the chain)."""
    head, conn = "0" * 64, sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM entries")
        for seq, e in enumerate(entries):
            e = LedgerEntry(seq, head, e.kind, e.license_id, e.count, e.at, e.ref, e.nonce)
            conn.execute("INSERT INTO entries (seq, body, hash) VALUES (?, ?, ?)", (seq, e.to_bytes(), e.hash))
            head = e.hash
    conn.close()


def _rows(path: Path) -> list[LedgerEntry]:
    conn = sqlite3.connect(path)
    rows = [LedgerEntry.from_bytes(b) for (b,) in conn.execute("SELECT body FROM entries ORDER BY seq")]
    conn.close()
    return rows


@pytest.mark.parametrize("counter", [False, True])
def test_a_repeated_license_entry_in_a_rewritten_chain_does_not_double_the_quota(tmp_path: Path, counter: bool) -> None:
    issuer, device, clock = Issuer(), Ed25519PrivateKey.generate(), Clock()
    path = tmp_path / "tiny.ledger.sqlite3"

    def open_meter() -> Meter:
        return Meter.open(
            path, "tiny", device_key=device, trusted_issuer_keys=[issuer.public], block=8, clock=clock, counter=counter
        )

    meter = open_meter()
    meter.install(issuer.signed(device, queries=100))
    for _ in range(100):
        meter.authorize()
    with pytest.raises(QuotaExceededError):
        meter.authorize()
    meter.close()
    rows = _rows(path)
    _rewrite(path, [rows[0], rows[0], *rows[1:]])  # the license entry repeated, every hash recomputed
    if counter:  # the plain counter file is rewritten to the forged head as well
        forged = _rows(path)[-1]
        path.with_name(path.name + ".counter").write_text(f"{forged.seq} {forged.hash}\n", encoding="ascii")
    with pytest.raises(LedgerTamperedError) as info:
        open_meter()  # before the fix: limit 200, 100 more calls served
    assert info.value.details["reason"] == "duplicate-license", info.value.message
