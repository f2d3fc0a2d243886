"""Fleet load: 1,000 simulated devices poll the update repository and report against one
``tinymlops serve`` process, on SQLite and on PostgreSQL (issue 5).

Per backend:

* **setup** (not measured, but timed): a workspace with a tiny real ONNX model; ``tinymlops
  serve`` started as a separate process the way users run it (one uvicorn worker, ``--workspace``,
  ``TINYMLOPS_DB_URL`` for PostgreSQL, on a fresh database dropped afterwards); enrolment tokens
  made with :class:`~tinymlops.devices.enrolment.EnrolmentService` directly, then every device
  enrols **through the API** (``POST /v1/devices/enrol``, signed by its own new Ed25519 key); one
  release of the model to all of them through the API (``POST /v1/releases``: a bundle per device,
  encrypted to it, published through TUF). One device then runs python-tuf's real client
  (``UpdateClient`` over the agent's signed ``HttpFetcher``) twice, and what its second, no-op
  check fetched must be what the simulated devices fetch (:mod:`fleet_devices`), or the run stops.
* **headline**: every device polls every ~10 s (±10 %) for 60 s. A poll is the agent's cycle: an
  install report on one poll in six (a rollout in progress), a health report on one poll in three
  (the agent's 30 s health interval) when the server has ``POST /v1/devices/me/health``, then the
  TUF check (``<root+1>.root.json`` → 404, ``timestamp.json``): 2.5 requests per poll, 250 req/s
  offered. Every request is signed with the device's key.
* **sweep**: the same fleet with shorter poll intervals, so the offered rate steps up, ~10 s per
  step, until p95 > 200 ms or a request fails; the knee is the last step that passed and the first
  that did not.
* **profile** (when ``py-spy`` is installed): the server under the knee's load, sampled by
  py-spy from outside — once with ``--gil`` (what holds the interpreter) and once with ``--idle``
  (every thread, waits included) — grouped into cost categories (:mod:`server_probe`); the raw
  stacks are kept beside the results (``results/fleet_load-<backend>/pyspy-*.txt``).

The load generator is one asyncio event loop with ``httpx.AsyncClient`` in this process, sharing
the machine with the server: client, server, PostgreSQL and machine-wide CPU are measured side by
side (:class:`server_probe.CpuMeter`) so each table says which of them was busy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, fmt_ms, goal, goals_table, tiny_onnx
from fleet_devices import KINDS, Fleet, Recording, RepoView, SimDevice, expected_noop_check
from rich.table import Table
from server_probe import CpuMeter, find_pyspy, pyspy_command, summarize_profile

NAME = "fleet_load"
TITLE = "A fleet of simulated devices polling TUF and reporting against `tinymlops serve` (SQLite, PostgreSQL)"
ENV_PG = "TINYMLOPS_TEST_PG_URL"
GOAL_P95_MS = 200.0
PROFILE = "rpi-4"
MODEL = "fleet"


def settings(quick: bool) -> dict[str, Any]:
    common = {
        "jitter": 0.1,  # the agent's default poll jitter (±10 %)
        "install_every": 6,  # an install report on one poll in six: a rollout in progress
        "health_every": 3,  # a health report every third poll: the agent's 30 s health interval
        "timeout_s": 10.0,  # a request not answered by then is an error ("Timeout")
        "enrol_concurrency": 16,
        "artifacts": str(RESULTS),  # where py-spy's raw stacks are kept
    }
    if quick:
        return {
            **common,
            "devices": 50,
            "interval_s": 2.0,
            "duration_s": 5.0,
            "sweep_rps": [100, 400],
            "step_s": 2.5,
            "profile_s": 2.0,
        }
    return {
        **common,
        "devices": 1000,
        "interval_s": 10.0,
        "duration_s": 60.0,
        "sweep_rps": [100, 150, 200, 250, 300, 400, 600],
        "step_s": 10.0,
        "profile_s": 12.0,
    }


# --- the server as users run it -------------------------------------------------------------------
class ServeProcess:
    """``python -m tinymlops serve`` over a workspace, in its own process (log to a file)."""

    def __init__(self, workspace: Path, log: Path, *, db_url: str | None = None, pythonpath: str | None = None):
        env = {**os.environ, "COLUMNS": "200"}
        if db_url:
            env["TINYMLOPS_DB_URL"] = db_url
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "tinymlops", "serve", "--port", "0", "--workspace", str(workspace)]
        self.log = log
        self.proc = subprocess.Popen(
            [*cmd, "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while True:
            match = re.search(r"control plane on (http://127\.0\.0\.1:\d+)", log.read_text())
            if match:
                self.url = match.group(1)
                break
            self._check(deadline)
            time.sleep(0.05)
        import httpx

        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            self._check(deadline)
            time.sleep(0.05)

    def _check(self, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"tinymlops serve exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"tinymlops serve did not start: {self.log.read_text()[-2000:]}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --- setup -----------------------------------------------------------------------------------------
def _signed(keys: Any, method: str, target: str, body: bytes = b"") -> dict[str, str]:
    from tinymlops.devices.request_auth import sign_request

    headers = sign_request(keys.signing, method, target, body, timestamp=int(time.time())).headers()
    if body:
        headers["Content-Type"] = "application/json"
    return headers


def _ok(response: Any, what: str, status: int = 200) -> Any:
    if response.status_code != status:
        raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


async def _enrol_and_release(url: str, keys: list[Any], tokens: list[str], admin_key: str, s: dict[str, Any]) -> Any:
    import httpx

    from tinymlops.devices.client import enrolment_body

    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=s["enrol_concurrency"])
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(600.0)) as http:
        gate = asyncio.Semaphore(s["enrol_concurrency"])

        async def enrol(k: Any, token: str) -> None:
            body = json.dumps(enrolment_body(k, token, PROFILE), separators=(",", ":")).encode()
            async with gate:
                r = await http.post(
                    "/v1/devices/enrol", content=body, headers=_signed(k, "POST", "/v1/devices/enrol", body)
                )
            _ok(r, f"enrolment of device {k.device_id}", 201)

        t0 = time.perf_counter()
        await asyncio.gather(*(enrol(k, t) for k, t in zip(keys, tokens, strict=True)))
        out["enrol_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        r = await http.post(
            "/v1/releases",
            json={"model": MODEL, "devices": [k.device_id for k in keys]},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        out["release"] = _ok(r, "release", 201)
        out["release_s"] = time.perf_counter() - t0

        paths = _ok(await http.get("/openapi.json"), "openapi")["paths"]
        out["health_endpoint"] = "post" in paths.get("/v1/devices/me/health", {})
        boot = "/v1/devices/me/bootstrap"
        out["bootstrap"] = _ok(await http.get(boot, headers=_signed(keys[0], "GET", boot)), "bootstrap")
    return out


def _calibrate(url: str, keys: Any, root: bytes, data_dir: Path) -> dict[str, Any]:
    """Run python-tuf's real client twice as device ``keys``; what it fetched, and its cache."""
    from tuf.ngclient import FetcherInterface

    from tinymlops.edge.agent.remote import signed_headers
    from tinymlops.edge.updates import HttpFetcher, UpdateClient
    from tinymlops.release.service import REPOSITORY_PATH
    from tinymlops.spec.update import device_target_path

    class Recorder(FetcherInterface):
        def __init__(self) -> None:
            self.inner = HttpFetcher(signed_headers(keys))
            self.seen: list[tuple[str, int]] = []

        def _fetch(self, url: str) -> Any:
            name = url.rpartition("/")[2]
            try:
                chunks = list(self.inner.fetch(url))
            except Exception as exc:
                self.seen.append((name, int(getattr(exc, "status_code", 0) or 0)))
                raise
            self.seen.append((name, 200))
            return iter(chunks)

    UpdateClient.enrol(data_dir, root)
    recorder = Recorder()
    client = UpdateClient(data_dir, url + REPOSITORY_PATH, fetcher=recorder)
    target = device_target_path(keys.device_id)
    offer = client.check(target)
    first = list(recorder.seen)
    recorder.seen.clear()
    again = client.check(target)
    noop = list(recorder.seen)
    if offer is None or again is None:
        raise RuntimeError(f"the real TUF client found no bundle for {target}")
    md = client.metadata_dir
    return {
        "first_check": first,
        "noop_check": noop,
        "offer": offer.to_dict(),
        "timestamp": (md / "timestamp.json").read_bytes(),
        "snapshot": (md / "snapshot.json").read_bytes(),
        "targets": (md / "targets.json").read_bytes(),
    }


