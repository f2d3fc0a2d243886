"""The device's upload store: closed telemetry windows wait here, bounded, until a batch carrying them
is acknowledged by the server.

One SQLite file (standard library ``sqlite3``, WAL, every write one transaction) holds:

* **windows** — each window exactly as the recorder closed it
  (``take_window(privatize_histograms=False)``), with the privacy policy of its bundle. The store is
  bounded by ``max_windows`` and ``max_bytes`` (of the windows' canonical JSON): when a new window
  takes it over either, the **two oldest windows of the same bundle are merged**
  (:func:`~tinymlops.observe.windows.merge_windows`: counts add, sketches merge) into one coarser
  window — the bundle whose oldest window is the oldest goes first. Only when no bundle has two
  windows left is the oldest window dropped; merges and drops are counted and go out in the next
  batch's :class:`~tinymlops.spec.telemetry.StoreStatus`, never silently.
* **the batch in flight** — :meth:`UploadStore.next_batch` takes up to ``MAX_WINDOWS`` of the oldest
  windows, **privatizes** their histograms (:func:`~tinymlops.observe.privacy.privatize`, spending
  from the bundle's :class:`~tinymlops.observe.privacy.EpsilonBudget`), seals the batch with the
  device key (:func:`~tinymlops.observe.sealing.seal_batch`) and keeps the exact sealed bytes, in
  the same transaction as the budget spend. Until :meth:`~UploadStore.acknowledge` (the server took
  it, or answered that it already has that digest) or :meth:`~UploadStore.refuse` (the server
  refused it for good: its windows are dropped and counted), every call returns the same bytes — a
  retry after a lost response has the same digest, which the server merges once.
* **epsilon budgets** — one per bundle (the unit of privacy is one prediction, and a prediction
  belongs to one bundle), persisted, so a restarted device does not get a fresh budget. A histogram
  is released only when its spend is durable: when the spend cannot be written, the batch goes with
  those histograms withheld instead. A store that could never read its budgets (its file cannot be
  opened) treats every budget as spent.
* **the send log** — ``(at, bytes)`` of the compressed bodies put on the wire, for the upload
  policy's rolling 24-hour cap (:mod:`tinymlops.observe.upload_policy`).

**When storage fails** (``database or disk is full`` — the file may also be capped with
``max_file_bytes``, SQLite's ``max_page_count`` — a read-only file, a directory that is gone): no
method raises for it. Windows wait in memory instead (at most ``memory_windows``, with the same
merge-then-drop rule), batches are made from them, and the condition goes out as
``StoreStatus(status="full" | "unwritable", error=…)`` in the next batch (a condition that cleared
since is still reported once). Every operation first tries the file again, and moves the windows
held in memory into it when it can. A write that fails leaves the file as it was (one transaction),
so nothing is half-written. A file replaced or deleted under the store is noticed (by its inode) and
reopened; each file carries a random id (in ``meta``), and when the reopened file is another one,
the row ids and counts known from the old file are forgotten (the batch in flight keeps its bytes
and may still be acknowledged) — nothing of the new file is deleted or subtracted in their name.

Thread-safe (one lock). In the edge closure: the standard library, numpy, datasketches and
``cryptography``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.crypto.keys import key_id
from tinymlops.errors import PayloadTooLargeError, SpecError, TinyMLOpsError, UsageError
from tinymlops.observe.privacy import EpsilonBudget, PrivacyPolicy, privatize
from tinymlops.observe.sealing import seal_batch, upload_headers
from tinymlops.observe.upload_policy import DAY_S
from tinymlops.observe.windows import merge_windows
from tinymlops.spec.telemetry import (
    MAX_STORE_ERROR_CHARS,
    MAX_WINDOWS,
    StoreStatus,
    TelemetryBatch,
    TelemetryWindow,
    canonical_json,
)

log = logging.getLogger("tinymlops.observe.upload_store")

SCHEMA_VERSION = 1
DEFAULT_MAX_WINDOWS = 256
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
#: windows kept in memory while the file cannot take them
DEFAULT_MEMORY_WINDOWS = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle_id TEXT NOT NULL,
    window_start REAL NOT NULL,
    window_end REAL NOT NULL,
    requests INTEGER NOT NULL,
    size INTEGER NOT NULL,          -- bytes of doc
    privacy TEXT NOT NULL,          -- the bundle's PrivacyPolicy as JSON
    doc BLOB NOT NULL,              -- the exact window, canonical JSON
    batch TEXT                      -- digest of the batch in flight that carries it (NULL: waiting)
);
CREATE INDEX IF NOT EXISTS ix_windows_waiting ON windows (batch, window_start, id);
CREATE TABLE IF NOT EXISTS batches (
    digest TEXT PRIMARY KEY,
    body BLOB NOT NULL,             -- the gzip body exactly as sealed
    signature TEXT NOT NULL,
    payload_bytes INTEGER NOT NULL,
    windows INTEGER NOT NULL,
    merged INTEGER NOT NULL,        -- the merged/dropped counts it reports (subtracted when acknowledged)
    dropped INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS budgets (bundle_id TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sends (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, bytes INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class PendingBatch:
    """A sealed batch waiting for the server's answer: the exact bytes to send (again)."""

    digest: str
    body: bytes
    signature: str
    payload_bytes: int
    windows: int
    requests: int

    def headers(self) -> dict[str, str]:
        return upload_headers(self.signature)


