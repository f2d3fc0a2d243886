"""The agent's connection to a control plane (tinymlops.edge.agent.remote) against a real server:
enrolment and bootstrap happen once and a restarted agent needs no network to start; a crash between
enrolling and saving is repaired; install reports wait on disk while the server is away; release keys
pinned out of band are the only ones trusted; and the whole cycle stays in the edge closure."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import delivery_world
from delivery_world import World, X, assert_serves
from tinymlops.crypto.keys import generate_signing_key, public_bytes
from tinymlops.devices.client import DeviceClient
from tinymlops.devices.identity import ENROLMENT_FILE
from tinymlops.edge.agent import InstallResult
from tinymlops.edge.agent.remote import InstallReporter, connect, describe
from tinymlops.errors import ServerRequestError, UsageError

delivery = delivery_world.delivery  # the live world (fixture)

FORBIDDEN = {"sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "sklearn", "uvicorn", "starlette"}


def test_a_connected_agent_restarts_without_the_server(delivery: World, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    conn = delivery.connect(data)
    a = delivery.release("tiny:1", [conn.device_id])["assignments"][0]
    with delivery.agent(conn) as agent:
        assert agent.run_once().action == "installed"
    delivery.plane.server.stop()  # the control plane goes away

    again = connect(delivery.url, data)  # no token, no profile, no network: all on disk
    assert again.device_id == conn.device_id and again.trusted_keys == conn.trusted_keys
    with again.agent(config=delivery_world.FAST) as agent:
        agent.start()
        assert_serves(agent, delivery, "tiny:1", a["bundle_id"])
        cycle = agent.run_once()  # the server is unreachable: back off, keep serving
        assert cycle.action == "error" and "UpdateError" in (cycle.error or "") and agent.backoff.failures == 1
        assert agent.predict(X).outputs["y"].shape == (2, 2)
    status = describe(data)
    assert status["enrolment"]["device_id"] == conn.device_id and status["tuf"]["timestamp"] >= 1


def test_a_crash_between_enrolling_and_saving_it_is_repaired(delivery: World, tmp_path: Path) -> None:
    data = tmp_path / "dev"
    token = delivery.plane.enrolment_token(tags=["lab"])
    first = connect(delivery.url, data, enrolment_token=token, profile="rpi-4")
    (data / ENROLMENT_FILE).unlink()  # as if the agent died before writing it
    with pytest.raises(UsageError, match="not enrolled"):
        connect(delivery.url, data)
    again = connect(delivery.url, data, enrolment_token=token, profile="rpi-4")  # the token is spent: 409
    assert again.device_id == first.device_id and again.enrolment.tags == ("lab",)
    assert (data / ENROLMENT_FILE).is_file()
    with pytest.raises(UsageError, match="is enrolled with"):
        connect("http://127.0.0.1:9", data)
    with pytest.raises(ServerRequestError) as refused:  # someone else's spent token: a refusal, not a retry
        connect(delivery.url, tmp_path / "other", enrolment_token=token, profile="rpi-4")
    assert refused.value.status == 409


def test_install_reports_wait_on_disk_until_the_server_takes_them(delivery: World, tmp_path: Path) -> None:
    conn = delivery.connect(tmp_path / "dev")
    a = delivery.release("tiny:1", [conn.device_id])
    bundle_id = a["assignments"][0]["bundle_id"]
    queue = tmp_path / "dev" / "reports"
    away = InstallReporter(DeviceClient("http://127.0.0.1:9", conn.keys, timeout_s=2), queue)
    for status in ("deferred", "installed"):
        away(InstallResult(status, "while offline", bundle_id=bundle_id, active_bundle_id=bundle_id, at=1.0))
    assert len(away.pending()) == 2 and away.sent == 0

    back = InstallReporter(conn.client, queue)
    assert back.flush() == 2 and back.pending() == []
    shown = delivery.show(a["id"])["assignments"][0]
    assert shown["latest_report"]["status"] == "installed" and shown["deployment"]["bundle_id"] == bundle_id


def test_release_keys_pinned_out_of_band_are_the_only_ones_trusted(delivery: World, tmp_path: Path) -> None:
    other = public_bytes(generate_signing_key())
    conn = connect(
        delivery.url,
        tmp_path / "dev",
        enrolment_token=delivery.plane.enrolment_token(),
        profile="rpi-4",
        release_keys=[other],
    )
    assert conn.trusted_keys == [other]
    delivery.release("tiny:1", [conn.device_id])
    with delivery.agent(conn) as agent:
        cycle = agent.run_once()
        assert cycle.action == "refused" and cycle.result is not None and "SignatureError" in str(cycle.result.error)
        assert agent.state.active is None


def test_a_full_remote_cycle_stays_in_the_edge_closure(delivery: World, tmp_path: Path) -> None:
    token = delivery.plane.enrolment_token()
    data = tmp_path / "dev"
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from tinymlops.edge.agent.remote import connect

        conn = connect({delivery.url!r}, {str(data)!r}, enrolment_token={token!r}, profile="rpi-4")
        print(json.dumps({{"device_id": conn.device_id}}), flush=True)
        sys.stdin.readline()  # the test releases to this device now
        with conn.agent() as agent:
            cycle = agent.run_once()
            y = agent.predict(np.ones((1, 4), np.float32)).outputs["y"]
        print(json.dumps({{"action": cycle.action, "y": y.tolist(),
                          "modules": sorted({{m.split('.')[0] for m in sys.modules}})}}))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        device_id = json.loads(proc.stdout.readline())["device_id"]
        delivery.release("tiny:2", [device_id])
        out, err = proc.communicate("go\n", timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["action"] == "installed"
    np.testing.assert_array_equal(
        np.array(doc["y"], np.float32), delivery.expected("tiny:2", np.ones((1, 4), np.float32))
    )
    loaded = set(doc["modules"])
    assert {"tuf", "onnxruntime", "urllib3"} <= loaded  # it really followed TUF and ran the model
    assert not loaded & FORBIDDEN, f"the remote agent pulled in {sorted(loaded & FORBIDDEN)}"
