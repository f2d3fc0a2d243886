"""Restoring an older copy of the ledger (or deleting it, or truncating its tail) to regain queries:
refused when a monotonic counter is present; without one the older copy is a valid chain and is
accepted — only the server's reconciliation of usage reports can catch it (see ledger_store's doc)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metering_world import Clock, Issuer
from tinymlops.errors import LedgerTamperedError, QuotaExceededError
from tinymlops.metering import FileCounter, Meter
from tinymlops.spec.usage_report import LedgerEntry


@pytest.fixture
def setup(tmp_path: Path):
    issuer, device, clock = Issuer(), Ed25519PrivateKey.generate(), Clock()
    path = tmp_path / "tiny.ledger.sqlite3"
    signed = issuer.signed(device, queries=16)

    def open_meter(counter: bool) -> Meter:
        return Meter.open(
            path, "tiny", device_key=device, trusted_issuer_keys=[issuer.public], block=4, clock=clock, counter=counter
        )

    return path, signed, open_meter


def use(meter: Meter, n: int) -> None:
    for _ in range(n):
        meter.authorize()


@pytest.mark.parametrize("counter", [True, False])
def test_restoring_an_older_copy(setup, tmp_path: Path, counter: bool) -> None:
    path, signed, open_meter = setup
    meter = open_meter(counter)
    meter.install(signed)
    use(meter, 4)
    meter.close()
    shutil.copy(path, tmp_path / "backup.sqlite3")  # a backup of the ledger file alone
    meter = open_meter(counter)
    use(meter, 12)
    with pytest.raises(QuotaExceededError):
        meter.authorize()
    meter.close()
    shutil.copy(tmp_path / "backup.sqlite3", path)
    if counter:
        with pytest.raises(LedgerTamperedError, match="older copy") as info:
            open_meter(counter)
        assert info.value.details["reason"] == "rollback"
    else:
        meter = open_meter(counter)  # a valid (older) chain: accepted here, the server will see it go back
        assert meter.remaining == 12
        meter.close()


def test_a_restored_copy_written_on_is_a_fork_the_counter_catches(setup, tmp_path: Path) -> None:
    path, signed, open_meter = setup
    meter = open_meter(True)
    meter.install(signed)
    use(meter, 4)
    meter.close()
    shutil.copy(path, tmp_path / "backup.sqlite3")
    meter = open_meter(True)
    use(meter, 8)  # seq 3
    meter.close()
    shutil.copy(tmp_path / "backup.sqlite3", path)
    # the attacker appends with the counter out of the way, then puts the counter back
    counter_file = path.with_name(path.name + ".counter")
    saved = counter_file.read_bytes()
    counter_file.unlink()
    with pytest.raises(LedgerTamperedError, match="counter"):
        open_meter(True)
    meter = open_meter(False)
    use(meter, 8)  # the forked chain also reaches seq 3, with other hashes
    meter.close()
    counter_file.write_bytes(saved)
    with pytest.raises(LedgerTamperedError, match="not the one the monotonic counter recorded"):
        open_meter(True)


def test_truncating_the_tail_or_deleting_the_ledger_is_caught_by_the_counter(setup) -> None:
    path, signed, open_meter = setup
    meter = open_meter(True)
    meter.install(signed)
    use(meter, 9)
    meter.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DELETE FROM entries WHERE seq = (SELECT MAX(seq) FROM entries)")
    conn.close()
    with pytest.raises(LedgerTamperedError, match="older copy was restored or entries were deleted"):
        open_meter(True)
    path.unlink()
    for extra in ("-wal", "-shm"):
        path.with_name(path.name + extra).unlink(missing_ok=True)
    with pytest.raises(LedgerTamperedError, match="deleted"):
        open_meter(True)  # a fresh ledger to reinstall the same license on: refused


@pytest.mark.parametrize("counter", [True, False])
def test_a_middle_reservation_deleted_with_every_hash_recomputed(setup, counter: bool) -> None:
    """No key is on the chain: deleting a row and relinking/rehashing the rest gives a valid, shorter
    chain. The counter (ahead of it) refuses it; without one it opens, with the deleted block regained."""
    path, signed, open_meter = setup
    meter = open_meter(counter)
    meter.install(signed)
    use(meter, 12)  # seq 1, 2, 3: three blocks of 4
    meter.close()
    conn = sqlite3.connect(path)
    rows = [LedgerEntry.from_bytes(b) for (b,) in conn.execute("SELECT body FROM entries ORDER BY seq")]
    del rows[2]
    head = "0" * 64
    with conn:
        conn.execute("DELETE FROM entries")
        for seq, e in enumerate(rows):
            e = LedgerEntry(seq, head, e.kind, e.license_id, e.count, e.at, e.ref, e.nonce)
            conn.execute("INSERT INTO entries (seq, body, hash) VALUES (?, ?, ?)", (seq, e.to_bytes(), e.hash))
            head = e.hash
    conn.close()
    if counter:
        with pytest.raises(LedgerTamperedError, match="entries were deleted") as info:
            open_meter(counter)
        assert info.value.details["reason"] == "rollback"
    else:
        meter = open_meter(counter)  # accepted here: only the server's reconciliation can see it
        assert meter.remaining == 16 - 8
        meter.close()


def test_the_file_counter_refuses_to_move_back(tmp_path: Path) -> None:
    counter = FileCounter(tmp_path / "tiny.ledger.sqlite3.counter")
    counter.advance(-1, "0" * 64)
    counter.advance(5, "a" * 64)
    with pytest.raises(LedgerTamperedError, match="refusing to move back") as info:
        counter.advance(4, "b" * 64)
    assert info.value.details["reason"] == "rollback"
    assert counter.read() == (5, "a" * 64)  # unchanged
    counter.advance(5, "c" * 64)  # the same seq again (open's catch-up after a crash) is allowed
    assert counter.read() == (5, "c" * 64)