@dataclass
class _Held:
    """A window waiting in memory (the file could not take it)."""

    window: TelemetryWindow
    privacy: PrivacyPolicy
    doc: bytes  # the window's canonical JSON

    @property
    def size(self) -> int:
        return len(self.doc)


@dataclass
class _Candidate:
    window: TelemetryWindow
    privacy: PrivacyPolicy
    row: int | None = None  # its row in the file, or None: held in memory
    held: _Held | None = None


@dataclass
class _Inflight:
    batch: PendingBatch
    rows: list[int]
    held: list[_Held]
    merged: int
    dropped: int
    problem: tuple[str, str] | None = None
    marked: bool = False  # its rows carry its digest in the file


@dataclass
class _Counters:
    merged: int = 0
    dropped: int = 0


@dataclass
class _Memory:
    """What the file does not hold (yet): windows, counter deltas, sends, deletions to redo."""

    held: list[_Held] = field(default_factory=list)
    counters: _Counters = field(default_factory=_Counters)
    sends: list[tuple[float, int]] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)  # digests of finished batches whose rows remain
    forget_rows: list[int] = field(default_factory=list)  # rows of finished batches never marked


class _ExhaustedBudget(EpsilonBudget):
    """A budget whose state is unknown (the file could not be read): it allows nothing."""

    def can_spend(self, epsilon: float, at: float) -> bool:
        return False


def _policy_json(policy: PrivacyPolicy) -> str:
    return json.dumps(asdict(policy), sort_keys=True)


def _exact(window: TelemetryWindow) -> bool:
    p = window.privacy
    return not p.withheld and all(h is None or h.mechanism == "none" for h in (p.classes, p.confidence))