class Setup:
    """A workspace, its server process and the enrolled fleet (one per backend)."""

    def __init__(self, tmp: Path, db_url: str | None, s: dict[str, Any], *, pythonpath: str | None = None):
        from tuf.api.metadata import Metadata, Targets

        from tinymlops.access.service import ApiKeyService
        from tinymlops.crypto.keys import DeviceKeys
        from tinymlops.devices.enrolment import EnrolmentService
        from tinymlops.spec.update import device_target_path
        from tinymlops.workspace import Workspace

        self.info: dict[str, Any] = {}
        t0 = time.perf_counter()
        with Workspace.init(tmp / "ws", db_url=db_url) as ws:
            ws.registry.register(MODEL, tiny_onnx("fleet"))
            _, admin_key = ApiKeyService(ws.engine).create("fleet-load", "admin", created_by="bench_fleet_load")
            enrolment = EnrolmentService(ws.engine, ws.targets.get)
            tokens = [enrolment.create_token(ttl_s=3600, profile=PROFILE)[1] for _ in range(s["devices"])]
        keys = [DeviceKeys.generate() for _ in range(s["devices"])]
        self.info["workspace_s"] = time.perf_counter() - t0
        self.server = ServeProcess(tmp / "ws", tmp / "serve.log", db_url=db_url, pythonpath=pythonpath)
        try:
            got = asyncio.run(_enrol_and_release(self.server.url, keys, tokens, admin_key, s))
            root = base64.b64decode(got["bootstrap"]["tuf_root"])
            cal = _calibrate(self.server.url, keys[0], root, tmp / "calibration-device")
            view = RepoView.from_metadata(root, cal["timestamp"], cal["snapshot"])
            expected = expected_noop_check(view.root)
            if cal["noop_check"] != expected:
                raise RuntimeError(
                    f"python-tuf's no-op check fetched {cal['noop_check']}, the simulated devices would fetch "
                    f"{expected}: update fleet_devices.py to match the real client"
                )
            succinct = Metadata[Targets].from_bytes(cal["targets"]).signed.delegations.succinct_roles
            assignments = {a["device_id"]: a for a in got["release"]["assignments"]}
            self.devices = []
            for i, k in enumerate(keys):
                a = assignments[k.device_id]
                if a["status"] != "published":
                    raise RuntimeError(f"device {k.device_id} got no bundle: {a['reason']}")
                role = succinct.get_role_for_target(device_target_path(k.device_id))
                self.devices.append(
                    SimDevice(
                        keys=k,
                        bin_role=role,
                        bundle_id=a["bundle_id"],
                        sha256=a["bundle_sha256"],
                        root=view.root,
                        snapshot=view.snapshot,
                        targets=view.targets,
                        bin_version=view.bins[role],
                        install_phase=i % s["install_every"] if s["install_every"] else 0,
                        health_phase=(i // 2) % s["health_every"] if s["health_every"] else 0,
                    )
                )
        except Exception as exc:
            self.server.stop()
            raise RuntimeError(f"{exc}\n--- server log (tail) ---\n{self.server.log_tail()}") from exc
        except BaseException:
            self.server.stop()
            raise
        self.health = bool(got["health_endpoint"])
        self.info.update(
            enrol_s=got["enrol_s"],
            enrolments_per_s=len(keys) / got["enrol_s"],
            enrolment="tokens from EnrolmentService directly; each device enrolled through POST /v1/devices/enrol",
            release_s=got["release_s"],
            bundles=len(assignments),
            health_endpoint=self.health,
            tuf={"root": view.root, "snapshot": view.snapshot, "targets": view.targets, "bins": len(view.bins) - 1},
            real_client_first_check=cal["first_check"],
            real_client_noop_check=cal["noop_check"],
        )

    def fleet(self, s: dict[str, Any], seed: int) -> Fleet:
        return Fleet(
            self.server.url,
            self.devices,
            health_every=s["health_every"] if self.health else 0,
            install_every=s["install_every"],
            timeout_s=s["timeout_s"],
            seed=seed,
        )

    def close(self) -> None:
        self.server.stop()


# --- one load step -----------------------------------------------------------------------------------
def _pcts(seconds: list[float]) -> dict[str, float | int]:
    if not seconds:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(seconds) * 1e3
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "n": int(a.size),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(a.max()),
    }


