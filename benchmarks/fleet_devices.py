"""Simulated devices for the fleet-load benchmark: each one polls and reports like the real agent.

A :class:`SimDevice` holds real keys (the server verifies every request's Ed25519 signature) and
what a real agent's TUF client keeps in its metadata cache: the trusted root version, the
snapshot version, the top-level targets version and the version of the one hash bin its target
path falls in. One *cycle* is what the agent does on each poll (``RemoteSource.check``):

1. send the reports that are due, each a signed ``POST`` (the agent's ``DeviceClient`` uses a
   new connection per request): an install report (:class:`~tinymlops.spec.install_report.InstallReport`)
   on one poll in ``install_every`` (a rollout in progress), and a health report
   (:class:`~tinymlops.spec.health_report.HealthReport`, with the device's context) on one poll
   in ``health_every`` (the agent sends one every ``AgentConfig.health_interval``, 30 s) when the
   server has the endpoint;
2. the TUF check python-tuf's ``Updater.refresh`` makes when nothing is new: ``GET
   <root+1>.root.json`` (404: no newer root), ``GET timestamp.json``; only when the timestamp names
   another snapshot, ``<v>.snapshot.json``, and then ``<v>.targets.json`` and the device's bin when
   the snapshot names new versions of them. Every ``GET`` is signed as
   :func:`tinymlops.edge.agent.remote.signed_headers` signs it; the two share one connection (the
   agent's urllib3 pool), which the server's keep-alive timeout (5 s) has closed by the next poll.

The next cycle starts ``interval`` (± ``jitter``) after this one *finished*, as the agent's loop
sleeps after each cycle: a slow server slows its fleet down instead of piling requests up. The
sequence of step 2 is checked against what python-tuf's real client fetches
(:func:`expected_noop_check`, compared in the benchmark before any load is sent).

Signatures of the metadata the server returns are not verified here (that is the device's CPU,
not the server's load); sizes and versions are read from the JSON.

One :class:`Fleet` runs every device in one asyncio event loop, each device with its own
connections (:class:`HttpConnection`, a minimal HTTP/1.1 client: nothing waits for a client-side
pool), and records every request: kind, when it was issued, how long it took (connecting
included), and how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.request_auth import sign_request

METADATA = "/v1/tuf/metadata"
INSTALLS = "/v1/devices/me/installs"
HEALTH = "/v1/devices/me/health"
#: python-tuf's default UpdaterConfig.max_root_rotations
MAX_ROOT_ROTATIONS = 256

#: request kinds, in the order the tables show them
KINDS = ("root_probe", "timestamp", "snapshot", "targets", "bin", "install_report", "health_report")
#: the answers that are not errors (a root probe finds 404 when no newer root exists, 200 after a rotation)
EXPECTED_STATUS = {
    "root_probe": (404, 200),
    "timestamp": (200,),
    "snapshot": (200,),
    "targets": (200,),
    "bin": (200,),
    "install_report": (201,),
    "health_report": (201,),
}


def expected_noop_check(root_version: int) -> list[tuple[str, int]]:
    """The metadata a device fetches on a check when nothing changed: (file name, HTTP status)."""
    return [(f"{root_version + 1}.root.json", 404), ("timestamp.json", 200)]


@dataclass
class RepoView:
    """The versions a device's TUF cache holds (what decides what its next check fetches)."""

    root: int
    snapshot: int
    targets: int
    bins: dict[str, int]

    @classmethod
    def from_metadata(cls, root: bytes, timestamp: bytes, snapshot: bytes) -> RepoView:
        snap_meta = json.loads(snapshot)["signed"]["meta"]
        return cls(
            root=int(json.loads(root)["signed"]["version"]),
            snapshot=int(json.loads(timestamp)["signed"]["meta"]["snapshot.json"]["version"]),
            targets=int(snap_meta["targets.json"]["version"]),
            bins={name.removesuffix(".json"): int(m["version"]) for name, m in snap_meta.items()},
        )


