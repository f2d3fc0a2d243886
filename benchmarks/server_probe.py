"""Watching a server under load from outside: CPU time of processes, and where a sampling
profiler (py-spy) finds the server's time going.

:class:`CpuMeter` samples, every ``period`` seconds in a thread, the CPU time (user + system,
all threads) of the server process, of this process (the load generator), of the PostgreSQL
backends serving one database (found by their process title, ``postgres: <user> <db> …``) and of
the whole machine (``/proc/stat``), so a run can say who was busy: the server, the client, the
database, or somebody else on the machine. Linux only (``/proc``).

:func:`profile_server` attaches ``py-spy record`` (``--gil``: only the thread holding the GIL is
sampled, so the samples show what uses the interpreter; ``--idle`` without it shows where threads
wait) and :func:`summarize_profile` groups the raw stacks into cost categories, attributing each
sample to the innermost frame that belongs to a known layer.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
PYSPY_ENV = "TINYMLOPS_PYSPY"


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return (total - idle) / TICK, total / TICK


def postgres_backends(database: str) -> list[int]:
    """PIDs of the PostgreSQL backends connected to ``database`` (by their process title)."""
    out = []
    needle = f" {database} "
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            title = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and needle in title:
            out.append(int(entry.name))
    return out


@dataclass
class CpuWindow:
    """CPU used during one window, as a percentage of one core (100 = one core busy all the time)."""

    seconds: float
    server_pct: float
    client_pct: float
    database_pct: float | None
    machine_pct: float  # every process on the machine, all cores (200 = both cores of a 2-core machine)

    @property
    def others_pct(self) -> float:
        return max(0.0, self.machine_pct - self.server_pct - self.client_pct - (self.database_pct or 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "server_pct": self.server_pct,
            "client_pct": self.client_pct,
            "database_pct": self.database_pct,
            "machine_pct": self.machine_pct,
            "others_pct": self.others_pct,
        }


@dataclass
class _Reading:
    t: float
    server: float
    client: float
    machine: float
    backends: dict[int, float]


@dataclass
class CpuMeter:
    """Samples CPU time in a background thread; :meth:`window` gives the usage between two marks."""

    server_pid: int
    database: str | None = None
    period: float = 0.25
    _readings: list[_Reading] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _read(self) -> _Reading:
        backends: dict[int, float] = {}
        if self.database is not None:
            for pid in postgres_backends(self.database):
                cpu = process_cpu_s(pid)
                if cpu is not None:
                    backends[pid] = cpu
        return _Reading(
            t=time.perf_counter(),
            server=process_cpu_s(self.server_pid) or 0.0,
            client=time.process_time(),
            machine=machine_busy_s()[0],
            backends=backends,
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            reading = self._read()
            with self._lock:
                self._readings.append(reading)

    def __enter__(self) -> CpuMeter:
        self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def mark(self) -> int:
        """Take a reading now; its index is a window boundary."""
        reading = self._read()
        with self._lock:
            self._readings.append(reading)
            return len(self._readings) - 1

    def window(self, first: int, last: int) -> CpuWindow:
        with self._lock:
            readings = self._readings[first : last + 1]
        a, b = readings[0], readings[-1]
        dt = max(b.t - a.t, 1e-9)
        database: float | None = None
        if self.database is not None:
            # a backend's CPU counts from its first reading in the window (0 if it was born in it)
            seen: dict[int, tuple[float, float]] = {}
            for r in readings:
                for pid, cpu in r.backends.items():
                    start = seen[pid][0] if pid in seen else (cpu if r is a else 0.0)
                    seen[pid] = (start, cpu)
            database = 100.0 * sum(end - start for start, end in seen.values()) / dt
        return CpuWindow(
            seconds=dt,
            server_pct=100.0 * (b.server - a.server) / dt,
            client_pct=100.0 * (b.client - a.client) / dt,
            database_pct=database,
            machine_pct=100.0 * (b.machine - a.machine) / dt,
        )


# --- profiling ---------------------------------------------------------------------------------
def find_pyspy() -> str | None:
    """``$TINYMLOPS_PYSPY``, else ``py-spy`` on the PATH or beside this Python."""
    given = os.environ.get(PYSPY_ENV)
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(os.sys.executable).parent))


def pyspy_command(pyspy: str, pid: int, seconds: float, out: Path, *, gil: bool) -> list[str]:
    cmd = [pyspy, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "200"]
    cmd += ["--format", "raw", "--output", str(out), "--nonblocking"]
    cmd += ["--gil"] if gil else ["--idle"]  # --idle: threads that wait are sampled too
    return cmd


def _modules(*names: str) -> re.Pattern[str]:
    """Frames of code in these packages/modules (py-spy writes ``function (path/relative/to/sys.path.py:line)``)."""
    return re.compile(r"\((?:[^()]*/)?(?:" + "|".join(names) + r")[/.]")


#: (category, pattern on a frame), tried from the innermost frame outwards; the first frame that
#: matches any pattern decides the sample's category
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Ed25519 verify / sign (cryptography)", _modules("cryptography", r"tinymlops/crypto/signing")),
    (
        "database driver: execute / commit / connect (SQLite or psycopg work, lock waits)",
        re.compile(
            r"^(?:do_execute|do_commit|do_rollback|do_executemany|do_ping|connect) \((?:[^()]*/)?sqlalchemy/"
            r"|\((?:[^()]*/)?psycopg/"
        ),
    ),
    ("SQLAlchemy ORM / Core (Python)", _modules("sqlalchemy")),
    ("pydantic validation / serialization", _modules("pydantic", "pydantic_core")),
    ("JSON encode / decode (stdlib json)", _modules("json")),
    ("HTTP parsing (h11)", _modules("h11")),
    ("uvicorn (protocol, connections)", _modules("uvicorn")),
    ("FastAPI / Starlette (routing, dependencies, responses)", _modules("fastapi", "starlette")),
    (
        "thread pool hand-off, event loop, locks (anyio / asyncio / threading)",
        _modules("anyio", "asyncio", "concurrent", "threading", "selectors", "queue"),
    ),
    ("TUF metadata serving (tinymlops.release)", _modules(r"tinymlops/release")),
    (
        "request authentication (tinymlops.devices, server deps)",
        _modules(r"tinymlops/devices", r"tinymlops/server/deps"),
    ),
    ("tinymlops (other)", re.compile(r"\((?:[^()]*/)?tinymlops/(?!__main__|cli/)")),
)

#: samples of threads with nothing to do (seen with ``--idle``), recognized on the whole stack
IDLE: tuple[tuple[str, re.Pattern[str], re.Pattern[str]], ...] = (
    (
        "idle: thread-pool worker waiting for work",
        re.compile(r"WorkerThread\.run \("),
        re.compile(r"^(?:\w+\.)?(?:wait|get|_wait_for_tstate_lock) \((?:[^()]*/)?(?:threading|queue)\.py"),
    ),
    (
        "idle: event loop waiting in select()",
        re.compile(r""),
        re.compile(r"^(?:\w+\.)?(?:select|poll) \((?:[^()]*/)?selectors\.py"),
    ),
)

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


@dataclass
class ProfileSummary:
    samples: int
    categories: list[tuple[str, float]]  # (category, share of samples)
    leaves: list[tuple[str, float]]  # innermost frames
    tinymlops: list[tuple[str, float]]  # tinymlops functions, inclusive

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "categories": [{"category": c, "share": s} for c, s in self.categories],
            "top_leaf_frames": [{"frame": f, "share": s} for f, s in self.leaves],
            "top_tinymlops_inclusive": [{"frame": f, "share": s} for f, s in self.tinymlops],
        }


def _short(frame: str) -> str:
    m = re.match(r"^(?P<fn>.*?) \((?P<file>.*?)(:(?P<line>\d+))?\)$", frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3", "/src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('fn')} ({path})"


def summarize_profile(raw: str, top: int = 12) -> ProfileSummary:
    """Group py-spy's raw (collapsed) stacks into categories and top frames."""
    cats: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        count = int(m.group("count"))
        frames = m.group("stack").split(";")
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaves[_short(frames[-1])] += count
        category = "other (interpreter, stdlib)"
        stack = ";".join(frames)
        idle = next((name for name, whole, leaf in IDLE if whole.search(stack) and leaf.search(frames[-1])), None)
        for frame in [] if idle else reversed(frames):
            hit = next((name for name, pattern in CATEGORIES if pattern.search(frame)), None)
            if hit is not None:
                category = hit
                break
        cats[idle or category] += count
        for frame in {_short(f) for f in frames if "tinymlops/" in f and "tinymlops/__main__" not in f}:
            inclusive[frame] += count
    if not total:
        return ProfileSummary(0, [], [], [])

    def shares(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in c.most_common(top)]

    return ProfileSummary(total, shares(cats), shares(leaves), shares(inclusive))


__all__ = [
    "CATEGORIES",
    "CpuMeter",
    "CpuWindow",
    "ProfileSummary",
    "find_pyspy",
    "machine_busy_s",
    "postgres_backends",
    "process_cpu_s",
    "pyspy_command",
    "summarize_profile",
]