def summarize(rec: Recording, wall_s: float, cpu: dict[str, Any], *, label: str, planned_rps: float) -> dict[str, Any]:
    """Latency is of every request (failed ones included), from when it was issued to its last byte."""
    kinds = {}
    for kind in KINDS:
        mine = [x for x in rec.samples if x.kind == kind]
        if mine:
            kinds[kind] = {**_pcts([x.seconds for x in mine]), "errors": sum(x.error is not None for x in mine)}
    ok = sum(x.error is None for x in rec.samples)
    return {
        "label": label,
        "planned_rps": planned_rps,
        "wall_s": wall_s,
        "requests": len(rec.samples),
        "achieved_rps": len(rec.samples) / wall_s,
        "ok_rps": ok / wall_s,
        "polls_per_s": rec.cycles / wall_s,
        "overall": _pcts([x.seconds for x in rec.samples]),
        "kinds": kinds,
        "poll_check": _pcts(rec.polls),
        "errors": dict(rec.errors().most_common()),
        "error_count": len(rec.samples) - ok,
        "metadata_changes": rec.metadata_changes,
        "loop_lag": _pcts(rec.lags),
        "cpu": cpu,
    }


def load_step(
    setup: Setup, meter: CpuMeter, s: dict[str, Any], *, label: str, duration_s: float, interval_s: float, seed: int
) -> dict[str, Any]:
    fleet = setup.fleet(s, seed)
    first = meter.mark()
    rec, wall = asyncio.run(fleet.run(duration_s, interval_s, s["jitter"]))
    cpu = meter.window(first, meter.mark()).to_dict()
    planned = len(setup.devices) * fleet.requests_per_cycle() / interval_s
    return summarize(rec, wall, cpu, label=label, planned_rps=planned)


