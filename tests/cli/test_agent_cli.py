"""``tinymlops agent run --server`` and ``python -m tinymlops.edge.agent run --server`` as real
processes against a live control plane: enrol on the first run, install a release on the next,
report it, and say so in JSON lines; ``agent status`` reads it all back without the network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import delivery_world
from delivery_world import World

delivery = delivery_world.delivery  # the live world (fixture)


def _run(*args: str, module: str = "tinymlops", code: int = 0) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    stream = proc.stdout if code == 0 else proc.stderr
    return [json.loads(line) for line in stream.splitlines() if line.startswith("{")]


def test_agent_run_once_enrols_then_installs_and_reports(delivery: World, tmp_path: Path) -> None:
    data = str(tmp_path / "dev")
    token = delivery.plane.enrolment_token()
    events = _run(
        "agent", "run", "--server", delivery.url, "--data-dir", data, "--token", token, "--profile", "rpi-4", "--once"
    )
    connected = next(e for e in events if e["event"] == "connected")
    device_id = connected["device_id"]
    assert events[-1] == {**events[-1], "event": "cycle", "action": "idle"}

    release = delivery.release("tiny:1", [device_id])
    bundle_id = release["assignments"][0]["bundle_id"]
    events = _run("agent", "run", "--server", delivery.url, "--data-dir", data, "--once", "--interval", "5")
    installs = [e for e in events if e["event"] == "install"]
    assert [(e["status"], e["bundle_id"]) for e in installs] == [("installed", bundle_id)]
    assert events[-1]["action"] == "installed"

    (status,) = _run("agent", "status", "--data-dir", data)
    assert status["active"] is not None and status["slots"][status["active"]]["bundle_id"] == bundle_id
    assert status["control_plane"]["enrolment"]["device_id"] == device_id
    assert status["control_plane"]["pending_reports"] == 0

    # the device-side entry point (no typer) does the same: converged, nothing to do
    events = _run("run", "--server", delivery.url, "--data-dir", data, "--once", module="tinymlops.edge.agent")
    assert events[-1]["action"] == "idle"
    shown = delivery.show(release["id"])["assignments"][0]
    assert shown["latest_report"]["status"] == "installed" and shown["deployment"]["bundle_id"] == bundle_id


def test_agent_run_refuses_clearly(delivery: World, tmp_path: Path) -> None:
    (err,) = _run("agent", "run", "--server", delivery.url, "--data-dir", str(tmp_path / "new"), "--once", code=2)
    assert err["error"] == "UsageError" and "not enrolled" in err["message"]
    args = ["--data-dir", str(tmp_path / "far"), "--token", "tme_x", "--profile", "rpi-4", "--once"]
    (err,) = _run("agent", "run", "--server", "http://127.0.0.1:9", *args, code=4)
    assert err["error"] == "ServerUnreachableError"
    (err,) = _run("agent", "status", "--data-dir", str(tmp_path / "none"), code=2)
    assert "no agent state" in err["message"]
