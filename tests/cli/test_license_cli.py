"""``tinymlops license …`` on a real workspace, in process (typer's CliRunner; one subprocess smoke test):
licenses issued, topped up and revoked through the CLI reach real meters (SQLite ledgers under the
devices' enrolled keys), whose signed usage reports the real service reconciles; ``show`` and
``audit`` print what it found, ``audit --fail-on-alert`` fails on an alert, and bad input is a clear
error with a non-zero exit code that changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli_process import invoke_cli, run_cli
from enrolled_devices import enrol_device
from licensed_devices import MODEL, MeteredDevice, ingest
from tinymlops.bundle.workspace_keys import release_key
from tinymlops.cli.app import app
from tinymlops.cli.license import ALERT_EXIT
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.errors import ConflictError, NotFoundError, TinyMLOpsError, UsageError
from tinymlops.metering.licensing import LicenseService
from tinymlops.workspace import Workspace


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Any]:
    workspace = Workspace.init(tmp_path / "ws")
    yield workspace
    workspace.close()


@pytest.fixture
def meters() -> Iterator[list[MeteredDevice]]:
    opened: list[MeteredDevice] = []
    yield opened
    for m in opened:
        m.close()


def cli(ws: Any, *args: str, exit_code: int = 0) -> str:
    """Run ``tinymlops ARGS --workspace WS`` in this process (the entry point, its consoles as wide as
    ``cli_process.COLUMNS`` whatever the environment's COLUMNS was at import); its stdout, the exit
    code asserted."""
    return invoke_cli(None, *args, "--workspace", str(ws.root), code=exit_code).stdout


def cli_json(ws: Any, *args: str) -> Any:
    return json.loads(cli(ws, *args, "--json"))


def cli_error(ws: Any, *args: str) -> TinyMLOpsError:
    """The error a command raised (``main()`` prints it and exits with its ``exit_code``)."""
    result = CliRunner().invoke(app, [*args, "--workspace", str(ws.root)], env={"COLUMNS": "220"})
    assert isinstance(result.exception, TinyMLOpsError), (result.exception, result.output)
    return result.exception


def _service(ws: Any) -> LicenseService:
    return LicenseService(ws.engine, release_key(ws))


def _meter(ws: Any, keys: DeviceKeys, tmp_path: Path, name: str, meters: list[MeteredDevice]) -> MeteredDevice:
    m = MeteredDevice.open(keys, ws.root, tmp_path / name)
    meters.append(m)
    m.install(_service(ws).for_device(keys.device_id).to_dict())
    return m


def test_issue_report_show_and_audit_a_cloned_device(ws: Any, tmp_path: Path, meters: list[MeteredDevice]) -> None:
    keys = enrol_device(ws)
    lic = cli_json(
        ws, "license", "issue", "--device", keys.device_id, "--model", MODEL, "--queries", "100", "--days", "30"
    )
    assert (lic["device_id"], lic["model"], lic["queries"], lic["status"]) == (keys.device_id, MODEL, 100, "active")
    assert lic["valid_until"] - lic["valid_from"] == 30 * 86_400
    lid = lic["license_id"]

    original = _meter(ws, keys, tmp_path, "original", meters)
    clone = _meter(ws, keys, tmp_path, "clone", meters)  # the device's state copied to a second device
    service = _service(ws)
    original.serve(10)
    ingest(service, ws, original.report(), keys.device_id)
    shown = cli(ws, "license", "show", lid)
    assert "12/100 used (12.0%)" in shown and "no flags on this chain" in shown
    assert cli_json(ws, "license", "audit") == []
    assert "no flags" in cli(ws, "license", "audit", "--fail-on-alert")

    clone.serve(3)
    ingest(service, ws, clone.report(), keys.device_id)
    original.serve(4)
    ingest(service, ws, original.report(), keys.device_id)
    clone.serve(8)
    ingest(service, ws, clone.report(), keys.device_id)

    flags = cli_json(ws, "license", "audit", "--device", keys.device_id)
    assert "clone" in {f["kind"] for f in flags}, flags
    doc = cli_json(ws, "license", "show", lid)
    assert doc["chain"]["branches"] == 2 and doc["alerts"] >= 1
    assert doc["chain_used"] == 16 + 12  # both branches billed: 4 blocks on the original, 3 on the clone
    assert {f["kind"] for f in doc["flags"]} >= {"clone"}
    text = cli(ws, "license", "show", lid)
    assert "(forked)" in text and "clone" in text and "28/100 used" in text
    audit = cli(ws, "license", "audit", "--fail-on-alert", exit_code=ALERT_EXIT)
    assert "clone" in audit and "alert(s)" in audit
    assert [f["kind"] for f in cli_json(ws, "license", "audit", "--kind", "clone")] == ["clone"] * len(
        [f for f in flags if f["kind"] == "clone"]
    )
    chains = cli_json(ws, "license", "chains")
    assert [(c["device_id"], c["branches"], c["reserved"]) for c in chains] == [(keys.device_id, 2, 28)]
    assert keys.device_id in cli(ws, "license", "chains")


def test_top_up_revoke_list(ws: Any, tmp_path: Path, meters: list[MeteredDevice]) -> None:
    keys = enrol_device(ws)
    until = "2031-01-31"
    root = cli_json(
        ws, "license", "issue", "--device", keys.device_id, "--model", MODEL, "--queries", "10", "--until", until
    )
    assert root["valid_until"] == 1927584000  # 2031-01-31T00:00:00Z
    err = cli_error(
        ws, "license", "issue", "--device", keys.device_id, "--model", MODEL, "--queries", "5", "--days", "1"
    )
    assert isinstance(err, ConflictError) and root["license_id"] in str(err.to_dict())

    top = cli_json(ws, "license", "top-up", root["license_id"], "--queries", "20", "--days", "7")
    assert top["previous_license_id"] == root["license_id"] and top["chain_licensed"] == 30
    printed = cli(ws, "license", "top-up", top["license_id"], "--queries", "5")
    assert "top-up" in printed and "0/35 used" in printed
    latest = cli_json(ws, "license", "list", "--status", "active")
    assert len(latest) == 1 and latest[0]["previous_license_id"] == top["license_id"]
    assert len(cli_json(ws, "license", "list", "--device", keys.device_id)) == 3
    assert [d["license_id"] for d in cli_json(ws, "license", "list", "--status", "superseded")] == [
        top["license_id"],
        root["license_id"],
    ]
    meter = _meter(ws, keys, tmp_path, "a", meters)
    assert meter.meter.remaining == 35

    revoked = cli_json(ws, "license", "revoke", root["license_id"], "--reason", "chargeback")
    assert revoked["license_id"] == latest[0]["license_id"] and revoked["status"] == "revoked"
    assert revoked["revoke_reason"] == "chargeback"
    doc = _service(ws).for_device(keys.device_id).to_dict()
    assert [r["license_id"] for r in doc["revocations"]] == [revoked["license_id"]]
    listed = cli(ws, "license", "list")
    assert "revoked" in listed and keys.device_id in listed
    again = cli(ws, "license", "top-up", revoked["license_id"], "--queries", "1", "--until", "2032-01-01T00:00Z")
    assert "active" in again


def test_bad_input_is_a_clear_error_and_changes_nothing(ws: Any) -> None:
    keys = enrol_device(ws)
    base = ["license", "issue", "--device", keys.device_id, "--model", MODEL, "--queries", "5"]
    for args, kind, words in [
        ([*base], UsageError, "give --days or --until"),
        ([*base, "--days", "0"], UsageError, "--days must be a whole number from 1 to 36500"),
        ([*base, "--days", "3", "--until", "2031-01-01"], UsageError, "either --days or --until"),
        ([*base, "--until", "someday"], UsageError, "--until: 'someday' is not an ISO 8601"),
        ([*base, "--until", "2001-01-01"], UsageError, "is not after now"),
        ([*base, "--days", "1", "--from", "later"], UsageError, "--from: 'later'"),
        (
            ["license", "issue", "--device", "0123456789abcdef", "--model", MODEL, "--queries", "5", "--days", "1"],
            NotFoundError,
            "0123456789abcdef",
        ),
        (["license", "show", "f" * 32], NotFoundError, "f" * 32),
        (["license", "top-up", "f" * 32, "--queries", "1"], NotFoundError, "f" * 32),
        (["license", "revoke", "f" * 32, "--reason", "x"], NotFoundError, "f" * 32),
        (["license", "revoke", "f" * 32, "--reason", "  "], UsageError, "--reason must say why"),
    ]:
        err = cli_error(ws, *args)
        assert isinstance(err, kind) and words in str(err), (args, err)
        assert err.exit_code != 0
    cli(ws, *base, "--queries", "0", "--days", "1", exit_code=2)  # typer's own range check
    cli(ws, "license", "audit", "--limit", "0", exit_code=2)
    assert cli_json(ws, "license", "list") == []


def test_the_command_as_a_user_runs_it(ws: Any) -> None:
    """One subprocess: the real entry point prints the error and exits with the error's code."""
    proc = run_cli(ws.root, "license", "show", "a" * 32, code=2)
    assert "error:" in proc.stderr and "a" * 32 in proc.stderr
    assert json.loads(run_cli(ws.root, "license", "list", "--json").stdout) == []