def passed(step: dict[str, Any]) -> bool:
    p95 = step["overall"]["p95_ms"]
    return step["error_count"] == 0 and p95 is not None and p95 < GOAL_P95_MS


def _interval_for(rps: float, setup: Setup, s: dict[str, Any]) -> float:
    return len(setup.devices) * setup.fleet(s, 0).requests_per_cycle() / rps


# --- profiling -----------------------------------------------------------------------------------
def profile(setup: Setup, s: dict[str, Any], rps: float, out_dir: Path) -> dict[str, Any]:
    pyspy = find_pyspy()
    if pyspy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy, or set TINYMLOPS_PYSPY to its path)"}
    interval = _interval_for(rps, setup, s)
    half = s["profile_s"] / 2
    runs: dict[str, Any] = {}

    out_dir.mkdir(parents=True, exist_ok=True)

    async def sample(mode: str) -> tuple[int, str]:
        out = out_dir / f"pyspy-{mode}.txt"
        cmd = pyspy_command(pyspy, setup.server.pid, half, out, gil=mode == "gil")
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0 or not out.is_file():
            return proc.returncode or 1, err.decode("utf-8", "replace")[-500:]
        return 0, out.read_text()

    async def under_load() -> dict[str, tuple[int, str]]:
        fleet = setup.fleet(s, 99)
        load = asyncio.create_task(fleet.run(2 * half + 2.0, interval, s["jitter"]))
        await asyncio.sleep(1.0)  # let the load settle first
        got = {"gil": await sample("gil"), "all": await sample("all")}
        await load
        return got

    for mode, (code, text) in asyncio.run(under_load()).items():
        if code != 0:
            runs[mode] = {"error": f"py-spy failed ({code}): {text}"}
        else:
            runs[mode] = {**summarize_profile(text).to_dict(), "raw": str(out_dir / f"pyspy-{mode}.txt")}
    return {"offered_rps": rps, "interval_s": interval, "seconds_each": half, "py_spy": pyspy, **runs}


