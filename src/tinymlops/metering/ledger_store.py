"""Persistence of the usage ledger: stdlib ``sqlite3``, verified whole on every open.

One SQLite file per metered model (WAL journal, ``synchronous=FULL``: a reservation is on disk
before :meth:`LedgerStore.append` returns, so before the calls it allows run). Every write is one
transaction holding the entry and, for a license entry, the signed license it installs — for a
revoke entry, the issuer's signed revocation it writes.

One store per file at a time: an open store holds an exclusive ``flock`` on ``<ledger>.lock``, and a
second open — another host over the same directory, another process — is refused with
:class:`~tinymlops.errors.StoreError` naming the ledger. (Two stores would each replay the chain into
their own :class:`~tinymlops.metering.ledger.Ledger`: a license installed through one would not exist
for the other, and the stale one's next reservation would clash with the other's.) Closing the store,
or the process ending, releases it.

On :meth:`LedgerStore.open` every row is parsed strictly, its stored hash recomputed, every license
and revocation signature verified again with the trusted issuer keys, and the whole chain replayed
through the pure :class:`~tinymlops.metering.ledger.Ledger`. Any failure — an edited row, a deleted
or reordered row, counts that do not add up, a license or revocation whose bytes changed or whose
row is gone — raises
:class:`~tinymlops.errors.LedgerTamperedError`: the store does not open, metered predictions stay
refused, and the device must be re-licensed (it never fails open).

The limit: no key is on the chain (the hashes only link entries), so edits and deletions are caught
this way only while the hashes are left as they were. An attacker who deletes or edits rows and
recomputes every later hash builds a valid chain; what still refuses it is what the chain cannot
rewrite — the signed licenses (a license entry's count and digest, the rules a license must meet,
reservations within the licensed total) and the monotonic counter below (a chain made shorter than
the counter's seq, or with another hash at it). A reservation deleted from the middle with the
hashes recomputed is refused with the counter and accepted without it, like an older copy.

**Monotonic counter.** A chain truncated at its end, or an older copy of the file put back, is
still a valid chain: nothing inside the file can tell. :class:`MonotonicCounter` is the interface
point for something outside it that only moves forward — a TPM NV counter, a secure element, an
OS keystore. :class:`FileCounter` is the software default: a small file beside the ledger holding
the last committed ``(seq, head hash)``, replaced atomically after each commit (the counter lags
the ledger by at most the entry being written when a crash hits, which open repairs; a counter that
fails to move after a commit is caught up before anything more is written, and while it cannot be,
nothing more is). On open a counter ahead of the ledger, or naming another hash at its seq, is a
rollback and is refused.

What software alone cannot prevent: restoring a backup of the *whole* data directory (ledger and
counter file together), or copying it to a second device, gives a consistent older state that
no local check can tell from the real one. Only the server can see it — a chain that goes
backwards or forks against the usage reports it already holds (the server-side reconciliation).
A hardware counter closes the restore case locally; a patched runtime that skips the ledger
entirely is likewise only detectable after the fact (no usage reports, or reports that do not add
up against the licenses issued).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Protocol, runtime_checkable

from tinymlops.crypto.signing import TrustedKey
from tinymlops.errors import (
    InvalidInputError,
    LedgerTamperedError,
    SpecError,
    StoreError,
    UsageError,
)
from tinymlops.metering.ledger import Ledger
from tinymlops.metering.license_signing import SignedLicense, SignedRevocation, verify_license, verify_revocation
from tinymlops.spec._parse import HEX64
from tinymlops.spec.license import License, Revocation
from tinymlops.spec.usage_report import GENESIS_HASH, LedgerEntry

COUNTER_SUFFIX = ".counter"
#: the lock file beside a ledger, held while a store has it open
LOCK_SUFFIX = ".lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS licenses (license_id TEXT PRIMARY KEY, data BLOB NOT NULL, signature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS revocations (license_id TEXT PRIMARY KEY, data BLOB NOT NULL, signature BLOB NOT NULL);
"""


