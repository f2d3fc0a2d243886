"""Metering (issue 7, server half): how fast the control plane reconciles usage reports.

``LicenseService.ingest_report`` (``metering/licensing.py``) on a real workspace — SQLite in a file
(WAL, ``synchronous=NORMAL``, as ``registry/db.py`` opens it), and PostgreSQL too when
``TINYMLOPS_TEST_PG_URL`` is set (a fresh database, dropped afterwards) — with the service built as
``create_app`` builds it (issuer = the workspace's release key).

**The device.** One device per (backend, N), enrolled through the real ``EnrolmentService`` (a
signed enrolment request), licensed by the service (``issue``, then ``for_device`` → the device
installs it, as the agent's sync does), metering with a real :class:`~tinymlops.metering.meter.MeteringHost`
(SQLite ledger + file monotonic counter, block 64): every ledger entry is a real reservation of 64
calls, every report is built and signed by ``Meter.usage_report``. The device's ledger directory is
on tmpfs (``/dev/shm``) when there is one: it is setup, and fsyncs there are ~30× cheaper; the
server's database is on disk.

**The chain.** The device serves until its ledger holds N − 512 entries, reports them (reports of
≤ 4,096 entries, each ingested in turn: the *chain build* table), backs its ledger directory up (the
copy a rollback restores), serves on to N + 4,096 entries and reports up to N (its last report is 64
entries, [N − 64, N)). The server's rows are then saved, and before each sample put back (untimed:
rows added deleted, changed rows written back, every table's row count checked — see ``_Rewind``)
through the engine's own pooled connections, so every report meets a chain holding exactly N entries
on warm connections, as a running server's are (a database file copied back, or recreated from a
template, would hand each sample a cold connection: on PostgreSQL a new backend with empty catalog
caches and no prepared statements). Then the garbage is collected (the setup's objects frozen first,
``gc.freeze``, so that is cheap) and one ``ingest_report`` call is timed: wall time (``perf_counter``,
GC on) and this process's CPU time (``process_time``: on SQLite nearly all the work, on PostgreSQL the
Python side; other processes on a shared machine move it much less than wall time). The cases,
interleaved in shuffled rounds so load drift hits them alike (round 0 untimed):

* ``append 64`` / ``append 4096``: the next 64 / 4,096 entries (201, nothing flagged);
* ``overlap``: a report resent from N − 32, 96 entries, 32 already stored (201, 64 new);
* ``fork``: the restored backup serves 64 entries and reports them from N − 512 (201, ``rollback``);
* ``replay``: the last report again, byte for byte (409 ``DuplicateReportError``, a ``replay`` flag).

Every answer is checked (status, ``next_seq``, flags) outside the timing: a case that does not do what
it says stops the benchmark. ``entries/s`` = new entries ÷ median time. Three extra append-64 calls per
chain run with every SQL statement timed (SQLAlchemy cursor events): where the time goes, and which
statement grows with N. ``verify_usage_report`` (parse + signature, no database) is timed alone too.

**HTTP.** Once, on SQLite at the smallest N: ``POST /v1/devices/me/usage`` with the ``append 64``
report through a real server (``BackgroundServer``: uvicorn in a thread, 127.0.0.1) with the device
client devices use (``DeviceClient.send_usage``: a signed request, urllib, a new connection each),
interleaved with the same report handed to the service directly, each on the rewound chain: the
difference is the server's overhead around the service (HTTP, request authentication — signature,
nonce and ``last_seen`` written —, FastAPI). ``GET /healthz`` is the floor any request pays.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import fmt_ms, goal, goals_table, stats_ms, time_calls
from rich.table import Table

NAME = "usage_ingest"
TITLE = "Usage reports: how fast the control plane reconciles them (ingest_report, SQLite / PostgreSQL, HTTP)"
ENV_PG = "TINYMLOPS_TEST_PG_URL"
MODEL = "digits"
BLOCK = 64  # the device's reservation block (the metering policy's default)
SMALL, LARGE = 64, 4096  # report sizes; 4,096 is the most one report may carry
FORK_BACK = 512  # the restored backup is this many entries behind the server's head
OVERLAP = 32  # entries the overlapping resend repeats
CASES = ("append 64", "append 4096", "overlap", "fork", "replay")
GOAL_APPEND_MS = 50.0
GOAL_LARGE_ENTRIES_PER_S = 5000.0
GOAL_REPLAY_MS = 25.0
GOAL_HTTP_OVERHEAD_MS = 15.0


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"chains": [1000, 4000], "runs": 5, "runs_large": 3, "http_runs": 5, "verify_runs": 20}
    return {"chains": [1000, 20_000], "runs": 20, "runs_large": 10, "http_runs": 25, "verify_runs": 200}


# --- the device ----------------------------------------------------------------------------------------
@dataclass
class _Device:
    """An enrolled device metering with a real MeteringHost over its ledger directory."""

    keys: Any
    record: Any
    directory: Path
    trusted: list[Any]
    host: Any = None
    meter: Any = None

    def open(self) -> None:
        from tinymlops.metering.meter import MeteringHost

        self.host = MeteringHost(self.directory, device_key=self.keys.signing, trusted_issuer_keys=self.trusted)
        self.meter = self.host.meter(MODEL, block=BLOCK)

    def close(self) -> None:
        if self.host is not None:
            self.host.close()
            self.host = self.meter = None

    def copy_to(self, directory: Path) -> _Device:
        """The ledger directory (ledger and its counter) as it is now, as a device of its own."""
        self.close()
        shutil.copytree(self.directory, directory)
        self.open()
        twin = _Device(self.keys, self.record, directory, self.trusted)
        twin.open()
        return twin

    def grow(self, entries: int) -> None:
        """Serve calls until the ledger holds ``entries`` entries (one reservation per BLOCK calls)."""
        authorize = self.meter.authorize
        while self.meter.next_seq < entries:
            authorize()

    def report(self, since: int, limit: int) -> Any:
        signed = self.meter.usage_report(since, limit=limit)
        assert signed is not None and len(json.loads(signed.data)["entries"]) == limit, (since, limit)
        return signed


def _enrol(ws: Any) -> tuple[Any, Any]:
    """A new device enrolled as the server enrols one: a one-time token and a signed request."""
    from tinymlops.crypto.keys import DeviceKeys
    from tinymlops.devices.enrolment import EnrolmentService
    from tinymlops.devices.identity import enrolment_body
    from tinymlops.devices.request_auth import ReceivedRequest, sign_request

    path = "/v1/devices/enrol"
    enrolment = EnrolmentService(ws.engine, ws.targets.get)
    keys = DeviceKeys.generate()
    _, token = enrolment.create_token(ttl_s=600)
    body = json.dumps(enrolment_body(keys, token, "rpi-4")).encode()
    auth = sign_request(keys.signing, "POST", path, body)
    doc = json.loads(body)
    record = enrolment.enrol(
        token=doc["token"],
        signing_public=doc["signing_public"],
        wrapping_public=doc["wrapping_public"],
        profile=doc["profile"],
        request=ReceivedRequest("POST", path, body, tuple(auth.headers().items())),
    )
    return keys, record


# --- saving and restoring the server's state --------------------------------------------------------------
class _Rewind:
    """Puts the database's rows back as they were at :meth:`save`, through the engine's own (warm) pooled
    connections — a running server's connections keep their caches and prepared statements; a database
    copied back (or recreated from a template) would give each sample cold ones.

    Every table is reflected. A table of at most ``small`` rows is kept whole: rows added since are
    deleted, changed rows written back. A larger table must be append-only with one integer key (here
    ``usage_entries``): rows above the saved largest key are deleted. After each rewind every table's
    row count must be the saved one, or the benchmark stops (the rewind would not cover what changed)."""

    def __init__(self, engine: Any, *, small: int = 200) -> None:
        self.engine = engine
        self.small = small
        self.tables: list[Any] = []
        self.counts: dict[str, int] = {}
        self.rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self.max_key: dict[str, Any] = {}

    def save(self) -> None:
        from sqlalchemy import MetaData, func, select

        meta = MetaData()
        meta.reflect(self.engine)
        self.tables = list(meta.sorted_tables)
        with self.engine.connect() as conn:
            for table in self.tables:
                count = conn.scalar(select(func.count()).select_from(table))
                self.counts[table.name] = count
                key = list(table.primary_key.columns)
                if count <= self.small:
                    self.rows[table.name] = {
                        tuple(row[c.name] for c in key): dict(row) for row in conn.execute(select(table)).mappings()
                    }
                elif len(key) == 1 and key[0].type.python_type is int:
                    self.max_key[table.name] = conn.scalar(select(func.max(key[0])))
                else:
                    raise AssertionError(f"cannot rewind {table.name}: {count} rows and no single integer key")

    def restore(self) -> None:
        from sqlalchemy import and_, delete, func, select, update

        with self.engine.begin() as conn:
            for table in reversed(self.tables):  # children before parents
                key = list(table.primary_key.columns)
                if table.name in self.max_key:
                    conn.execute(delete(table).where(key[0] > self.max_key[table.name]))
                    continue
                saved = self.rows[table.name]
                for row in conn.execute(select(table)).mappings():
                    pk = tuple(row[c.name] for c in key)
                    if pk in saved and dict(row) == saved[pk]:
                        continue
                    where = and_(*(c == v for c, v in zip(key, pk, strict=True)))
                    if pk not in saved:
                        conn.execute(delete(table).where(where))
                    else:
                        conn.execute(update(table).where(where).values(saved[pk]))
            for table in self.tables:
                count = conn.scalar(select(func.count()).select_from(table))
                if count != self.counts[table.name]:
                    raise AssertionError(f"rewind: {table.name} holds {count} rows, {self.counts[table.name]} saved")


def _pg(url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        dbname=parsed.database,
        autocommit=True,
    ) as conn:
        conn.execute(sql)


@contextmanager
def _workspace(backend: str, tmp: Path) -> Iterator[Any]:
    """A workspace on ``backend``: SQLite in its directory, or a fresh PostgreSQL database dropped after."""
    from sqlalchemy.engine import make_url

    from tinymlops.workspace import Workspace

    if backend == "sqlite":
        ws = Workspace.init(tmp / "ws")
        try:
            yield ws
        finally:
            ws.close()
        return
    admin = os.environ[ENV_PG]
    name = f"bench_usage_{uuid.uuid4().hex[:12]}"
    _pg(admin, f'CREATE DATABASE "{name}"')
    try:
        ws = Workspace.init(tmp / "ws", db_url=make_url(admin).set(database=name).render_as_string(False))
        try:
            yield ws
        finally:
            ws.close()
    finally:
        _pg(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- one chain of N entries and the reports sent to it ------------------------------------------------------
@dataclass
class _World:
    backend: str
    n: int
    ws: Any
    state: _Rewind
    service: Any
    device: _Device
    reports: dict[str, Any] = field(default_factory=dict)
    build: list[dict[str, Any]] = field(default_factory=list)
    setup_s: float = 0.0

    def rewind(self) -> None:
        """The saved chain of N entries back (untimed), the garbage collected (the setup's objects are frozen)."""
        self.state.restore()
        gc.collect()


def _ingest(world: _World, signed: Any) -> Any:
    from tinymlops.errors import DuplicateReportError

    try:
        return world.service.ingest_report(world.device.record, signed.data, signed.signature.hex())
    except DuplicateReportError as exc:
        return exc


def _send(world: _World, since: int, until: int) -> Any:
    """Report [since, until) in reports of at most LARGE entries, each ingested in turn (timed: the build
    table); the last signed report sent."""
    signed = None
    while since < until:
        size = min(LARGE, until - since)
        signed = world.device.report(since, size)
        t0 = time.perf_counter()
        result = world.service.ingest_report(world.device.record, signed.data, signed.signature.hex())
        dt = time.perf_counter() - t0
        assert result.next_seq == since + size and not result.flags, result
        world.build.append({"first_seq": since, "entries": size, "seconds": dt})
        since += size
    return signed


def _build(backend: str, n: int, ws: Any, ledgers: Path) -> _World:
    from tinymlops.bundle.workspace_keys import release_key
    from tinymlops.metering.license_signing import SignedLicense
    from tinymlops.metering.licensing import LicenseService

    t_start = time.perf_counter()
    issuer = release_key(ws)
    service = LicenseService(ws.engine, issuer)  # as create_app builds it
    keys, record = _enrol(ws)
    device = _Device(keys, record, ledgers / f"{backend}-{n}", [issuer.public_key()])
    device.open()
    queries = BLOCK * 2 * (n + LARGE) + 10_000  # both branches of the fork reserve; no overuse
    service.issue(device_id=record.id, model=MODEL, queries=queries, valid_until=int(time.time()) + 30 * 86_400)
    for doc in service.for_device(record.id, model=MODEL).licenses:  # what the agent's sync installs
        device.meter.install(SignedLicense(base64.b64decode(doc.data), bytes.fromhex(doc.signature)))
    world = _World(backend, n, ws, _Rewind(ws.engine), service, device)

    fork_at = n - FORK_BACK
    device.grow(fork_at)
    _send(world, 0, fork_at)
    restored = device.copy_to(ledgers / f"{backend}-{n}-backup")  # the backup a rollback restores
    device.grow(n + LARGE)
    _send(world, fork_at, n - SMALL)
    # the last report, kept as sent (a report built again differs: its created_at) for the byte-identical replay
    world.reports["replay"] = _send(world, n - SMALL, n)
    world.reports["append 64"] = device.report(n, SMALL)
    world.reports["append 4096"] = device.report(n, LARGE)
    world.reports["overlap"] = device.report(n - OVERLAP, OVERLAP + SMALL)
    restored.grow(fork_at + SMALL)
    world.reports["fork"] = restored.report(fork_at, SMALL)
    restored.close()
    device.close()
    world.state.save()
    world.setup_s = time.perf_counter() - t_start
    return world


def _check(world: _World, case: str, answer: Any) -> None:
    """What each case must do (outside the timing): a case that does not do it stops the benchmark."""
    from tinymlops.errors import DuplicateReportError
    from tinymlops.metering.licensing import ReportResult

    n = world.n
    expected_next = {"append 64": n + SMALL, "append 4096": n + LARGE, "overlap": n + SMALL}
    if case == "replay":
        ok = isinstance(answer, DuplicateReportError) and answer.next_seq == n
    elif not isinstance(answer, ReportResult):
        ok = False
    else:
        kinds = [f.kind for f in answer.flags]
        if case == "fork":
            ok = kinds == ["rollback"] and answer.next_seq == n - FORK_BACK + SMALL
        else:
            ok = not kinds and answer.next_seq == expected_next[case]
    if not ok:
        raise AssertionError(f"{world.backend}, N={n}, {case}: unexpected answer {answer!r}")


def _timed(fn: Any) -> tuple[Any, float, float]:
    """``fn()``'s answer, wall time and this process's CPU time (``process_time``: every thread — on
    SQLite nearly all the work, on PostgreSQL the Python side only; much less moved by other processes
    on the machine than wall time)."""
    c0, t0 = time.process_time(), time.perf_counter()
    answer = fn()
    t1, c1 = time.perf_counter(), time.process_time()
    return answer, t1 - t0, c1 - c0


def _stats(wall: list[float], cpu: list[float]) -> dict[str, float]:
    return {**stats_ms(wall), "cpu_p50_ms": stats_ms(cpu)["p50_ms"]}


def _new_entries(case: str) -> int:
    return {"append 64": SMALL, "append 4096": LARGE, "overlap": SMALL, "fork": SMALL, "replay": 0}[case]


def _measure(world: _World, s: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Shuffled rounds; each sample on the saved chain put back (untimed), then one timed ingest."""
    times: dict[str, list[float]] = {c: [] for c in CASES}
    cpu: dict[str, list[float]] = {c: [] for c in CASES}
    restore_s: list[float] = []
    for i in range(s["runs"] + 1):  # round 0 warms the engine's compiled-statement cache, untimed
        cases = [c for c in CASES if c != "append 4096" or i <= s["runs_large"]]
        rng.shuffle(cases)
        for case in cases:
            t0 = time.perf_counter()
            world.rewind()
            restore_s.append(time.perf_counter() - t0)
            signed = world.reports[case]
            answer, dt, dc = _timed(lambda signed=signed: _ingest(world, signed))
            _check(world, case, answer)
            if i:
                times[case].append(dt)
                cpu[case].append(dc)
    out: dict[str, Any] = {}
    for case in CASES:
        st = _stats(times[case], cpu[case])
        signed = world.reports[case]
        new = _new_entries(case)
        out[case] = {
            **st,
            "entries": len(json.loads(signed.data)["entries"]),
            "new_entries": new,
            "report_bytes": len(signed.data),
            "entries_per_s": new / (st["p50_ms"] / 1e3) if new else None,
        }
    out["_rewind_p50_ms"] = stats_ms(restore_s)["p50_ms"]
    return out


def _verify_only(world: _World, runs: int) -> dict[str, Any]:
    """Parsing + signature verification alone (``verify_usage_report``), no database."""
    from tinymlops.metering.license_signing import verify_usage_report

    pub = world.device.keys.signing.public_key()
    out = {}
    for case in ("append 64", "append 4096"):
        signed = world.reports[case]
        r = runs if case == "append 64" else max(5, runs // 10)
        out[case] = stats_ms(time_calls(lambda signed=signed: verify_usage_report(signed, pub), r, 3))
    return out


def _sql_profile(world: _World, case: str, runs: int = 3) -> dict[str, Any]:
    """Where one ``case`` call's database time goes: each SQL statement timed (cursor execute, SQLAlchemy
    events) over ``runs`` extra calls on the rewound chain, outside the timed samples; median per statement."""
    import statistics

    from sqlalchemy import event

    engine = world.ws.engine
    seen: list[tuple[str, float]] = []

    def before(conn: Any, _cursor: Any, _stmt: Any, _params: Any, _ctx: Any, _many: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def after(conn: Any, _cursor: Any, stmt: str, _params: Any, _ctx: Any, _many: Any) -> None:
        seen.append((" ".join(stmt.split()), time.perf_counter() - conn.info.pop("bench_t0")))

    per_run: list[dict[str, float]] = []
    totals, calls = [], []
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        for _ in range(runs):
            world.rewind()
            seen.clear()
            t0 = time.perf_counter()
            _check(world, case, _ingest(world, world.reports[case]))
            calls.append(time.perf_counter() - t0)
            by_stmt: dict[str, float] = {}
            for stmt, dt in seen:
                by_stmt[stmt] = by_stmt.get(stmt, 0.0) + dt
            per_run.append(by_stmt)
            totals.append(sum(dt for _, dt in seen))
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
    stmts = {k: statistics.median(r.get(k, 0.0) for r in per_run) for k in per_run[0]}
    top = sorted(stmts.items(), key=lambda kv: kv[1], reverse=True)[:3]
    return {
        "case": case,
        "call_p50_ms": 1e3 * statistics.median(calls),
        "sql_p50_ms": 1e3 * statistics.median(totals),
        "statements": len(per_run[0]),
        "top": [{"sql": k, "ms": 1e3 * v} for k, v in top],
    }


def _http(world: _World, s: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The ``append 64`` report through a live server vs handed to the service, interleaved."""
    from tinymlops.devices.client import DeviceClient
    from tinymlops.server.background import BackgroundServer

    signed = world.reports["append 64"]
    with BackgroundServer(world.ws) as server:
        client = DeviceClient(server.url, world.device.keys)
        floor = time_calls(lambda: client.request("GET", "/healthz", auth="none"), s["http_runs"] * 2, 5)

        def direct() -> Any:
            return _ingest(world, signed)

        def http() -> Any:
            doc = client.send_usage(signed)
            return doc

        times: dict[str, list[float]] = {"direct": [], "http": []}
        cpu: dict[str, list[float]] = {"direct": [], "http": []}
        for i in range(s["http_runs"] + 1):  # round 0 untimed
            order = ["direct", "http"]
            rng.shuffle(order)
            for kind in order:
                world.rewind()
                answer, dt, dc = _timed(direct if kind == "direct" else http)
                if kind == "direct":
                    _check(world, "append 64", answer)
                elif answer.get("next_seq") != world.n + SMALL or answer.get("flags"):
                    raise AssertionError(f"HTTP append 64: unexpected answer {answer!r}")
                if i:
                    times[kind].append(dt)
                    cpu[kind].append(dc)
    direct_st, http_st = _stats(times["direct"], cpu["direct"]), _stats(times["http"], cpu["http"])
    return {
        "backend": world.backend,
        "n": world.n,
        "healthz": stats_ms(floor),
        "direct": direct_st,
        "http": http_st,
        "overhead_p50_ms": http_st["p50_ms"] - direct_st["p50_ms"],
        "overhead_cpu_p50_ms": http_st["cpu_p50_ms"] - direct_st["cpu_p50_ms"],
    }


@contextmanager
def _setup_frozen() -> Iterator[None]:
    """Undo any ``gc.freeze()`` made inside (other benchmarks run in this process after this one)."""
    try:
        yield
    finally:
        gc.unfreeze()


def _backend(backend: str, s: dict[str, Any], rng: random.Random, *, http: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"chains": {}}
    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-usage-") as tmp:
        shm = Path("/dev/shm")
        ledger_parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        with tempfile.TemporaryDirectory(prefix="tinymlops-bench-ledgers-", dir=ledger_parent) as ledgers:
            out["ledgers_on"] = "tmpfs (/dev/shm)" if ledger_parent else "the temp directory"
            for n in s["chains"]:
                sub = Path(tmp) / f"n{n}"
                sub.mkdir()
                with _workspace(backend, sub) as ws, _setup_frozen():
                    world = _build(backend, n, ws, Path(ledgers))
                    gc.collect()
                    gc.freeze()  # the setup's objects out of the collector's way: each sample's collect is cheap
                    entry: dict[str, Any] = {
                        "setup_s": world.setup_s,
                        "build": _build_stats(world.build),
                        "cases": _measure(world, s, rng),
                        "sql_profile": _sql_profile(world, "append 64"),
                    }
                    if http and n == min(s["chains"]):
                        out["verify_only"] = _verify_only(world, s["verify_runs"])
                        out["http"] = _http(world, s, rng)
                    out["chains"][str(n)] = entry
    return out


def _build_stats(build: list[dict[str, Any]]) -> dict[str, Any]:
    large = [b for b in build if b["entries"] == LARGE]
    entries = sum(b["entries"] for b in build)
    seconds = sum(b["seconds"] for b in build)
    return {
        "reports": len(build),
        "entries": entries,
        "seconds": seconds,
        "entries_per_s": entries / seconds,
        "large_reports_ms": [1e3 * b["seconds"] for b in large],
        "large_at_seq": [b["first_seq"] for b in large],
    }


def run(quick: bool) -> dict[str, Any]:
    s = _settings(quick)
    rng = random.Random(7)
    backends = {"sqlite": _backend("sqlite", s, rng, http=True)}
    if os.environ.get(ENV_PG):
        backends["postgresql"] = _backend("postgresql", s, rng, http=False)
    sqlite = backends["sqlite"]
    big_n = str(max(s["chains"]))
    at = sqlite["chains"][big_n]["cases"]
    http = sqlite["http"]
    method_ingest = (
        "LicenseService.ingest_report in process on a real workspace; each sample on the saved chain of N entries "
        "put back first (rows rewound, warm pooled connections), then one timed call (perf_counter, GC on); "
        "reports built and signed by a "
        "real MeteringHost ledger (block 64) of an enrolled device"
    )
    goals = [
        goal(
            f"a 64-entry report appended under {GOAL_APPEND_MS:.0f} ms (median) on SQLite, chain of {int(big_n):,}",
            at["append 64"]["p50_ms"] < GOAL_APPEND_MS,
            f"{at['append 64']['p50_ms']:.1f} ms (p50), p95 {at['append 64']['p95_ms']:.1f} ms, "
            f"CPU {at['append 64']['cpu_p50_ms']:.1f} ms, {at['append 64']['entries_per_s']:.0f} entries/s",
            method_ingest,
        ),
        goal(
            f"a full 4,096-entry report at ≥ {GOAL_LARGE_ENTRIES_PER_S:,.0f} entries/s on SQLite, chain of "
            f"{int(big_n):,}",
            at["append 4096"]["entries_per_s"] >= GOAL_LARGE_ENTRIES_PER_S,
            f"{at['append 4096']['entries_per_s']:.0f} entries/s ({at['append 4096']['p50_ms']:.0f} ms p50)",
            method_ingest,
        ),
        goal(
            f"a byte-identical replay answered (409) under {GOAL_REPLAY_MS:.0f} ms (median) on SQLite, chain of "
            f"{int(big_n):,}",
            at["replay"]["p50_ms"] < GOAL_REPLAY_MS,
            f"{at['replay']['p50_ms']:.1f} ms (p50), p95 {at['replay']['p95_ms']:.1f} ms",
            method_ingest,
        ),
        goal(
            f"HTTP adds under {GOAL_HTTP_OVERHEAD_MS:.0f} ms to a 64-entry report (median, SQLite)",
            http["overhead_p50_ms"] < GOAL_HTTP_OVERHEAD_MS,
            f"+{http['overhead_p50_ms']:.1f} ms: {http['http']['p50_ms']:.1f} ms over HTTP vs "
            f"{http['direct']['p50_ms']:.1f} ms direct (CPU +{http['overhead_cpu_p50_ms']:.1f} ms; GET /healthz "
            f"{http['healthz']['p50_ms']:.1f} ms)",
            "POST /v1/devices/me/usage by DeviceClient.send_usage (signed request, urllib) to BackgroundServer on "
            "127.0.0.1, interleaved with the same report handed to the service, each on the restored chain",
        ),
    ]
    if "postgresql" in backends:
        pg = backends["postgresql"]["chains"][big_n]["cases"]
        goals.append(
            goal(
                f"a 64-entry report appended under {GOAL_APPEND_MS:.0f} ms (median) on PostgreSQL, chain of "
                f"{int(big_n):,}",
                pg["append 64"]["p50_ms"] < GOAL_APPEND_MS,
                f"{pg['append 64']['p50_ms']:.1f} ms (p50), p95 {pg['append 64']['p95_ms']:.1f} ms, "
                f"CPU here {pg['append 64']['cpu_p50_ms']:.1f} ms",
                method_ingest,
            )
        )
    headline: dict[str, float] = {}
    for b, r in backends.items():
        for n, ch in r["chains"].items():
            for case in ("append 64", "append 4096"):
                headline[f"{b} N={n} {case} p50 ms"] = ch["cases"][case]["p50_ms"]
    headline["sqlite HTTP overhead p50 ms"] = http["overhead_p50_ms"]
    return {"settings": s, "backends": backends, "goals": goals, "headline": headline}


def render(result: dict[str, Any]) -> list[Table]:
    backends = result["backends"]
    t = Table(
        title="Reconciling one usage report: LicenseService.ingest_report (ms per report)",
        title_justify="left",
        caption=(
            "Each sample: the server's saved chain of N entries put back (untimed; rows rewound on the pool's warm "
            "connections), then one timed "
            "ingest_report (perf_counter, GC on; CPU = this process's process_time, all threads: on PostgreSQL the "
            "Python side only). Reports from a real device ledger (MeteringHost, block 64). "
            "entries/s = new entries / median. overlap: resent from N−32 (96 entries, 64 new); fork: a restored "
            f"backup {FORK_BACK} entries behind reports 64 (rollback flagged); replay: the last report again (409)."
        ),
        caption_justify="left",
    )
    cols = (
        "backend",
        "chain N",
        "case",
        "answer",
        "entries (new)",
        "KiB",
        "p50",
        "p95",
        "mean",
        "CPU p50",
        "entries/s",
    )
    for c in (*cols, "n"):
        t.add_column(c, justify="left" if c in ("backend", "case", "answer") else "right")
    answers = {
        "append 64": "201",
        "append 4096": "201",
        "overlap": "201",
        "fork": "201 rollback",
        "replay": "409 duplicate",
    }
    for backend, b in backends.items():
        for n, ch in b["chains"].items():
            for case in CASES:
                c = ch["cases"][case]
                t.add_row(
                    backend,
                    f"{int(n):,}",
                    case,
                    answers[case],
                    f"{c['entries']} ({c['new_entries']})",
                    f"{c['report_bytes'] / 1024:.0f}",
                    fmt_ms(c["p50_ms"], 1),
                    fmt_ms(c["p95_ms"], 1),
                    fmt_ms(c["mean_ms"], 1),
                    fmt_ms(c["cpu_p50_ms"], 1),
                    "-" if c["entries_per_s"] is None else f"{c['entries_per_s']:,.0f}",
                    str(c["n"]),
                )
    u = Table(
        title="Chain build: the setup's reports ingested in turn (≤ 4,096 entries each, from seq 0)",
        title_justify="left",
    )
    for c in ("backend", "chain N", "reports", "entries/s", "4,096-entry reports, ms (at seq 0, 4096, …)", "setup s"):
        u.add_column(c, justify="left" if c in ("backend", "4,096-entry reports, ms (at seq 0, 4096, …)") else "right")
    for backend, b in backends.items():
        for n, ch in b["chains"].items():
            bs = ch["build"]
            u.add_row(
                backend,
                f"{int(n):,}",
                str(bs["reports"]),
                f"{bs['entries_per_s']:,.0f}",
                ", ".join(f"{v:.0f}" for v in bs["large_reports_ms"]),
                f"{ch['setup_s']:.1f}",
            )
    w = Table(
        title="Where an append-64 call's time goes: its SQL statements timed (median of 3 extra instrumented calls)",
        title_justify="left",
    )
    for c in ("backend", "chain N", "call ms", "SQL ms (statements)", "slowest statements, ms"):
        w.add_column(c, justify="right" if c in ("chain N", "call ms", "SQL ms (statements)") else "left")
    for backend, b in backends.items():
        for n, ch in b["chains"].items():
            p = ch["sql_profile"]
            w.add_row(
                backend,
                f"{int(n):,}",
                fmt_ms(p["call_p50_ms"], 1),
                f"{p['sql_p50_ms']:.1f} ({p['statements']})",
                "\n".join(f"{x['ms']:.1f}  {x['sql'][:90]}" for x in p["top"]),
            )
    sq = backends["sqlite"]
    h = sq["http"]
    v = Table(
        title=f"Server overhead: the append-64 report over HTTP vs in process ({h['backend']}, chain {h['n']:,})",
        title_justify="left",
    )
    for c in ("path", "p50 ms", "p95 ms", "CPU p50 ms (client + server)", "n"):
        v.add_column(c, justify="left" if c == "path" else "right")
    v.add_row(
        "GET /healthz (no auth: the floor)",
        fmt_ms(h["healthz"]["p50_ms"], 2),
        fmt_ms(h["healthz"]["p95_ms"], 2),
        "",
        str(h["healthz"]["n"]),
    )
    for key, label in (("direct", "ingest_report in process"), ("http", "POST /v1/devices/me/usage (DeviceClient)")):
        v.add_row(
            label,
            fmt_ms(h[key]["p50_ms"], 2),
            fmt_ms(h[key]["p95_ms"], 2),
            fmt_ms(h[key]["cpu_p50_ms"], 2),
            str(h[key]["n"]),
        )
    v.add_row(
        "HTTP overhead (difference of medians)",
        fmt_ms(h["overhead_p50_ms"], 2),
        "",
        fmt_ms(h["overhead_cpu_p50_ms"], 2),
        "",
    )
    for case, st in sq["verify_only"].items():
        v.add_row(
            f"of the service: parse + verify only, {case} report",
            fmt_ms(st["p50_ms"], 2),
            fmt_ms(st["p95_ms"], 2),
            "",
            str(st["n"]),
        )
    return [t, u, w, v, goals_table(result)]