@dataclass
class SimDevice:
    keys: DeviceKeys
    bin_role: str
    bundle_id: str
    sha256: str
    root: int
    snapshot: int
    targets: int
    bin_version: int
    #: polls whose index % install_every == install_phase send an install report (and likewise health)
    install_phase: int = 0
    health_phase: int = 0
    polls: int = 0
    signing: Any = field(init=False, repr=False)
    device_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.signing = self.keys.signing
        self.device_id = self.keys.device_id

    def install_report(self, now: float) -> bytes:
        from tinymlops.spec.install_report import InstallReport

        report = InstallReport(
            status="installed",
            reason="bundle verified, smoke-tested and committed",
            bundle_id=self.bundle_id,
            sha256=self.sha256,
            slot="a",
            active_bundle_id=self.bundle_id,
            timings={"download_s": 0.012, "verify_s": 0.003, "smoke_s": 0.004, "total_s": 0.021},
            at=now,
        )
        return json.dumps(report.to_dict(), separators=(",", ":")).encode()

    def health_report(self, now: float, window_s: float, rng: random.Random) -> bytes:
        from tinymlops.spec.context import DeviceContext
        from tinymlops.spec.health_report import HealthReport

        predictions = rng.randint(50, 150)
        p50 = rng.uniform(0.8, 1.5)
        report = HealthReport(
            bundle_id=self.bundle_id,
            window_start=max(0.0, now - window_s),
            window_end=now,
            predictions=predictions,
            errors=0,
            latency_ms={"p50": p50, "p95": 1.6 * p50, "p99": 2.0 * p50, "max": 3.0 * p50},
            context=DeviceContext(battery=round(rng.uniform(0.2, 1.0), 2), charging=False, network="wifi"),
            at=now,
        )
        return json.dumps(report.to_dict(), separators=(",", ":")).encode()


@dataclass
class Sample:
    kind: str
    issued: float  # perf_counter
    seconds: float
    error: str | None  # None: the expected status


@dataclass
class Recording:
    """Everything one load run observed."""

    samples: list[Sample] = field(default_factory=list)
    polls: list[float] = field(default_factory=list)  # whole check (GETs) per poll, seconds
    lags: list[float] = field(default_factory=list)  # how late the event loop woke each device, seconds
    cycles: int = 0
    metadata_changes: int = 0

    def errors(self) -> Counter[str]:
        return Counter(s.error for s in self.samples if s.error is not None)