@runtime_checkable
class MonotonicCounter(Protocol):
    """Something outside the ledger file that only moves forward: the last committed entry.

    ``read()`` is ``(seq, head_hash)``, ``(-1, GENESIS_HASH)`` for a fresh ledger, or None when the
    counter does not exist (never created, or deleted). ``advance`` must refuse to go backwards."""

    def read(self) -> tuple[int, str] | None: ...

    def advance(self, seq: int, head: str) -> None: ...


class FileCounter:
    """The software default: ``<ledger>.counter`` holding ``"<seq> <head hash>\\n"``, replaced
    atomically (temp file, fsync, ``os.replace``, fsync of the directory)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def read(self) -> tuple[int, str] | None:
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerTamperedError(f"monotonic counter {self.path} is unreadable: {exc}", reason="counter") from None
        seq, _, head = text.strip().partition(" ")
        if not (seq == "-1" or seq.isdigit()) or not HEX64.match(head):
            raise LedgerTamperedError(f"monotonic counter {self.path} is malformed", reason="counter")
        return int(seq), head

    def advance(self, seq: int, head: str) -> None:
        current = self.read()
        if current is not None and seq < current[0]:
            raise LedgerTamperedError(
                f"monotonic counter {self.path} is at {current[0]}, refusing to move back to {seq}", reason="rollback"
            )
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{seq} {head}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class LedgerStore:
    """The ledger of one model on one device, in one SQLite file (see the module doc)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        ledger: Ledger,
        counter: MonotonicCounter | None,
        lock: IO[bytes] | None = None,
    ) -> None:
        self._conn = conn
        self.path = path
        self.ledger = ledger
        self.counter = counter
        self._lock = lock
        #: the last committed (seq, hash) the counter could not take yet (None: it is up to date)
        self.counter_behind: tuple[int, str] | None = None

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        device_id: str,
        model: str,
        trusted_issuer_keys: Iterable[TrustedKey],
        counter: MonotonicCounter | None = None,
    ) -> LedgerStore:
        """Open (or create) the ledger at ``path`` and verify all of it; return the store with its
        replayed :attr:`ledger`. ``counter`` (None: no rollback check) is checked against the chain."""
        path = Path(path)
        trusted = list(trusted_issuer_keys)
        lock = _lock(path)
        try:
            fresh = not path.exists()
            if fresh and counter is not None:
                state = counter.read()
                if state is not None and state[0] >= 0:
                    raise LedgerTamperedError(
                        f"ledger {path} is missing, but the monotonic counter says it held {state[0] + 1} entries: "
                        "it was deleted; re-license the device",
                        reason="rollback",
                    )
                if state is None:
                    counter.advance(-1, GENESIS_HASH)  # exists before the first entry can
            try:
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
            except sqlite3.OperationalError as exc:  # the environment: locked, no space, no access
                raise StoreError(f"cannot open the usage ledger {path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:  # the file itself: overwritten or corrupt
                raise LedgerTamperedError(
                    f"usage ledger {path} is not a readable SQLite database (overwritten or corrupt: {exc})",
                    reason="unreadable",
                ) from None
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open the usage ledger {path}: {exc}") from exc
            try:
                ledger, entries = cls._load(conn, path, device_id, model, trusted)
                if counter is not None:
                    cls._check_counter(counter, entries, ledger, path)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            lock.close()
            raise
        return cls(conn, path, ledger, counter, lock)

    @staticmethod
    def _load(
        conn: sqlite3.Connection, path: Path, device_id: str, model: str, trusted: list[TrustedKey]
    ) -> tuple[Ledger, list[LedgerEntry]]:
        """The replayed ledger and the entries it was replayed from (every row parsed and checked)."""
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [("device_id", device_id), ("model", model)])
                conn.execute("COMMIT")
                meta = {"device_id": device_id, "model": model}
            rows = conn.execute("SELECT seq, body, hash FROM entries ORDER BY seq").fetchall()
            lic_rows = conn.execute("SELECT license_id, data, signature FROM licenses").fetchall()
            rev_rows = conn.execute("SELECT license_id, data, signature FROM revocations").fetchall()
        except sqlite3.Error as exc:
            raise LedgerTamperedError(f"usage ledger {path} is unreadable: {exc}", reason="unreadable") from None
        if meta.get("device_id") != device_id or meta.get("model") != model:
            raise LedgerTamperedError(
                f"usage ledger {path} belongs to device {meta.get('device_id')} / model {meta.get('model')}, "
                f"not {device_id} / {model} (copied from another device?)",
                reason="other-device",
            )
        entries = []
        for seq, body, digest in rows:
            try:
                entry = LedgerEntry.from_bytes(bytes(body), where=f"ledger entry seq {seq}")
            except (SpecError, TypeError) as exc:
                raise LedgerTamperedError(f"usage ledger {path}: {exc}", reason="malformed-row", seq=seq) from None
            if entry.seq != seq or entry.hash != digest:
                raise LedgerTamperedError(
                    f"usage ledger {path}: row seq {seq} does not hash to what it stores (edited)",
                    reason="bad-hash",
                    seq=seq,
                )
            entries.append(entry)
        licenses: dict[str, License] = {}
        for license_id, data, signature in lic_rows:
            try:
                lic = verify_license(SignedLicense(bytes(data), bytes(signature)), trusted)
            except InvalidInputError as exc:
                raise LedgerTamperedError(
                    f"usage ledger {path}: stored license {license_id} does not verify: {exc.message}",
                    reason="license-signature",
                ) from None
            if lic.license_id != license_id:
                raise LedgerTamperedError(
                    f"usage ledger {path}: license row {license_id} holds another license", reason="license-mismatch"
                )
            licenses[license_id] = lic
        revocations: dict[str, Revocation] = {}
        for license_id, data, signature in rev_rows:
            try:
                rev = verify_revocation(SignedRevocation(bytes(data), bytes(signature)), trusted)
            except InvalidInputError as exc:
                raise LedgerTamperedError(
                    f"usage ledger {path}: stored revocation of license {license_id} does not verify: {exc.message}",
                    reason="revocation-signature",
                ) from None
            if rev.license_id != license_id:
                raise LedgerTamperedError(
                    f"usage ledger {path}: revocation row {license_id} holds the revocation of another license",
                    reason="revocation-mismatch",
                )
            revocations[license_id] = rev
        return Ledger.replay(device_id, model, entries, licenses, revocations), entries

    @staticmethod
    def _check_counter(counter: MonotonicCounter, entries: list[LedgerEntry], ledger: Ledger, path: Path) -> None:
        state = counter.read()
        last = ledger.next_seq - 1
        if state is None:
            raise LedgerTamperedError(
                f"the monotonic counter of {path} is missing while the ledger exists: cannot rule out a restored "
                "copy; re-license the device",
                reason="counter-missing",
            )
        seq, head = state
        if seq > last:
            raise LedgerTamperedError(
                f"usage ledger {path} ends at seq {last}, but the monotonic counter is at {seq}: an older copy was "
                "restored or entries were deleted; re-license the device",
                reason="rollback",
                seq=last + 1,
            )
        if seq >= 0 and entries[seq].hash != head:  # replay checked entries[i].seq == i
            raise LedgerTamperedError(
                f"usage ledger {path}: entry seq {seq} is not the one the monotonic counter recorded "
                "(an older copy was restored and written on)",
                reason="rollback",
                seq=seq,
            )
        if seq < last:  # a crash between the commit and the counter: catch up
            counter.advance(last, ledger.head)

    # --- writing ---------------------------------------------------------------------------------
    def append(self, entry: LedgerEntry, signed: SignedLicense | SignedRevocation | None = None) -> None:
        """Write ``entry`` (and the signed license it installs, or the signed revocation it writes)
        durably, in one transaction, then move the counter. The ledger state is not touched: the
        caller applies the entry once this returns.

        Raises :class:`StoreError` when nothing was written — the transaction failed, or the counter
        still lags an earlier entry and cannot be caught up (nothing more is written past a counter
        that cannot follow). When the entry is committed but the counter then cannot move, it raises
        :class:`StoreError` with ``committed=True``: the entry is durable and must be applied (the
        counter is caught up before the next write, or when the ledger is next opened)."""
        expected = {"license": SignedLicense, "revoke": SignedRevocation}.get(entry.kind)
        if (expected is None) != (signed is None) or (expected is not None and not isinstance(signed, expected)):
            raise UsageError(
                f"a {entry.kind} entry is stored with "
                + ("no signed document" if expected is None else f"its {expected.__name__}")
                + f", got {type(signed).__name__}"
            )
        table = "licenses" if entry.kind == "license" else "revocations"
        if self.counter_behind is not None:
            self._advance_counter(*self.counter_behind, committed=False)
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO entries (seq, body, hash) VALUES (?, ?, ?)", (entry.seq, entry.to_bytes(), entry.hash)
                )
                if signed is not None:
                    self._conn.execute(
                        f"INSERT INTO {table} (license_id, data, signature) VALUES (?, ?, ?)",
                        (entry.license_id, signed.data, signed.signature),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # the error that matters is the one above
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the usage ledger {self.path}: {exc}") from exc
        self._advance_counter(entry.seq, entry.hash, committed=True)

    def _advance_counter(self, seq: int, head: str, *, committed: bool) -> None:
        if self.counter is None:
            return
        try:
            self.counter.advance(seq, head)
        except (OSError, LedgerTamperedError) as exc:
            self.counter_behind = (seq, head)
            what = f"entry seq {seq} is written, but" if committed else "nothing written:"
            raise StoreError(
                f"usage ledger {self.path}: {what} the monotonic counter cannot move to seq {seq} "
                f"({getattr(exc, 'message', None) or exc})",
                committed=committed,
            ) from exc
        self.counter_behind = None

    def bodies(self, since_seq: int = 0, *, limit: int | None = None) -> list[bytes]:
        """The stored bytes of the entries from ``since_seq`` on, in order, at most ``limit`` of them
        (None: all). Unparsed: cheap enough to read under a caller's lock, parsed outside it."""
        rows = self._conn.execute(
            "SELECT body FROM entries WHERE seq >= ? ORDER BY seq LIMIT ?", (since_seq, -1 if limit is None else limit)
        ).fetchall()
        return [bytes(body) for (body,) in rows]

    def entries(self, since_seq: int = 0, *, limit: int | None = None) -> list[LedgerEntry]:
        """The entries from ``since_seq`` on, in order, at most ``limit`` of them (None: all)."""
        return [LedgerEntry.from_bytes(body) for body in self.bodies(since_seq, limit=limit)]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock: another store may open the ledger now
            self._lock = None


def _lock(path: Path) -> IO[bytes]:
    """Create the ledger's directory and take its lock file (see the module doc). The open file holds
    the lock: closed (or garbage-collected with a store nobody closed), it releases it."""
    lock_path = path.with_name(path.name + LOCK_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "ab")  # noqa: SIM115 - held open for the store's life
    except OSError as exc:
        raise StoreError(f"cannot open the usage ledger {path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StoreError(
            f"usage ledger {path} is in use by another meter (another MeteringHost over the same directory, or "
            "another process): one meter per ledger file"
        ) from None
    return fh


def default_counter(ledger_path: Path | str) -> FileCounter:
    """The file counter beside a ledger file."""
    p = Path(ledger_path)
    return FileCounter(p.with_name(p.name + COUNTER_SUFFIX))


__all__ = ["COUNTER_SUFFIX", "LOCK_SUFFIX", "FileCounter", "LedgerStore", "MonotonicCounter", "default_counter"]
