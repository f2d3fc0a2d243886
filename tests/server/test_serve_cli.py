"""``tinymlops serve`` as a real process: bootstrapped from the CLI (API key, enrolment token),
killed with SIGKILL and restarted — devices, keys, tokens and the replay cache all survive, and
an enrolled device carries on where it stopped."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli_process import run_cli as cli
from delivery_world import ServeProcess as Served
from tinymlops.cli.app import app
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.devices.request_auth import sign_request
from tinymlops.errors import OperationError, ServerRequestError, TinyMLOpsError, UsageError


@pytest.fixture
def serve(ws: Path, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``tinymlops serve`` processes; any still running when the test ends is killed."""
    started: list[Served] = []

    def start(port: int = 0) -> Served:
        served = Served(ws, tmp_path / f"serve{len(started)}.log", port)
        started.append(served)
        return served

    yield start
    for served in started:
        served.kill()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    from tinymlops.workspace import Workspace

    Workspace.init(tmp_path / "ws").close()
    return tmp_path / "ws"


@pytest.mark.slow
def test_sigkill_and_restart_lose_nothing(ws: Path, serve: Callable[..., Served]) -> None:
    admin = json.loads(cli(ws, "apikey", "create", "--scope", "admin", "--name", "ops", "--json").stdout)
    token = json.loads(
        cli(ws, "device", "token", "create", "--profile", "rpi-4", "--ttl", "10m", "--tag", "eu", "--json").stdout
    )
    assert admin["key"].startswith("tmk_") and token["token"].startswith("tme_")
    listed = in_process(ws, "apikey", "list", "--json")
    assert admin["key"] not in listed and admin["id"] in listed

    served = serve()
    keys = DeviceKeys.generate()
    device = DeviceClient(served.url, keys)
    assert device.enrol(token["token"], "rpi-4").tags == ("eu",)
    spent = sign_request(keys.signing, "GET", "/v1/devices/me")
    assert httpx.get(f"{served.url}/v1/devices/me", headers=spent.headers()).status_code == 200
    bearer = device.bearer_token()
    headers = {"Authorization": f"Bearer {admin['key']}"}
    created = httpx.post(f"{served.url}/v1/admin/api-keys", headers=headers, json={"name": "ci", "scope": "read"})
    assert created.status_code == 201

    served.kill()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.url}/healthz", timeout=2)
    again = serve(port=served.port)

    assert device.me()["id"] == keys.device_id  # the device carries on: signed requests...
    assert device.get_json("/v1/devices/me", auth="bearer")["tags"] == ["eu"]  # ...and its bearer token
    assert device.bearer_token() == bearer
    replay = httpx.get(f"{again.url}/v1/devices/me", headers=spent.headers())
    assert replay.status_code == 401 and replay.json()["error"]["type"] == "ReplayedRequestError"
    names = [k["name"] for k in httpx.get(f"{again.url}/v1/admin/api-keys", headers=headers).json()]
    assert names == ["ops", "ci"]
    with pytest.raises(ServerRequestError) as info:
        DeviceClient(again.url, DeviceKeys.generate()).enrol(token["token"], "rpi-4")
    assert info.value.status == 409  # the token's use survived the crash
    devices = json.loads(in_process(ws, "device", "list", "--json"))
    assert [(d["id"], d["status"]) for d in devices] == [(keys.device_id, "active")]
    in_process(ws, "device", "revoke", keys.device_id)
    assert device.request("GET", "/v1/devices/me", check=False).status == 401  # the CLI acts on the live state


def in_process(ws: Path, *args: str) -> str:
    """Run a command in this process (faster than a subprocess); its stdout."""
    result = CliRunner().invoke(app, [*args, "--workspace", str(ws)])
    assert result.exit_code == 0, (result.exception, result.output)
    return result.stdout


def run_in_process(ws: Path, *args: str) -> TinyMLOpsError:
    """Run a command in this process; return the error it raised (``main()`` maps it to the exit code)."""
    result = CliRunner().invoke(app, [*args, "--workspace", str(ws)])
    assert isinstance(result.exception, TinyMLOpsError), (result.exception, result.output)
    return result.exception


def test_a_busy_port_is_a_clear_error(ws: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = run_in_process(ws, "serve", "--port", str(port))
    assert isinstance(err, OperationError) and err.exit_code == 4
    assert f"cannot listen on 127.0.0.1:{port}" in err.message


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("apikey", "create", "--scope", "root"), "unknown scope 'root'"),
        (("apikey", "create", "--name", ""), "API key name"),
        (("device", "token", "create", "--profile", "toaster"), "no target named 'toaster'"),
        (("device", "token", "create", "--ttl", "soon"), "not a duration"),
        (("device", "token", "create", "--ttl", "90d"), "token TTL"),
        (("device", "token", "create", "--tag", "Not OK"), "bad tag"),
        (("apikey", "revoke", "0123456789abcdef"), "no API key"),
        (("device", "revoke", "0123456789abcdef"), "no device"),
    ],
)
def test_token_and_key_commands_validate_their_input(ws: Path, args: tuple[str, ...], words: str) -> None:
    err = run_in_process(ws, *args)
    assert isinstance(err, UsageError) and err.exit_code == 2 and words in err.message
