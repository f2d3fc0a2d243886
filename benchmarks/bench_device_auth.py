"""Device authentication: the cost of signing and verifying a request, and of authenticated
requests against a real control plane (uvicorn on 127.0.0.1, SQLite workspace; PostgreSQL too when
``TINYMLOPS_TEST_PG_URL`` is set).

Measured per backend, with the device client devices use (``DeviceClient``, urllib):
``GET /healthz`` (no authentication, the floor any request pays), ``GET /v1/devices/me`` signed
(the server verifies the Ed25519 signature, records the nonce and ``last_seen`` in one
transaction) and with a bearer token (hash lookup, ``last_seen``), enrolment of a new device, and
the throughput of signed requests from several devices at once (threads, each its own device).
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import fmt_ms, goal, goals_table, stats_ms, time_calls
from rich.table import Table

NAME = "device_auth"
TITLE = "Device request authentication (signing, verification, signed requests to a live server)"
ENV_PG = "TINYMLOPS_TEST_PG_URL"
GOAL_VERIFY_MS = 1.0
GOAL_SIGNED_MS = 25.0


def _settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"pure_runs": 300, "requests": 60, "enrolments": 5, "threads": 4, "per_thread": 15}
    return {"pure_runs": 3000, "requests": 400, "enrolments": 30, "threads": 8, "per_thread": 50}


def _pure(runs: int) -> dict[str, Any]:
    from tinymlops.crypto.keys import generate_signing_key
    from tinymlops.devices.request_auth import sign_request, verify_request

    key = generate_signing_key()
    body = b'{"x": 1}' * 64
    auth = sign_request(key, "POST", "/v1/devices/me/token", body)
    pub = key.public_key()
    now = time.time()

    def verify() -> None:
        verify_request(auth, method="POST", target="/v1/devices/me/token", body=body, signing_public=pub, now=now)

    return {
        "sign": stats_ms(time_calls(lambda: sign_request(key, "POST", "/v1/devices/me/token", body), runs, 10)),
        "verify": stats_ms(time_calls(verify, runs, 10)),
    }


class _Server:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()


def _pg(url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database, autocommit=True
    ) as conn:
        conn.execute(sql)


def _live_pg(url: str, s: dict[str, Any]) -> dict[str, Any]:
    """On a fresh PostgreSQL database, dropped afterwards."""
    from sqlalchemy.engine import make_url

    name = f"bench_auth_{uuid.uuid4().hex[:12]}"
    _pg(url, f'CREATE DATABASE "{name}"')
    try:
        return _live(make_url(url).set(database=name).render_as_string(hide_password=False), s)
    finally:
        _pg(url, f'DROP DATABASE IF EXISTS "{name}"')


def _live(db_url: str | None, s: dict[str, Any]) -> dict[str, Any]:
    from tinymlops.crypto.keys import DeviceKeys
    from tinymlops.devices.client import DeviceClient
    from tinymlops.devices.enrolment import EnrolmentService
    from tinymlops.server import create_app
    from tinymlops.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="tinymlops-bench-") as tmp:
        ws = Workspace.init(Path(tmp) / "ws", db_url=db_url)
        tokens = EnrolmentService(ws.engine, ws.targets.get)
        server = _Server(create_app(ws))
        try:

            def new_device() -> DeviceClient:
                client = DeviceClient(server.url, DeviceKeys.generate())
                client.enrol(tokens.create_token(ttl_s=600)[1], "rpi-4")
                return client

            enrol_times = []
            for _ in range(s["enrolments"]):
                client = DeviceClient(server.url, DeviceKeys.generate())
                token = tokens.create_token(ttl_s=600)[1]
                t0 = time.perf_counter()
                client.enrol(token, "rpi-4")
                enrol_times.append(time.perf_counter() - t0)
            device = new_device()
            device.bearer_token()
            n = s["requests"]
            out = {
                "healthz": stats_ms(time_calls(lambda: device.request("GET", "/healthz", auth="none"), n, 20)),
                "signed_me": stats_ms(time_calls(lambda: device.me(), n, 20)),
                "bearer_me": stats_ms(time_calls(lambda: device.get_json("/v1/devices/me", auth="bearer"), n, 20)),
                "enrol": stats_ms(enrol_times),
            }
            clients = [new_device() for _ in range(s["threads"])]

            def burst(c: DeviceClient) -> None:
                for _ in range(s["per_thread"]):
                    c.me()

            t0 = time.perf_counter()
            with ThreadPoolExecutor(len(clients)) as pool:
                list(pool.map(burst, clients))
            elapsed = time.perf_counter() - t0
            out["concurrent"] = {
                "threads": len(clients),
                "requests": len(clients) * s["per_thread"],
                "seconds": elapsed,
                "requests_per_s": len(clients) * s["per_thread"] / elapsed,
            }
            return out
        finally:
            server.stop()
            ws.close()


def run(quick: bool) -> dict[str, Any]:
    s = _settings(quick)
    backends = {"sqlite": _live(None, s)}
    if os.environ.get(ENV_PG):
        backends["postgresql"] = _live_pg(os.environ[ENV_PG], s)
    pure = _pure(s["pure_runs"])
    sqlite = backends["sqlite"]
    goals = [
        goal(
            f"verify a signed request under {GOAL_VERIFY_MS} ms",
            pure["verify"]["p50_ms"] < GOAL_VERIFY_MS,
            f"{pure['verify']['p50_ms']:.3f} ms (p50)",
            "verify_request over a 512-byte body, in process",
        ),
        goal(
            f"signed GET /v1/devices/me under {GOAL_SIGNED_MS} ms on SQLite",
            sqlite["signed_me"]["p50_ms"] < GOAL_SIGNED_MS,
            f"{sqlite['signed_me']['p50_ms']:.2f} ms (p50), floor /healthz {sqlite['healthz']['p50_ms']:.2f} ms",
            "DeviceClient over loopback to uvicorn; includes client signing, verification, nonce + last_seen write",
        ),
    ]
    return {"settings": s, "pure": pure, "backends": backends, "goals": goals}


def render(result: dict[str, Any]) -> list[Table]:
    p = Table(title="In process (ms)", title_justify="left")
    for c in ("", "p50", "p95", "runs"):
        p.add_column(c, justify="right" if c else "left")
    for k, v in result["pure"].items():
        p.add_row(f"{k}_request", fmt_ms(v["p50_ms"]), fmt_ms(v["p95_ms"]), str(v["n"]))

    backends = result["backends"]
    t = Table(title="Against a live server (ms, p50 / p95)", title_justify="left")
    t.add_column("request")
    for kind in backends:
        t.add_column(f"{kind} p50", justify="right")
        t.add_column(f"{kind} p95", justify="right")
    labels = {
        "healthz": "GET /healthz (no auth)",
        "signed_me": "GET /v1/devices/me, signed",
        "bearer_me": "GET /v1/devices/me, bearer",
        "enrol": "POST /v1/devices/enrol",
    }
    for key, label in labels.items():
        cells = []
        for kind in backends:
            cells += [fmt_ms(backends[kind][key]["p50_ms"], 2), fmt_ms(backends[kind][key]["p95_ms"], 2)]
        t.add_row(label, *cells)
    c = Table(title="Signed requests from several devices at once", title_justify="left")
    c.add_column("backend")
    c.add_column("threads", justify="right")
    c.add_column("requests", justify="right")
    c.add_column("requests/s", justify="right")
    for kind, b in backends.items():
        cc = b["concurrent"]
        c.add_row(kind, str(cc["threads"]), str(cc["requests"]), f"{cc['requests_per_s']:.0f}")
    return [p, t, c, goals_table(result)]
