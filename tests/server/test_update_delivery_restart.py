"""``tinymlops serve`` killed with SIGKILL while an agent polls it, and restarted: the agent backs off
(it keeps serving its bundle), a release made meanwhile from the CLI reaches it once the server is
back, and nothing is lost — API keys, the device's enrolment, releases and install reports."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from cli_process import run_cli as cli
from delivery_world import FAST, ServeProcess, X, register_tiny
from tinymlops.edge.agent.remote import connect
from tinymlops.workspace import Workspace


def _wait(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _active(agent: Any) -> str | None:
    bundle = agent.state.active_bundle
    return None if bundle is None else str(bundle.bundle_id)


def _expected(ws_dir: Path, ref: str) -> np.ndarray:
    import onnxruntime as ort

    ws = Workspace.open(ws_dir)
    try:
        data = ws.registry.read_bytes(ws.registry.resolve(ref))
    finally:
        ws.close()
    out: np.ndarray = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    return out


@pytest.mark.slow
def test_an_agent_rides_out_a_killed_server_and_converges(tmp_path: Path) -> None:
    ws_dir = tmp_path / "ws"
    ws = Workspace.init(ws_dir)
    register_tiny(ws, 2)
    ws.close()
    key = json.loads(cli(ws_dir, "apikey", "create", "--scope", "release", "--name", "ops", "--json").stdout)["key"]
    token = json.loads(cli(ws_dir, "device", "token", "create", "--profile", "rpi-4", "--json").stdout)["token"]

    servers = [ServeProcess(ws_dir, tmp_path / "serve0.log")]
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        conn = connect(servers[0].url, tmp_path / "dev", enrolment_token=token, profile="rpi-4")
        agent = conn.agent(config=FAST)
        agent.start()
        thread = threading.Thread(target=agent.run_forever, args=(stop,), daemon=True)
        thread.start()
        admin = httpx.Client(base_url=servers[0].url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        r1 = admin.post("/v1/releases", json={"model": "tiny:1", "devices": [conn.device_id]}).json()
        b1 = r1["assignments"][0]["bundle_id"]
        _wait(
            "release one", lambda: agent.state.active_bundle is not None and agent.state.active_bundle.bundle_id == b1
        )

        servers[0].kill()  # SIGKILL while the agent polls
        _wait("the agent to back off", lambda: agent.backoff.failures >= 3)
        np.testing.assert_array_equal(agent.predict(X).outputs["y"], _expected(ws_dir, "tiny:1"))  # still serving
        # a release made while the server is down (the CLI writes the workspace's repository directly)
        r2 = json.loads(cli(ws_dir, "release", "create", "tiny:2", "--device", conn.device_id, "--json").stdout)
        b2 = r2["assignments"][0]["bundle_id"]
        assert _active(agent) == b1

        servers.append(ServeProcess(ws_dir, tmp_path / "serve1.log", port=servers[0].port))
        _wait(
            "release two", lambda: agent.state.active_bundle is not None and agent.state.active_bundle.bundle_id == b2
        )
        _wait("the install report", lambda: not conn.reporter.pending())
        assert agent.backoff.failures == 0
        np.testing.assert_array_equal(agent.predict(X).outputs["y"], _expected(ws_dir, "tiny:2"))

        # nothing lost: the same key, the device's enrolment, both releases and their reports
        shown1 = admin.get(f"/v1/releases/{r1['id']}").json()["assignments"][0]
        shown2 = admin.get(f"/v1/releases/{r2['id']}").json()["assignments"][0]
        assert shown1["latest_report"]["status"] == "installed" and shown1["latest_report"]["bundle_id"] == b1
        assert shown2["latest_report"]["status"] == "installed" and shown2["deployment"]["bundle_id"] == b2
        assert conn.client.me()["id"] == conn.device_id
    finally:
        stop.set()
        if thread is not None:
            thread.join(30)
        for served in servers:
            served.kill()
