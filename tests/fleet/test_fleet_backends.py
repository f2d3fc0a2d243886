"""The simulator's settings and backends: bad settings are refused up front, the Ray backend says
how to install Ray, a fleet survives its control plane restarting, and the same fleet runs on Ray
actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fleet_world import digits_plane_fixture, enrolled_elsewhere, wait_for  # noqa: F401 (fixture)

from live_server import plane  # noqa: F401 (fixture)
from tiny_models import tiny_onnx
from tinymlops.access.service import ApiKeyService
from tinymlops.errors import AccessDeniedError, UsageError
from tinymlops.fleet.backends import RAY_INSTALL_HINT, open_backend
from tinymlops.fleet.mix import parse_mix
from tinymlops.fleet.simulator import FleetSettings, FleetSimulator
from tinymlops.server.background import BackgroundServer

#: the device side of the simulator (what a Ray worker imports) stays light
HEAVY = ("sqlalchemy", "fastapi", "torch", "flwr", "onnx", "alembic", "typer", "ray", "rich", "sklearn")


def test_the_device_side_imports_no_control_plane_or_training_stack() -> None:
    code = (
        "import sys, json; import tinymlops.fleet.device, tinymlops.fleet.backends, tinymlops.fleet.stats;"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"devices": 0}, "number of devices"),
        ({"devices": True}, "number of devices"),
        ({"server_url": "ftp://x"}, "server URL"),
        ({"server_url": "http://h/?q=1"}, "server URL"),
        ({"backend": "dask"}, "unknown backend 'dask'"),
        ({"poll_interval_s": 0.0}, "poll interval"),
        ({"poll_interval_s": float("nan")}, "poll interval"),
        ({"ramp_s": -1.0}, "ramp"),
        ({"api_key": "  "}, "API key is empty"),
        ({"token_ttl_s": 0}, "token TTL"),
    ],
)
def test_bad_settings_are_refused_before_anything_happens(kwargs: dict[str, Any], words: str) -> None:
    base: dict[str, Any] = {"server_url": "http://127.0.0.1:9", "devices": 2}
    with pytest.raises(UsageError, match=words):
        FleetSettings(**{**base, **kwargs})


def test_the_ray_backend_names_the_extra_to_install_when_ray_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError) as info:
        open_backend("ray")
    assert RAY_INSTALL_HINT in info.value.message and RAY_INSTALL_HINT == "pip install 'tinymlops[fleet-ray]'"
    settings = FleetSettings("http://127.0.0.1:9", devices=1, backend="ray")
    with FleetSimulator(settings) as sim, pytest.raises(UsageError, match="tinymlops\\[fleet-ray\\]"):
        sim.prepare()  # before the server is even asked
    with pytest.raises(UsageError, match="unknown fleet backend"):
        open_backend("mpi")
    with pytest.raises(UsageError, match="takes no options"):
        open_backend("threads", actors=2)


def test_a_key_without_the_admin_scope_and_a_missing_key_stop_before_any_token(
    plane: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, release_key = plane.api_key("release", "releaser")
    for key, error, words in ((release_key, AccessDeniedError, "admin-scope key"), (None, UsageError, "must enrol")):
        settings = FleetSettings(plane.url, devices=2, api_key=key, data_dir=tmp_path / "fleet")
        with FleetSimulator(settings) as sim, pytest.raises(error, match=words):
            sim.prepare()
    assert plane.admin.get("/v1/admin/enrolment-tokens").json() == []
    assert not (tmp_path / "fleet" / "fleet.json").exists()
    (tmp_path / "file").write_text("not a directory")
    settings = FleetSettings(plane.url, devices=1, api_key=plane.admin_key, data_dir=tmp_path / "file")
    with FleetSimulator(settings) as sim, pytest.raises(UsageError, match=r"cannot use .*file as the fleet's data"):
        sim.prepare()


def test_a_temporary_data_directory_is_removed_at_the_end_unless_kept(plane: Any) -> None:  # noqa: F811
    mix = parse_mix("[profiles.x86-edge-server]\nrate = 0\n")
    for keep in (False, True):
        settings = FleetSettings(plane.url, devices=1, mix=mix, api_key=plane.admin_key, keep=keep, poll_interval_s=5)
        with FleetSimulator(settings) as sim:
            result = sim.run(duration_s=0.2)
            data = Path(result.data_dir)
            assert data.is_dir() and result.kept == keep
        assert data.exists() == keep
        if keep:
            import shutil

            shutil.rmtree(data)


@pytest.mark.slow
def test_a_fleet_survives_its_control_plane_restarting(sqlite_workspace: Any, tmp_path: Path) -> None:
    ws = sqlite_workspace
    ws.registry.register("tiny", tiny_onnx(1.0))
    _, key = ApiKeyService(ws.engine).create("ops", "admin", created_by="test")
    mix = parse_mix("[profiles.rpi-4]\nrate = 20\n[profiles.x86-edge-server]\nrate = 20\n")
    server = BackgroundServer(ws).start()
    port = server.port
    settings = FleetSettings(server.url, devices=4, mix=mix, api_key=key, data_dir=tmp_path / "f", poll_interval_s=0.2)
    try:
        with FleetSimulator(settings) as sim:
            sim.start()
            wait_for(sim, "enrolment", lambda s: all(d["device_id"] for d in s.devices))
            import httpx

            r = httpx.post(
                f"{server.url}/v1/releases", json={"model": "tiny"}, headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code == 201, r.text
            wait_for(sim, "installs", lambda s: all(d["bundle_id"] for d in s.devices))
            server.stop()
            down = wait_for(sim, "every agent to notice", lambda s: all(d["cycles"].get("error") for d in s.devices))
            served = {d["name"]: d["predictions"] for d in down.devices}
            wait_for(  # on-device inference goes on without the server
                sim,
                "predictions while down",
                lambda s: all(d["predictions"] > served[d["name"]] + 10 for d in s.devices),
            )
            assert all(d["last_error"].startswith("checking for updates: ") for d in down.devices), down.devices
            idle = {d["name"]: d["cycles"].get("idle", 0) for d in down.devices}
            server = BackgroundServer(ws, port=port).start()  # the same address again
            wait_for(
                sim,
                "every agent to poll the restarted server",
                lambda s: all(d["cycles"].get("idle", 0) > idle[d["name"]] for d in s.devices),
            )
            result = sim.stop()
    finally:
        server.stop()
    for d in result.devices:
        assert d["state"] == "stopped" and d["errors"] == 0 and d["installs"] == 1 and d["reports_pending"] == 0, d


def _ray_or_skip() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("ray is not installed (pip install 'tinymlops[fleet-ray]'); CI installs it and runs this")


@pytest.mark.slow
def test_twenty_devices_on_ray_actors_install_and_predict(digits_plane: Any, tmp_path: Path) -> None:
    _ray_or_skip()
    _, release_key = digits_plane.api_key("release", "releaser")
    # in a process of its own: see ray_fleet_run.py for why Ray never runs inside the pytest process
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("ray_fleet_run.py")),
            digits_plane.url,
            digits_plane.admin_key,
            release_key,
            str(tmp_path / "fleet"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["published"]) == 16
    assert result["backend"] == "ray" and len(result["devices"]) == 20
    assert len({d["device_id"] for d in result["devices"]}) == 20
    total = result["summary"]["total"]
    assert total["installs"] == 16 and total["errors"] == 0 and total["accuracy"] > 0.85
    assert next(r for r in result["summary"]["profiles"] if r["profile"] == "rpi-4")["offline_s"] > 0


def test_a_device_the_server_refuses_stops_with_the_reason_and_the_others_run(
    plane: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    enrolled_elsewhere(tmp_path / "fleet", plane.url)
    mix = parse_mix("[profiles.rpi-4]\nrate = 0\n")
    settings = FleetSettings(
        plane.url, devices=2, mix=mix, api_key=plane.admin_key, data_dir=tmp_path / "fleet", poll_interval_s=0.2
    )
    with FleetSimulator(settings) as sim:
        sim.start()
        assert sim.enrolled_now == 1  # only the new one needed a token
        done = wait_for(
            sim,
            "one failure and one device polling",
            lambda s: s.devices[0]["state"] == "failed" and s.devices[1]["cycles"].get("idle", 0) > 0,
        )
        result = sim.stop()
    failed, fine = result.devices
    assert failed["device_id"] is None and failed["connect_attempts"] == 1  # a refusal is not retried
    assert "ServerRequestError" in failed["last_error"] and "401" in failed["last_error"], failed
    assert failed["state"] == "failed" and fine["state"] == "stopped" and done.summary["total"]["enrolled"] == 1