class HttpFailure(Exception):
    """A request that got no (complete) answer; ``label`` says how it failed."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


class HttpConnection:
    """One HTTP/1.1 connection, as a device opens it: requests one after the other, then closed.

    Only what the load needs (``Content-Length`` and chunked bodies, no redirects, no TLS): a
    request costs the client about a tenth of the CPU of ``httpx.AsyncClient``, whose connection pool
    rescans every connection on each request and whose ``sniffio`` lookup repeats a failed import
    per request here — with httpx the client, not the server, was the bottleneck."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes, dict[str, str]]:
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                assert self._reader is not None
                lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                lines.append(f"Content-Length: {len(body)}")
                self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
                return await self._response(self._reader)
        except TimeoutError:
            await self.close()
            raise HttpFailure("Timeout") from None
        except ConnectionRefusedError:
            await self.close()
            raise HttpFailure("ConnectionRefused") from None
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
            await self.close()
            raise HttpFailure(type(exc).__name__) from None

    async def _response(self, reader: asyncio.StreamReader) -> tuple[int, bytes, dict[str, str]]:
        status_line = await reader.readline()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HttpFailure("BadStatusLine" if status_line else "ConnectionClosed")
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readline()
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            content = b"".join(chunks)
        else:
            content = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(parts[1]), content, headers

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class Fleet:
    """Many simulated devices in one event loop, each with its own connections."""

    def __init__(
        self,
        base_url: str,
        devices: list[SimDevice],
        *,
        health_every: int,
        install_every: int,
        timeout_s: float,
        seed: int = 0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"the fleet talks plain HTTP to host:port, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port
        self.devices = devices
        self.health_every = health_every
        self.install_every = install_every
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)

    def requests_per_cycle(self) -> float:
        """Requests a cycle sends on average with nothing new in the repository."""
        reports = sum(1.0 / every for every in (self.install_every, self.health_every) if every)
        return 2.0 + reports

    def connection(self) -> HttpConnection:
        return HttpConnection(self.host, self.port, self.timeout_s)

    async def _send(
        self,
        conn: HttpConnection,
        rec: Recording,
        dev: SimDevice,
        kind: str,
        method: str,
        target: str,
        body: bytes = b"",
        *,
        close: bool = False,
    ) -> tuple[int, bytes | None]:
        """One signed request (recorded): its status (0: no answer), and its body when the status was
        an expected one."""
        headers = sign_request(dev.signing, method, target, body, timestamp=int(time.time())).headers()
        headers["User-Agent"] = "tinymlops-agent"
        if body:
            headers["Content-Type"] = "application/json"
        if close:
            headers["Connection"] = "close"
        t0 = time.perf_counter()
        error: str | None = None
        content: bytes | None = None
        status = 0
        try:
            status, got, _ = await conn.request(method, target, headers, body)
            if status in EXPECTED_STATUS[kind]:
                content = got
            else:
                error = f"HTTP {status} {_error_type(got)}".rstrip()
        except HttpFailure as exc:
            error = exc.label
        rec.samples.append(Sample(kind, t0, time.perf_counter() - t0, error))
        return status, content

    async def _report(self, rec: Recording, dev: SimDevice, kind: str, path: str, body: bytes) -> None:
        conn = self.connection()  # the agent's DeviceClient (urllib): one connection per request
        try:
            await self._send(conn, rec, dev, kind, "POST", path, body, close=True)
        finally:
            await conn.close()

    async def _cycle(self, rec: Recording, dev: SimDevice, interval: float) -> None:
        now = time.time()
        if self.install_every and dev.polls % self.install_every == dev.install_phase:
            await self._report(rec, dev, "install_report", INSTALLS, dev.install_report(now))
        if self.health_every and dev.polls % self.health_every == dev.health_phase:
            body = dev.health_report(now, interval * self.health_every, self.rng)
            await self._report(rec, dev, "health_report", HEALTH, body)
        dev.polls += 1
        t0 = time.perf_counter()
        conn = self.connection()  # the TUF fetcher's urllib3 pool: one connection for the whole check
        try:
            # python-tuf's Updater.refresh: newer roots first (404 ends the search), then the timestamp
            for _ in range(MAX_ROOT_ROTATIONS):
                status, _ = await self._send(
                    conn, rec, dev, "root_probe", "GET", f"{METADATA}/{dev.root + 1}.root.json"
                )
                if status != 200:
                    break
                dev.root += 1  # a rotated root: trusted, then look for the next one
            _, timestamp = await self._send(conn, rec, dev, "timestamp", "GET", f"{METADATA}/timestamp.json")
            if timestamp is not None:
                version = int(json.loads(timestamp)["signed"]["meta"]["snapshot.json"]["version"])
                if version != dev.snapshot:
                    rec.metadata_changes += 1
                    await self._follow_snapshot(conn, rec, dev, version)
        finally:
            await conn.close()
        rec.polls.append(time.perf_counter() - t0)
        rec.cycles += 1

    async def _follow_snapshot(self, conn: HttpConnection, rec: Recording, dev: SimDevice, version: int) -> None:
        _, snapshot = await self._send(conn, rec, dev, "snapshot", "GET", f"{METADATA}/{version}.snapshot.json")
        if snapshot is None:
            return
        meta = json.loads(snapshot)["signed"]["meta"]
        targets = int(meta["targets.json"]["version"])
        if targets != dev.targets:
            _, got = await self._send(conn, rec, dev, "targets", "GET", f"{METADATA}/{targets}.targets.json")
            if got is not None:
                dev.targets = targets
        bin_version = int(meta[f"{dev.bin_role}.json"]["version"])
        if bin_version != dev.bin_version:
            _, got = await self._send(conn, rec, dev, "bin", "GET", f"{METADATA}/{bin_version}.{dev.bin_role}.json")
            if got is not None:
                dev.bin_version = bin_version
        dev.snapshot = version

    async def _device(
        self, rec: Recording, dev: SimDevice, start: float, end: float, interval: float, jitter: float, first: float
    ) -> None:
        wake = start + first
        while wake < end:
            delay = wake - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rec.lags.append(max(0.0, time.perf_counter() - wake))
            await self._cycle(rec, dev, interval)
            wake = time.perf_counter() + interval * (1.0 + jitter * (2.0 * self.rng.random() - 1.0))

    async def run(self, duration_s: float, interval_s: float, jitter: float) -> tuple[Recording, float]:
        """Every device polls every ``interval_s`` (± ``jitter``) for ``duration_s``; the first polls
        are spread evenly over one interval. Returns the recording and the wall time until the last
        cycle finished (cycles started before the end are waited for).

        Poll counts start again at 0 for each run, so that even in a short run where each device polls
        once the report mix is the planned one (the devices' report phases are spread evenly)."""
        for dev in self.devices:
            dev.polls = 0
        rec = Recording()
        start = time.perf_counter()
        end = start + duration_s
        offsets = np.linspace(0.0, interval_s, num=len(self.devices), endpoint=False)
        order = self.rng.sample(range(len(self.devices)), len(self.devices))
        await asyncio.gather(
            *(
                self._device(rec, dev, start, end, interval_s, jitter, float(offsets[order[i]]))
                for i, dev in enumerate(self.devices)
            )
        )
        return rec, time.perf_counter() - start


def _error_type(body: bytes) -> str:
    """The ``error.type`` of the server's JSON error body, or ''."""
    try:
        return str(json.loads(body)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return ""


__all__ = [
    "EXPECTED_STATUS",
    "HEALTH",
    "INSTALLS",
    "KINDS",
    "METADATA",
    "Fleet",
    "HttpConnection",
    "HttpFailure",
    "Recording",
    "RepoView",
    "Sample",
    "SimDevice",
    "expected_noop_check",
]
