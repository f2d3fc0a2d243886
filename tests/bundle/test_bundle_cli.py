"""``tinymlops keys`` and ``tinymlops bundle`` as a user runs them, on real files: in this process
(``invoke_cli``: the entry point under typer's CliRunner), and through a real subprocess once for each
group (the installed entry point must really work)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cli_process import invoke_cli as run
from cli_process import run_cli
from tinymlops.bundle import open_bundle
from tinymlops.bundle.container import unpack
from tinymlops.crypto.keys import DeviceKeys, generate_signing_key, load_public_key, save_public_key


@pytest.fixture
def ws(tmp_path: Path, digits_model) -> Path:
    path = tmp_path / "ws"
    run(None, "init", str(path))
    model = tmp_path / "digits.onnx"
    model.write_bytes(digits_model.onnx)
    data = tmp_path / "test.npz"
    data.write_bytes(digits_model.npz("test"))
    run(path, "model", "register", "digits", str(model), "--dataset", str(data), "--no-derive", "--no-evaluate")
    return path


def test_keys_build_inspect_verify_and_tamper(ws: Path, tmp_path: Path) -> None:
    keys = json.loads(run_cli(ws, "keys", "init", "--json").stdout)  # the subprocess smoke tests: keys …
    assert keys["release"]["created"] and keys["fleet"]["created"]
    again = json.loads(run(ws, "keys", "init", "--json").stdout)
    assert not again["release"]["created"] and again["release"]["key_id"] == keys["release"]["key_id"]
    assert "PRIVATE" not in json.dumps(keys)

    dev_dir = tmp_path / "device-a"
    dev = json.loads(run(None, "keys", "device-new", str(dev_dir), "--json").stdout)
    assert Path(dev["wrapping_public_file"]).is_file()
    refused = run(None, "keys", "device-new", str(dev_dir), code=2)
    assert "already holds a device identity" in refused.stderr

    out = tmp_path / "digits.tmlb"
    built = json.loads(
        run(
            ws,
            "bundle",
            "build",
            "digits:1",
            "--target",
            "rpi-4",
            "--device-key",
            dev["wrapping_public_file"],
            "--out",
            str(out),
            "--json",
        ).stdout
    )
    assert built["release_key_id"] == keys["release"]["key_id"]
    assert built["key_wrap"]["recipient_key_id"] == dev["wrapping_key_id"]
    human = run(ws, "bundle", "build", "digits:1", "-t", "rpi-4", "--fleet-key", "--out", str(tmp_path / "f.tmlb"))
    assert "fleet key" in human.stdout

    # inspect: the manifest, never key material
    shown = run(None, "bundle", "inspect", str(out), "--json").stdout
    info = json.loads(shown)
    assert info["manifest"]["model"]["ref"] == "digits:1" and info["verified"] is False
    assert info["manifest"]["key_wrap"] == {
        "mode": "device",
        "recipient_key_id": dev["wrapping_key_id"],
        "wrapped_key_bytes": 48,
    }
    kw = json.loads(unpack(out.read_bytes())["manifest.json"])["key_wrap"]
    human_shown = run(None, "bundle", "inspect", str(out)).stdout
    for secret in (kw["wrapped_key"], kw["salt"], kw["ephemeral_public"]):
        assert secret not in shown and secret not in human_shown
    opened = open_bundle(
        out, key=DeviceKeys.load(dev_dir), trusted_release_keys=[base64.b64decode(keys["release"]["public_key"])]
    )
    content = opened.models["main"]
    assert content[:64].hex() not in shown and "digits:1" in human_shown

    # verify: workspace key by default, or an explicit --release-pub
    ok = json.loads(run(ws, "bundle", "verify", str(out), "--json").stdout)
    assert ok["verified"] and ok["release_key_id"] == keys["release"]["key_id"]
    pub = keys["release"]["public_key_file"]
    assert "verified" in run(None, "bundle", "verify", str(out), "--release-pub", pub).stdout

    stranger = save_public_key(tmp_path / "stranger.pub", generate_signing_key())
    bad = run_cli(None, "bundle", "verify", str(out), "--release-pub", str(stranger), code=3)  # … and bundle
    assert "untrusted release key" in bad.stderr

    tampered = tmp_path / "tampered.tmlb"
    blob = bytearray(out.read_bytes())
    blob[-10] ^= 0x01
    tampered.write_bytes(bytes(blob))
    failed = run(ws, "bundle", "verify", str(tampered), "--json", code=3)
    err = json.loads(failed.stdout)
    assert err["error"] == "IntegrityError" and err["member"] == "model.enc"
    assert "model.enc" in failed.stderr
    truncated = tmp_path / "truncated.tmlb"
    truncated.write_bytes(out.read_bytes()[:100])
    assert run(ws, "bundle", "verify", str(truncated), code=3).returncode == 3
    assert load_public_key(pub) == base64.b64decode(keys["release"]["public_key"])


def test_build_refusals_exit_non_zero_and_write_nothing(ws: Path, tmp_path: Path) -> None:
    dev_dir = tmp_path / "dev"
    dev = json.loads(run(None, "keys", "device-new", str(dev_dir), "--json").stdout)
    out = tmp_path / "mcu.tmlb"
    proc = run(
        ws,
        "bundle",
        "build",
        "digits:1",
        "--target",
        "mcu-cortex-m7",
        "--device-key",
        dev["wrapping_public_file"],
        "--out",
        str(out),
        code=4,
    )
    assert "mcu-cortex-m7 has only litert" in proc.stderr and not out.exists()
    both = run(ws, "bundle", "build", "digits:1", "-t", "rpi-4", "--out", str(out), code=2)
    assert "exactly one of --device-key" in both.stderr and not out.exists()
    no_ws = run(None, "bundle", "verify", str(out), code=2)
    assert "no such bundle file" in no_ws.stderr or "release key" in no_ws.stderr