# --- one backend ---------------------------------------------------------------------------------
def run_backend(
    name: str, db_url: str | None, s: dict[str, Any], *, database: str | None = None, pythonpath: str | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tinymlops-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        setup = Setup(tmp, db_url, s, pythonpath=pythonpath)
        try:
            with CpuMeter(setup.server.pid, database=database) as meter:
                headline = load_step(
                    setup, meter, s, label="headline", duration_s=s["duration_s"], interval_s=s["interval_s"], seed=1
                )
                sweep: list[dict[str, Any]] = []
                for n, rps in enumerate(s["sweep_rps"]):
                    step = load_step(
                        setup,
                        meter,
                        s,
                        label=f"sweep {rps}",
                        duration_s=s["step_s"],
                        interval_s=_interval_for(rps, setup, s),
                        seed=10 + n,
                    )
                    sweep.append(step)
                    if not passed(step):
                        break
            knee = _knee(sweep)
            rps = knee["first_failing_rps"] or s["sweep_rps"][-1]
            prof = profile(setup, s, rps, Path(s["artifacts"]) / f"{NAME}-{name}") if s["profile_s"] else {}
            return {"setup": setup.info, "headline": headline, "sweep": sweep, "knee": knee, "profile": prof}
        finally:
            setup.close()


def _knee(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    good = [x for x in sweep if passed(x)]
    bad = next((x for x in sweep if not passed(x)), None)
    return {
        "last_passing_rps": good[-1]["planned_rps"] if good else None,
        "last_passing_achieved_rps": good[-1]["achieved_rps"] if good else None,
        "first_failing_rps": bad["planned_rps"] if bad else None,
        "first_failing_achieved_rps": bad["achieved_rps"] if bad else None,
        "max_achieved_rps": max((x["achieved_rps"] for x in sweep), default=None),
        "reason": None
        if bad is None
        else (f"{bad['error_count']} errors" if bad["error_count"] else f"p95 {bad['overall']['p95_ms']:.0f} ms"),
    }


def _pg(url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database, autocommit=True
    ) as conn:
        conn.execute(sql)


def _postgres_url() -> tuple[str | None, str]:
    """The PostgreSQL URL: $TINYMLOPS_TEST_PG_URL, else what scripts/postgres.sh start prints."""
    if os.environ.get(ENV_PG):
        return os.environ[ENV_PG], f"${ENV_PG}"
    script = Path(__file__).resolve().parent.parent / "scripts" / "postgres.sh"
    try:
        done = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"scripts/postgres.sh could not run: {exc}"
    url = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not url.startswith("postgresql"):
        return None, f"scripts/postgres.sh start failed ({done.returncode}): {done.stderr.strip()[-300:]}"
    return url, "scripts/postgres.sh start"


def run_postgres(url: str, s: dict[str, Any], **kw: Any) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    name = f"bench_fleet_{uuid.uuid4().hex[:12]}"
    _pg(url, f'CREATE DATABASE "{name}"')
    try:
        db_url = make_url(url).set(database=name).render_as_string(hide_password=False)
        return run_backend("postgresql", db_url, s, database=name, **kw)
    finally:
        _pg(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(quick: bool, overrides: dict[str, Any] | None = None, *, postgres: bool = True) -> dict[str, Any]:
    s = {**settings(quick), **(overrides or {})}
    backends: dict[str, Any] = {"sqlite": run_backend("sqlite", None, s)}
    skipped: dict[str, str] = {}
    if postgres:
        url, source = _postgres_url()
        if url is None:
            skipped["postgresql"] = source
        else:
            backends["postgresql"] = run_postgres(url, s)
    else:
        skipped["postgresql"] = "not asked for"
    goals = []
    for kind, b in backends.items():
        h = b["headline"]
        goals.append(
            goal(
                f"{kind}: {s['devices']} devices polling every {s['interval_s']:.0f} s "
                f"for {s['duration_s']:.0f} s, zero errors",
                h["error_count"] == 0,
                f"{h['error_count']} errors of {h['requests']} requests"
                + (f" ({', '.join(f'{k}: {v}' for k, v in h['errors'].items())})" if h["errors"] else ""),
                "every request's status against the one expected (404 for the root probe, 201 for reports)",
            )
        )
        goals.append(
            goal(
                f"{kind}: p95 latency under {GOAL_P95_MS:.0f} ms at that load",
                h["overall"]["p95_ms"] is not None and h["overall"]["p95_ms"] < GOAL_P95_MS,
                f"p95 {fmt_ms(h['overall']['p95_ms'], 1)} ms, p99 {fmt_ms(h['overall']['p99_ms'], 1)} ms at "
                f"{h['achieved_rps']:.0f} req/s; knee {_knee_text(b['knee'])}",
                "all requests, issue to last byte, client on the same 2 cores",
            )
        )
    headline = {
        kind: {
            "rps": b["headline"]["achieved_rps"],
            "p95_ms": b["headline"]["overall"]["p95_ms"],
            "errors": b["headline"]["error_count"],
            "knee_last_passing_rps": b["knee"]["last_passing_rps"],
            "max_achieved_rps": b["knee"]["max_achieved_rps"],
        }
        for kind, b in backends.items()
    }
    return {"settings": s, "backends": backends, "skipped": skipped, "goals": goals, "headline": headline}


def _knee_text(knee: dict[str, Any]) -> str:
    if knee["first_failing_rps"] is None:
        return f"not reached (passed up to {knee['last_passing_rps']:.0f} req/s offered)"
    last = f"{knee['last_passing_rps']:.0f}" if knee["last_passing_rps"] else "none"
    return f"between {last} and {knee['first_failing_rps']:.0f} req/s offered ({knee['reason']})"


# --- tables ----------------------------------------------------------------------------------------
def _step_row(step: dict[str, Any]) -> list[str]:
    cpu = step["cpu"]
    o = step["overall"]
    errors = ", ".join(f"{k} ×{v}" for k, v in step["errors"].items()) or "0"
    return [
        step["label"],
        f"{step['planned_rps']:.0f}",
        f"{step['achieved_rps']:.0f}",
        f"{step['polls_per_s']:.0f}",
        fmt_ms(o["p50_ms"], 1),
        fmt_ms(o["p95_ms"], 1),
        fmt_ms(o["p99_ms"], 1),
        errors,
        f"{cpu['client_pct']:.0f}%",
        f"{cpu['server_pct']:.0f}%",
        "-" if cpu["database_pct"] is None else f"{cpu['database_pct']:.0f}%",
        f"{cpu['others_pct']:.0f}%",
        fmt_ms(step["loop_lag"]["p99_ms"], 1),
    ]


def render(result: dict[str, Any]) -> list[Table]:
    s = result["settings"]
    tables: list[Table] = []
    for kind, b in result["backends"].items():
        info = b["setup"]
        t = Table(
            title=f"{kind}: {s['devices']} devices, one `tinymlops serve` process "
            f"(enrolled in {info['enrol_s']:.1f} s through the API, release of {info['bundles']} bundles "
            f"{info['release_s']:.1f} s; health reports: {'yes' if info['health_endpoint'] else 'no endpoint'})",
            title_justify="left",
        )
        for c in ("step", "offered req/s", "achieved", "polls/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
            t.add_column(c, justify="left" if c in ("step", "errors") else "right")
        for c in ("client CPU", "server CPU", "db CPU", "others", "loop lag p99"):
            t.add_column(c, justify="right")
        for step in [b["headline"], *b["sweep"]]:
            t.add_row(*_step_row(step))
        tables.append(t)

        k = Table(title=f"{kind}: latency by request kind (ms, p50 / p95 / p99)", title_justify="left")
        k.add_column("step")
        kinds = [x for x in KINDS if any(x in st["kinds"] for st in [b["headline"], *b["sweep"]])]
        for x in [*kinds, "poll_check"]:
            k.add_column(x, justify="right")
        for step in [b["headline"], *b["sweep"]]:
            cells = []
            for x in kinds:
                v = step["kinds"].get(x)
                cells.append("-" if v is None else f"{v['p50_ms']:.0f} / {v['p95_ms']:.0f} / {v['p99_ms']:.0f}")
            pc = step["poll_check"]
            cells.append("-" if not pc["n"] else f"{pc['p50_ms']:.0f} / {pc['p95_ms']:.0f} / {pc['p99_ms']:.0f}")
            k.add_row(step["label"], *cells)
        tables.append(k)

        prof = b.get("profile") or {}
        if prof.get("skipped"):
            p = Table(title=f"{kind}: server profile skipped — {prof['skipped']}", title_justify="left")
            p.add_column("")
            tables.append(p)
        elif prof:
            modes = (("gil", "the thread holding the GIL"), ("all", "all threads, waiting included"))
            for mode, what in modes:
                got = prof.get(mode, {})
                p = Table(
                    title=f"{kind}: server profile at {prof['offered_rps']:.0f} req/s offered, py-spy {what} "
                    f"({got.get('samples', 0)} samples)",
                    title_justify="left",
                )
                p.add_column("category (innermost known layer)")
                p.add_column("share", justify="right")
                if "error" in got:
                    p.add_row(got["error"], "")
                for c in got.get("categories", []):
                    p.add_row(c["category"], f"{100 * c['share']:.1f}%")
                tables.append(p)
            fn = Table(title=f"{kind}: tinymlops functions holding the GIL (inclusive)", title_justify="left")
            fn.add_column("function")
            fn.add_column("share", justify="right")
            for f in prof.get("gil", {}).get("top_tinymlops_inclusive", [])[:8]:
                fn.add_row(f["frame"], f"{100 * f['share']:.1f}%")
            tables.append(fn)
    if result["skipped"]:
        sk = Table(title="Skipped", title_justify="left")
        sk.add_column("backend")
        sk.add_column("why")
        for kind, why in result["skipped"].items():
            sk.add_row(kind, why)
        tables.append(sk)
    tables.append(goals_table(result))
    return tables