def _classify(exc: BaseException) -> tuple[str, str]:
    """("full" | "unwritable", a short error) for a storage failure."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc) or type(exc).__name__
    status = "full" if name.startswith("SQLITE_FULL") or "is full" in text else "unwritable"
    return status, f"{text} ({name})" if name and name not in text else text


class UploadStore:
    """The bounded upload store of one device (see the module doc).

    ``signing_key`` is the device's Ed25519 key (batches are sealed with it; the batch's
    ``device_id`` is its key id); ``clock`` stamps batches and sends; ``rng`` is for tests of the
    privacy step (default: fresh randomness per release)."""

    def __init__(
        self,
        path: Path | str,
        signing_key: Ed25519PrivateKey,
        *,
        max_windows: int = DEFAULT_MAX_WINDOWS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_file_bytes: int | None = None,
        memory_windows: int = DEFAULT_MEMORY_WINDOWS,
        clock: Callable[[], float] = time.time,
        rng: np.random.Generator | None = None,
    ) -> None:
        for name, value, low in (("max_windows", max_windows, 1), ("max_bytes", max_bytes, 1024)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(memory_windows, bool) or not isinstance(memory_windows, int) or memory_windows < 1:
            raise UsageError(f"memory_windows must be a positive integer, got {memory_windows!r}")
        if max_file_bytes is not None and (
            isinstance(max_file_bytes, bool) or not isinstance(max_file_bytes, int) or max_file_bytes < 16 * 1024
        ):
            raise UsageError(f"max_file_bytes must be None or an integer >= 16384, got {max_file_bytes!r}")
        self.path = Path(path)
        self.device_id = key_id(signing_key)
        self._key = signing_key
        self.max_windows = max_windows
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.memory_windows = memory_windows
        self.clock = clock
        self.rng = rng
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._file_id: str | None = None  # the random id of the file the row ids below belong to
        self._loaded = False  # the file was read at least once: the budgets in memory are authoritative
        self._budgets: dict[str, EpsilonBudget] = {}
        self._inflight: _Inflight | None = None
        self._mem = _Memory()
        self._problem: tuple[str, str] | None = None  # the storage condition now
        self._reported: tuple[str, str] | None = None  # a condition seen since the last batch went out
        with self._lock:
            self._ensure()

    # --- the file ---------------------------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        status, error = _classify(exc)
        problem = (status, error[:MAX_STORE_ERROR_CHARS])
        if problem != self._problem:
            log.warning("telemetry upload store %s is %s: %s", self.path, status, error)
        self._problem = self._reported = problem
        if self._problem[0] == "unwritable":
            self._close_conn()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(sqlite3.Error):
                conn.close()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _ensure(self) -> bool:
        """The file is open (opened again if it was replaced or could not be opened before)."""
        if self._conn is not None:
            if self._file_identity() == self._inode:
                return True
            # replaced or deleted: empty the old file's log into it (through the handle still open), so
            # the new file at this path does not replay the stale log over its own pages
            with suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._close_conn()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            return False
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if self.max_file_bytes is not None:
                page = int(conn.execute("PRAGMA page_size").fetchone()[0])
                conn.execute(f"PRAGMA max_page_count = {max(4, self.max_file_bytes // page)}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif row[0] != str(SCHEMA_VERSION):
                    raise sqlite3.DatabaseError(f"schema version {row[0]}, this build reads {SCHEMA_VERSION}")
                row = conn.execute("SELECT value FROM meta WHERE key = 'file_id'").fetchone()
                file_id = secrets.token_hex(16) if row is None else str(row[0])
                if row is None:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('file_id', ?)", (file_id,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._conn = conn
            self._inode = self._file_identity()
            previous, self._file_id = self._file_id, file_id
            if previous is not None and file_id != previous:
                self._forget_old_file()
            self._load()
        except (sqlite3.Error, OSError) as exc:
            self._conn = conn
            self._fail(exc)
            self._close_conn()
            return False
        self._problem = None
        return True

    def _forget_old_file(self) -> None:
        """The file was replaced or deleted: row ids (and the counts in its meta) known from the old
        file mean nothing in this one. The batch in flight keeps its bytes (it may still be sent and
        acknowledged from memory) but no longer names rows or counts to delete or subtract here."""
        log.warning("telemetry upload store %s was replaced or deleted: reopened", self.path)
        inflight = self._inflight
        if inflight is not None:
            inflight.rows = []
            inflight.merged = inflight.dropped = 0
        self._mem.forget_rows = []

    def _load(self) -> None:
        """Budgets and the batch in flight from the file (memory keeps what is newer)."""
        conn = self._conn
        assert conn is not None
        for bundle_id, state in conn.execute("SELECT bundle_id, state FROM budgets").fetchall():
            if bundle_id in self._budgets and self._loaded:
                continue
            try:
                self._budgets[bundle_id] = EpsilonBudget.from_dict(json.loads(state))
            except (SpecError, ValueError):
                log.warning("the epsilon budget of bundle %s is unreadable: treated as spent", bundle_id)
                self._budgets[bundle_id] = _ExhaustedBudget(1.0, 1.0)
        self._loaded = True
        if self._inflight is None:
            row = conn.execute(
                "SELECT digest, body, signature, payload_bytes, windows, merged, dropped FROM batches "
                "ORDER BY created_at LIMIT 1"
            ).fetchone()
            if row is not None:
                digest, body, signature, payload_bytes, n, merged, dropped = row
                rows = [r for (r,) in conn.execute("SELECT id FROM windows WHERE batch = ? ORDER BY id", (digest,))]
                requests = conn.execute(
                    "SELECT COALESCE(SUM(requests), 0) FROM windows WHERE batch = ?", (digest,)
                ).fetchone()[0]
                batch = PendingBatch(digest, bytes(body), signature, payload_bytes, n, int(requests))
                self._inflight = _Inflight(batch, rows, [], merged, dropped, marked=True)
            # rows marked for a batch whose bytes were never written: they wait again
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "UPDATE windows SET batch = NULL "
                    "WHERE batch IS NOT NULL AND batch NOT IN (SELECT digest FROM batches)"
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _txn(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        assert conn is not None
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
            self._problem = None  # a write went through: whatever was wrong is not wrong now
        except BaseException:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        finally:
            if durable:
                with suppress(sqlite3.Error):
                    conn.execute("PRAGMA synchronous=NORMAL")

    def _sync(self) -> bool:
        """Open the file if it can be, then move what memory holds into it. True when the file is usable."""
        if not self._ensure():
            return False
        mem = self._mem
        inflight = self._inflight
        unmarked = inflight is not None and not inflight.marked and bool(inflight.rows)
        if (
            not (unmarked or mem.held or mem.counters.merged or mem.counters.dropped or mem.sends or mem.forget)
            and not mem.forget_rows
        ):
            return True
        try:
            with self._txn() as c:
                if unmarked:
                    assert inflight is not None
                    c.executemany(
                        "UPDATE windows SET batch = ? WHERE id = ?", [(inflight.batch.digest, r) for r in inflight.rows]
                    )
                for digest in mem.forget:
                    c.execute("DELETE FROM windows WHERE batch = ?", (digest,))
                    c.execute("DELETE FROM batches WHERE digest = ?", (digest,))
                c.executemany("DELETE FROM windows WHERE id = ?", [(r,) for r in mem.forget_rows])
                for held in mem.held:
                    self._insert(c, held.window, held.privacy, held.doc)
                c.executemany("INSERT INTO sends (at, bytes) VALUES (?, ?)", mem.sends)
                self._bump(c, mem.counters.merged, mem.counters.dropped)
                self._compact(c)
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            return False
        if unmarked:
            assert inflight is not None
            inflight.marked = True
        self._mem = _Memory()
        return True

    @staticmethod
    def _bump(c: sqlite3.Connection, merged: int, dropped: int) -> None:
        for key, delta in (("merged", merged), ("dropped", dropped)):
            if delta:
                c.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
                    (key, str(delta), delta),
                )

    @staticmethod
    def _insert(c: sqlite3.Connection, window: TelemetryWindow, policy: PrivacyPolicy, doc: bytes) -> None:
        c.execute(
            "INSERT INTO windows (bundle_id, window_start, window_end, requests, size, privacy, doc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                window.bundle_id,
                window.window_start,
                window.window_end,
                window.performance.requests,
                len(doc),
                _policy_json(policy),
                doc,
            ),
        )

    def _compact(self, c: sqlite3.Connection) -> None:
        """Merge (or, when nothing merges, drop) waiting windows until the bound holds; the counts
        are written in the same transaction."""
        merged = dropped = 0
        while True:
            n, total = c.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM windows WHERE batch IS NULL").fetchone()
            if n <= self.max_windows and total <= self.max_bytes:
                break
            pick = c.execute(
                "SELECT bundle_id FROM windows WHERE batch IS NULL GROUP BY bundle_id HAVING COUNT(*) >= 2 "
                "ORDER BY MIN(window_start), MIN(id) LIMIT 1"
            ).fetchone()
            if pick is None:
                (oldest,) = c.execute(
                    "SELECT id FROM windows WHERE batch IS NULL ORDER BY window_start, id LIMIT 1"
                ).fetchone()
                c.execute("DELETE FROM windows WHERE id = ?", (oldest,))
                dropped += 1
                continue
            (a_id, a_doc, _a_priv), (b_id, b_doc, _) = c.execute(
                "SELECT id, doc, privacy FROM windows WHERE batch IS NULL AND bundle_id = ? "
                "ORDER BY window_start, id LIMIT 2",
                (pick[0],),
            ).fetchall()
            try:
                window = merge_windows(_read_window(a_doc), _read_window(b_doc))
            except (TinyMLOpsError, ValueError) as exc:  # a row that does not read back: it cannot be sent either
                log.warning("dropping an unreadable stored telemetry window: %s", exc)
                c.execute("DELETE FROM windows WHERE id = ?", (a_id,))
                dropped += 1
                continue
            doc = canonical_json(window.to_dict())
            c.execute(
                "UPDATE windows SET window_start = ?, window_end = ?, requests = ?, size = ?, doc = ? WHERE id = ?",
                (window.window_start, window.window_end, window.performance.requests, len(doc), doc, a_id),
            )
            c.execute("DELETE FROM windows WHERE id = ?", (b_id,))
            merged += 1
        self._bump(c, merged, dropped)

    def _compact_memory(self) -> None:
        held = self._mem.held
        while len(held) > self.memory_windows or sum(h.size for h in held) > self.max_bytes:
            order = sorted(range(len(held)), key=lambda i: held[i].window.window_start)
            by_bundle: dict[str, list[int]] = {}
            for i in order:
                by_bundle.setdefault(held[i].window.bundle_id, []).append(i)
            pairs = [ix[:2] for ix in by_bundle.values() if len(ix) >= 2]
            if not pairs:
                held.pop(order[0])
                self._mem.counters.dropped += 1
                continue
            i, j = min(pairs, key=lambda p: held[p[0]].window.window_start)
            merged = merge_windows(held[i].window, held[j].window)
            held[i] = _Held(merged, held[i].privacy, canonical_json(merged.to_dict()))
            held.pop(j)
            self._mem.counters.merged += 1

    # --- windows in --------------------------------------------------------------------------------
    def add(self, window: TelemetryWindow, privacy: PrivacyPolicy | None = None) -> None:
        """Keep ``window`` (exact, as ``take_window(privatize_histograms=False)`` returns it) until a
        batch carrying it is acknowledged; ``privacy`` is its bundle's policy (applied at upload).
        Never raises for a storage failure (see the module doc); UsageError for a privatized window."""
        if not isinstance(window, TelemetryWindow):
            raise UsageError(f"expected a TelemetryWindow, got {type(window).__name__}")
        if not _exact(window):
            raise UsageError(
                "the upload store takes exact windows (privatize_histograms=False): it privatizes at upload"
            )
        privacy = privacy if privacy is not None else PrivacyPolicy()
        doc = canonical_json(window.to_dict())
        with self._lock:
            self._mem.held.append(_Held(window, privacy, doc))
            if not self._sync():
                self._compact_memory()

    # --- batches out -------------------------------------------------------------------------------
    def next_batch(self, limit_bytes: int | None = None) -> PendingBatch | None:
        """The batch in flight if there is one (the same bytes as before), else a new batch of up to
        ``MAX_WINDOWS`` of the oldest windows whose body fits ``limit_bytes`` (at least one window,
        whatever its size: the caller decides whether it may go) — None when nothing waits."""
        if limit_bytes is not None and (isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int)):
            raise UsageError(f"limit_bytes must be an integer or None, got {limit_bytes!r}")
        with self._lock:
            self._sync()
            readable = self._conn is not None  # a full file still reads (and deletes)
            if self._inflight is not None:
                return self._inflight.batch
            candidates = self._candidates(readable)
            limit = MAX_WINDOWS
            while candidates:
                built = self._build(candidates[:limit], durable_budgets=readable)
                if built is None:  # one window too large for any batch: it was dropped
                    candidates = candidates[1:]
                    continue
                batch, budgets, n = built
                if n > 1 and limit_bytes is not None and len(batch.body) > limit_bytes:
                    limit = n // 2
                    continue
                break
            else:
                return None
            chosen = candidates[:n]
            inflight = _Inflight(
                batch,
                [c.row for c in chosen if c.row is not None],
                [c.held for c in chosen if c.held is not None],
                *self._counts(),
                problem=self._problem or self._reported,
            )
            for held in inflight.held:  # they travel with the batch now
                self._mem.held.remove(held)
            if readable and self._persist(inflight, budgets):
                self._budgets.update(budgets)
                inflight.marked = True
            elif budgets:  # the spend is not durable: release nothing that spends it
                rebuilt = self._build(chosen, durable_budgets=False)
                assert rebuilt is not None and rebuilt[2] == len(chosen)
                inflight.batch = rebuilt[0]
            self._inflight = inflight
            if not inflight.marked and inflight.rows and self._conn is not None:
                self._mark(inflight)  # the marks alone may fit where the bytes did not
            return inflight.batch

    def _mark(self, inflight: _Inflight) -> None:
        """Mark the batch's rows with its digest (so nothing merges or re-batches them)."""
        try:
            with self._txn() as c:
                c.executemany(
                    "UPDATE windows SET batch = ? WHERE id = ?", [(inflight.batch.digest, r) for r in inflight.rows]
                )
            inflight.marked = True
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)

    def _candidates(self, readable: bool) -> list[_Candidate]:
        out: list[_Candidate] = []
        if readable:
            assert self._conn is not None
            try:
                rows = self._conn.execute(
                    "SELECT id, doc, privacy FROM windows WHERE batch IS NULL ORDER BY window_start, id LIMIT ?",
                    (MAX_WINDOWS,),
                ).fetchall()
            except sqlite3.Error as exc:
                self._fail(exc)
                rows = []
            bad: list[int] = []
            for row, doc, privacy in rows:
                try:
                    out.append(_Candidate(_read_window(doc), PrivacyPolicy(**json.loads(privacy)), row=row))
                except (TinyMLOpsError, ValueError, TypeError) as exc:
                    log.warning("dropping an unreadable stored telemetry window: %s", exc)
                    bad.append(row)
            if bad:
                self._drop_rows(bad)
        for held in sorted(self._mem.held, key=lambda h: h.window.window_start):
            if len(out) >= MAX_WINDOWS:
                break
            out.append(_Candidate(held.window, held.privacy, held=held))
        return out

    def _drop_rows(self, rows: list[int]) -> None:
        try:
            with self._txn() as c:
                c.executemany("DELETE FROM windows WHERE id = ?", [(r,) for r in rows])
                self._bump(c, 0, len(rows))
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)

    def _budget(self, bundle_id: str, policy: PrivacyPolicy) -> EpsilonBudget:
        known = self._budgets.get(bundle_id)
        if known is not None:
            return EpsilonBudget.from_dict(known.to_dict()) if type(known) is EpsilonBudget else known
        if not self._loaded:
            return _ExhaustedBudget(1.0, 1.0)
        return policy.budget()

    def _build(
        self, chosen: list[_Candidate], *, durable_budgets: bool
    ) -> tuple[PendingBatch, dict[str, EpsilonBudget], int] | None:
        """Privatize (on copies of the budgets) and seal the first windows of ``chosen`` (all, or
        fewer when the payload would be too large): (batch, the budgets spent from, how many
        windows). None when the first window alone is too large for any batch (it is dropped, counted)."""
        budgets: dict[str, EpsilonBudget] = {}
        windows = []
        for cand in chosen:
            w = cand.window
            if cand.privacy.active:
                if w.bundle_id not in budgets:
                    budgets[w.bundle_id] = (
                        self._budget(w.bundle_id, cand.privacy) if durable_budgets else _ExhaustedBudget(1.0, 1.0)
                    )
                budget = budgets[w.bundle_id]
                w = privatize(w, cand.privacy, budget, at=w.window_end, rng=self.rng)
                budget.next_window()
            windows.append(w)
        waiting = self._waiting() - len(chosen)
        merged, dropped = self._counts()
        problem = self._problem or self._reported
        status = StoreStatus(
            status="ok" if problem is None else problem[0],
            pending_windows=max(0, waiting),
            merged_windows=merged,
            dropped_windows=dropped,
            error=None if problem is None else problem[1],
        )
        batch = TelemetryBatch(self.device_id, max(0.0, self.clock()), tuple(windows), store=status)
        try:
            sealed = seal_batch(batch, self._key)
        except PayloadTooLargeError:
            if len(chosen) > 1:
                return self._build(chosen[: len(chosen) // 2], durable_budgets=durable_budgets)
            log.warning(
                "a telemetry window of bundle %s is too large for any batch: dropped", chosen[0].window.bundle_id
            )
            self._discard(chosen[0])
            return None
        requests = sum(w.performance.requests for w in windows)
        pending = PendingBatch(
            sealed.digest, sealed.body, sealed.signature, sealed.payload_bytes, len(windows), requests
        )
        spent = {k: v for k, v in budgets.items() if not isinstance(v, _ExhaustedBudget)}
        return pending, spent, len(windows)

    def _discard(self, cand: _Candidate) -> None:
        if cand.row is not None:
            self._drop_rows([cand.row])
        elif cand.held is not None:
            self._mem.held.remove(cand.held)
            self._mem.counters.dropped += 1

    def _persist(self, inflight: _Inflight, budgets: dict[str, EpsilonBudget]) -> bool:
        b = inflight.batch
        try:
            with self._txn(durable=True) as c:
                c.execute(
                    "INSERT INTO batches "
                    "(digest, body, signature, payload_bytes, windows, merged, dropped, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        b.digest,
                        b.body,
                        b.signature,
                        b.payload_bytes,
                        b.windows,
                        inflight.merged,
                        inflight.dropped,
                        self.clock(),
                    ),
                )
                c.executemany("UPDATE windows SET batch = ? WHERE id = ?", [(b.digest, r) for r in inflight.rows])
                c.executemany(
                    "INSERT INTO budgets (bundle_id, state) VALUES (?, ?) "
                    "ON CONFLICT(bundle_id) DO UPDATE SET state = excluded.state",
                    [(k, json.dumps(v.to_dict())) for k, v in budgets.items()],
                )
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            return False
        return True

    def _waiting(self) -> int:
        n = len(self._mem.held)
        if self._conn is not None:
            with suppress(sqlite3.Error):
                n += self._conn.execute("SELECT COUNT(*) FROM windows WHERE batch IS NULL").fetchone()[0]
        return n

    def _counts(self) -> tuple[int, int]:
        merged, dropped = self._mem.counters.merged, self._mem.counters.dropped
        if self._conn is not None:
            try:
                for key, value in self._conn.execute("SELECT key, value FROM meta WHERE key IN ('merged', 'dropped')"):
                    if key == "merged":
                        merged += int(value)
                    else:
                        dropped += int(value)
            except sqlite3.Error:
                pass
        return max(0, merged), max(0, dropped)

    def acknowledge(self, digest: str) -> int:
        """The server has the batch ``digest``: its windows leave the store. Returns how many."""
        return self._finish(digest, delivered=True)

    def refuse(self, digest: str, reason: str = "") -> int:
        """The server refused the batch ``digest`` for good: its windows are dropped (and counted, in
        the next batch's ``dropped_windows``). Returns how many."""
        if reason:
            log.warning("telemetry batch %s refused by the server, its windows dropped: %s", digest[:12], reason)
        return self._finish(digest, delivered=False)

    def _finish(self, digest: str, *, delivered: bool) -> int:
        with self._lock:
            inflight = self._inflight
            if inflight is None or inflight.batch.digest != digest:
                raise UsageError(f"no batch {digest[:16]}… is in flight")
            reachable = self._ensure()  # first: a file replaced since makes the batch forget its rows
            self._inflight = None
            n = inflight.batch.windows
            merged, dropped = (-inflight.merged, -inflight.dropped) if delivered else (0, n)
            done = False
            if reachable:
                try:
                    with self._txn() as c:
                        c.execute("DELETE FROM windows WHERE batch = ?", (digest,))
                        if inflight.rows:
                            c.executemany("DELETE FROM windows WHERE id = ?", [(r,) for r in inflight.rows])
                        c.execute("DELETE FROM batches WHERE digest = ?", (digest,))
                        self._bump(c, merged, dropped)
                    done = True
                except (sqlite3.Error, OSError) as exc:
                    self._fail(exc)
            if not done:  # the next sync that reaches the file deletes them
                self._mem.forget.append(digest)
                self._mem.forget_rows.extend(inflight.rows)
                self._mem.counters.merged += merged
                self._mem.counters.dropped += dropped
            if delivered and inflight.problem is not None and inflight.problem == self._reported:
                self._reported = self._problem  # reported: only a condition still there stays
            return n

    # --- the send log -----------------------------------------------------------------------------
    def record_sent(self, nbytes: int, at: float | None = None) -> None:
        """``nbytes`` of compressed body went on the wire at ``at`` (default: now)."""
        at = self.clock() if at is None else at
        with self._lock:
            if self._ensure():
                try:
                    with self._txn() as c:
                        c.execute("INSERT INTO sends (at, bytes) VALUES (?, ?)", (at, int(nbytes)))
                        c.execute("DELETE FROM sends WHERE at <= ?", (at - 2 * DAY_S,))
                    return
                except (sqlite3.Error, OSError) as exc:
                    self._fail(exc)
            self._mem.sends.append((at, int(nbytes)))

    def sent_log(self) -> list[tuple[float, int]]:
        """Every send of the last two days (the file's and memory's), ``(at, bytes)``."""
        with self._lock:
            out = list(self._mem.sends)
            if self._ensure():
                try:
                    out += [(float(a), int(b)) for a, b in self._conn.execute("SELECT at, bytes FROM sends")]  # type: ignore[union-attr]
                except sqlite3.Error as exc:
                    self._fail(exc)
            return out

    # --- state ------------------------------------------------------------------------------------
    def status(self) -> StoreStatus:
        """The store now: its condition, the windows waiting (in flight included), the counts."""
        with self._lock:
            self._sync()
            merged, dropped = self._counts()
            problem = self._problem or self._reported
            inflight = 0 if self._inflight is None else self._inflight.batch.windows
            return StoreStatus(
                status="ok" if problem is None else problem[0],
                pending_windows=self._waiting() + inflight,
                merged_windows=merged,
                dropped_windows=dropped,
                error=None if problem is None else problem[1],
            )

    @property
    def in_flight(self) -> PendingBatch | None:
        return None if self._inflight is None else self._inflight.batch

    def budget(self, bundle_id: str) -> EpsilonBudget | None:
        """The epsilon budget of ``bundle_id`` as the store holds it (None: nothing spent yet)."""
        with self._lock:
            return self._budgets.get(bundle_id)

    def close(self) -> None:
        with self._lock:
            self._close_conn()

    def __enter__(self) -> UploadStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_window(doc: Any) -> TelemetryWindow:
    data = json.loads(bytes(doc).decode("utf-8") if isinstance(doc, bytes | memoryview) else doc)
    return TelemetryWindow.from_dict(data)


def peek(path: Path | str, *, now: float | None = None) -> dict[str, Any] | None:
    """What a store file holds, read-only (``agent status``: no key needed, nothing written): the
    windows waiting and the requests they cover, the batch in flight, the bytes sent in the last
    24 hours. None when there is no store file; ``{"error": …}`` when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        return None
    now = time.time() if now is None else now
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            windows, requests = db.execute("SELECT COUNT(*), COALESCE(SUM(requests), 0) FROM windows").fetchone()
            in_flight = db.execute("SELECT COALESCE(SUM(windows), 0) FROM batches").fetchone()[0]
            sent = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM sends WHERE at > ?", (now - DAY_S,)).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "windows_waiting": int(windows),
        "requests_waiting": int(requests),
        "windows_in_flight": int(in_flight),
        "bytes_sent_24h": int(sent),
    }


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_WINDOWS",
    "DEFAULT_MEMORY_WINDOWS",
    "PendingBatch",
    "UploadStore",
    "peek",
]
