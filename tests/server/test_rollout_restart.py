"""A staged rollout survives its server: ``tinymlops serve`` is killed with SIGKILL while the canary
soaks, restarted on the same port, and the rollout carries on from the database — the next device
polls move it to the next stage, every agent converges, and no transition is lost or repeated."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli_process import run_cli as cli
from delivery_world import FAST, ServeProcess, register_tiny
from tinymlops.edge.agent.remote import connect
from tinymlops.workspace import Workspace


def _wait(what: str, ok: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_rollout_resumes_after_the_server_is_killed(tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    ws = Workspace.init(ws_dir)
    register_tiny(ws, 2)
    ws.close()
    key = json.loads(cli(ws_dir, "apikey", "create", "--scope", "release", "--name", "ops", "--json").stdout)["key"]
    tokens = [
        json.loads(cli(ws_dir, "device", "token", "create", "--profile", "rpi-4", "--json").stdout)["token"]
        for _ in range(3)
    ]
    server = ServeProcess(ws_dir, tmp_path / "serve0.log")
    stop = threading.Event()
    threads: list[threading.Thread] = []
    agents: list[Any] = []
    try:
        for i, token in enumerate(tokens):
            conn = connect(server.url, tmp_path / f"dev{i}", enrolment_token=token, profile="rpi-4")
            agent = conn.agent(config=FAST)
            agent.start()
            agents.append(agent)
        admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        plan = {
            "spec_version": "1.0",
            "stages": [
                {"name": "canary", "fraction": 0.3, "health": {"min_reports": 1, "min_soak_s": 4}},
                {"name": "all", "fraction": 1.0, "health": {"min_reports": 3}},
            ],
        }
        release = admin.post("/v1/releases", json={"model": "tiny:2", "plan": plan}).json()
        rid = release["id"]
        bundles = {a["device_id"]: a["bundle_id"] for a in release["assignments"]}
        for agent in agents:
            thread = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
            thread.start()
            threads.append(thread)
        _wait("the canary's install", lambda: sum(a.state.active_bundle is not None for a in agents) == 1)
        rollout = admin.get(f"/v1/releases/{rid}/rollout").json()
        assert (rollout["status"], rollout["stage"]) == ("running", 0)

        server.kill()  # SIGKILL mid-soak
        server = ServeProcess(ws_dir, tmp_path / "serve1.log", port=server.port)
        admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        _wait(
            "every agent on release two",
            lambda: all(
                a.state.active_bundle is not None and a.state.active_bundle.bundle_id in bundles.values()
                for a in agents
            ),
        )
        _wait(
            "the rollout to complete", lambda: admin.get(f"/v1/releases/{rid}/rollout").json()["status"] == "completed"
        )
        moves = [
            (t["to_status"], t["to_stage"], t["actor"])
            for t in admin.get(f"/v1/releases/{rid}/rollout").json()["transitions"]
        ]
        assert moves[1:] == [("running", 1, "auto"), ("completed", 1, "auto")], moves
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for agent in agents:
            agent.close()
        server.kill()
