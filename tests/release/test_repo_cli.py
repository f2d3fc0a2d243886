"""``tinymlops repo …`` as an operator runs it, on a real workspace and bundle: in this process
(``invoke_cli``: the entry point under typer's CliRunner), ``repo init`` through a real subprocess (the
installed entry point must really work)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_process import invoke_cli as run
from cli_process import run_cli
from simulators.tuf_server import TufServer, tiny_onnx
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.edge.updates import UpdateClient
from tinymlops.release import UpdateRepository
from tinymlops.spec.update import device_target_path


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    from tinymlops.workspace import Workspace

    w = Workspace.init(tmp_path / "ws")
    w.registry.register("tiny", tiny_onnx())
    w.close()
    return tmp_path / "ws"


@pytest.mark.slow
def test_repo_commands_end_to_end(ws: Path, tmp_path: Path) -> None:
    from tinymlops.bundle.builder import build_bundle
    from tinymlops.workspace import Workspace

    device = DeviceKeys.generate()
    bundle = tmp_path / "tiny.tmlb"
    w = Workspace.open(ws)
    build_bundle(w, "tiny:1", target="x86-edge-server", device_public_key=device.wrapping_public, out=bundle)
    w.close()
    missing = run(ws, "repo", "status", code=2)
    assert "no update repository" in missing.stderr and "tinymlops repo init" in missing.stderr

    init = json.loads(run_cli(ws, "repo", "init", "--bins-bits", "4", "--timestamp-expiry", "6h", "--json").stdout)
    assert init["bins"] == 16 and [r["version"] for r in init["roles"]] == [1, 1, 1, 1]
    timestamp = next(r for r in init["roles"] if r["role"] == "timestamp")
    assert 6 * 3600 - 60 <= timestamp["expires_in_s"] <= 6 * 3600

    published = json.loads(
        run(
            ws, "repo", "publish", str(bundle), "--device", device.device_id, "--urgent", "--release-id", "r7", "--json"
        ).stdout
    )
    assert published["path"] == device_target_path(device.device_id)
    assert published["urgent"] is True and published["release_id"] == "r7" and published["ref"] == "tiny:1"
    assert published["length"] == bundle.stat().st_size
    table = run(ws, "repo", "list").stdout
    assert device.device_id in table and "tiny:1" in table

    # a device enrolled with `repo root` gets exactly that bundle over HTTP
    root_file = tmp_path / "root.json"
    run(ws, "repo", "root", "--out", str(root_file))
    UpdateClient.enrol(tmp_path / "device-data", root_file.read_bytes())
    with TufServer(UpdateRepository.open(ws)) as server:
        client = UpdateClient(tmp_path / "device-data", server.url)
        offer = client.check(device_target_path(device.device_id))
        assert offer is not None and offer.urgent
        assert client.download(offer, tmp_path / "slot").read_bytes() == bundle.read_bytes()

    refreshed = json.loads(run(ws, "repo", "refresh", "--json").stdout)
    assert refreshed["renewed"] == ["timestamp"]

    # the root key goes offline; publishing still works, rotation asks for the key
    usb = tmp_path / "usb"
    usb.mkdir()
    exported = json.loads(run(ws, "repo", "export-root-key", str(usb), "--json").stdout)["exported"]
    status = json.loads(run(ws, "repo", "status", "--json").stdout)
    assert status["roles"][0]["keys_here"] == [False] and any("offline" in w for w in status["warnings"])
    refused = run(ws, "repo", "rotate", "timestamp", code=2)
    assert "root key" in refused.stderr and "--root-key" in refused.stderr
    rotated = json.loads(run(ws, "repo", "rotate", "timestamp", "--root-key", exported[0], "--json").stdout)
    assert rotated["root_version"] == 2 and len(rotated["key_id"]) == 16
    run(ws, "repo", "import-root-key", exported[0])

    # bad input: a tampered bundle is refused (exit 3), a missing target is a usage error (exit 2)
    tampered = tmp_path / "tampered.tmlb"
    data = bytearray(bundle.read_bytes())
    data[-3] ^= 1
    tampered.write_bytes(bytes(data))
    assert run(ws, "repo", "publish", str(tampered), "--device", "other", code=3).returncode == 3
    assert "exactly one of --device" in run(ws, "repo", "publish", str(bundle), code=2).stderr
    out = json.loads(run(ws, "repo", "unpublish", "--device", device.device_id, "--json").stdout)
    assert out["path"] == published["path"]
    assert json.loads(run(ws, "repo", "list", "--json").stdout) == []
    pruned = json.loads(run(ws, "repo", "prune", "--keep", "1", "--json").stdout)
    assert pruned["removed_targets"] == 1
