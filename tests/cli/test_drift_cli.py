"""``tinymlops drift …`` as a user runs it, on a real workspace with real telemetry: in this process
(``invoke_cli``: the entry point under typer's CliRunner), and through a real subprocess once for the
``drift`` group and once for ``dataset`` (the installed entry point must really work)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli_process import invoke_cli, run_cli
from observe.telemetry_rows import SHIFTED_PIXELS, digits_world, populate
from tinymlops.workspace import Workspace

SHIFTED = {f"element:{p}" for p in SHIFTED_PIXELS}


@pytest.fixture(scope="module")
def world() -> Any:
    return digits_world(0)


@pytest.fixture
def ws_path(tmp_path: Path, world: Any) -> Path:
    with Workspace.init(tmp_path / "ws") as ws:
        populate(ws, world)
    return tmp_path / "ws"


def test_report_names_the_drifted_features_and_cohort_and_exits_zero(ws_path: Path) -> None:
    out = run_cli(ws_path, "drift", "report", "digits", "--window", "1h").stdout  # the subprocess smoke test
    summary = [line for line in out.splitlines() if "DRIFT in" in line]
    assert summary, out
    assert "tag=site-b" in summary[0] and "site-a" not in summary[0]
    assert all(name in summary[0] for name in SHIFTED)
    assert "cohort tag=site-a: no_drift" in out and "cohort tag=site-b: drift" in out
    doc = json.loads(invoke_cli(ws_path, "drift", "report", "digits", "--window", "1h", "--json").stdout)
    site_b = next(c for c in doc["cohorts"] if c["label"] == "tag=site-b")
    assert set(site_b["drifted_features"]) == SHIFTED and doc["model"] == "digits" and doc["version"] == 1
    devices = json.loads(
        invoke_cli(ws_path, "drift", "report", "digits", "--window", "1h", "--by", "device", "--json").stdout
    )
    assert len(devices["cohorts"]) == 11


BAD_REPORTS: list[tuple[list[str], int, str]] = [
    (["nope", "--window", "1h"], 2, "no model named 'nope'"),
    (["digits", "--window", "1 hour"], 2, "bad window '1 hour'"),
    (["digits", "--window", "1h", "--since", "2020-01-01"], 2, "either a window"),
    (["digits", "--since", "last week"], 2, "--since: 'last week' is not an ISO 8601 time"),
    (["digits", "--since", "2099-01-01T00:00:00"], 2, "no telemetry from model 'digits'"),
    (["digits", "--window", "1h", "--by", "owner"], 2, "by must be one of tag, profile, device"),
    (["digits", "--window", "1h", "--cohort", "site-z"], 2, "cohort 'site-z'"),
    (["digits", "--version", "7"], 2, "has no version 7"),
]


def test_bad_input_is_a_clear_error_and_a_non_zero_exit(ws_path: Path) -> None:
    for args, code, words in BAD_REPORTS:
        proc = invoke_cli(ws_path, "drift", "report", *args, code=code)
        assert words in " ".join(proc.stderr.split()), (args, proc.stderr)


def test_policy_set_show_and_refusals(ws_path: Path) -> None:
    doc = json.loads(invoke_cli(ws_path, "drift", "policy", "show", "digits", "--json").stdout)
    assert doc["source"] == "default"
    invoke_cli(
        ws_path, "drift", "policy", "set", "digits", "--threshold", "ks=0.001", "--threshold", "wasserstein=0.15"
    )
    invoke_cli(ws_path, "drift", "policy", "set", "digits", "--require", "any", "--min-samples", "50")
    doc = json.loads(invoke_cli(ws_path, "drift", "policy", "show", "digits", "--json").stdout)
    p = doc["policy"]
    assert doc["source"] == "stored" and doc["updated_by"].startswith("cli:")
    assert (p["thresholds"]["ks"], p["thresholds"]["wasserstein"], p["require"], p["min_samples"]) == (
        0.001,
        0.15,
        "any",
        50,
    )
    for args, words in [
        (["--threshold", "kolmogorov=0.1"], "unknown test 'kolmogorov'"),
        (["--threshold", "ks"], "'ks' is not TEST=VALUE"),
        (["--threshold", "ks=small"], "not a number"),
        (["--require", "most"], "require must be 'all' or 'any'"),
        (["--deciding-feature-tests", "chi_square"], "chi_square"),
    ]:
        proc = invoke_cli(ws_path, "drift", "policy", "set", "digits", *args, code=2)
        assert words in " ".join(proc.stderr.split()), (args, proc.stderr)
    assert json.loads(invoke_cli(ws_path, "drift", "policy", "show", "digits", "--json").stdout) == doc
    shown = invoke_cli(ws_path, "drift", "policy", "show", "digits").stdout
    assert "ks=0.001" in shown and "stored" in shown
    invoke_cli(ws_path, "drift", "policy", "set", "digits", "--reset")
    reset = json.loads(invoke_cli(ws_path, "drift", "policy", "show", "digits", "--json").stdout)
    assert reset["policy"]["require"] == "all" and reset["policy"]["thresholds"]["ks"] == 0.01


def test_reference_show_build_and_the_dataset_add_path(tmp_path: Path, world: Any) -> None:
    ws_path = tmp_path / "ws"
    model = tmp_path / "digits.onnx"
    model.write_bytes(world.onnx)
    invoke_cli(None, "init", str(ws_path))
    invoke_cli(ws_path, "model", "register", "digits", str(model), "--no-derive", "--no-evaluate")
    proc = invoke_cli(ws_path, "drift", "reference", "show", "digits", code=2)
    assert "tinymlops dataset add digits" in " ".join(proc.stderr.split())
    data = tmp_path / "eval.npz"
    np.savez(data, x=world.x_eval, y=world.y_eval)
    added = json.loads(run_cli(ws_path, "dataset", "add", "digits", str(data), "--name", "holdout", "--json").stdout)
    assert added["reference"]["status"].startswith("built from 'holdout' (600 rows)")
    shown = invoke_cli(ws_path, "drift", "reference", "show", "digits").stdout
    assert "from dataset 'holdout'" in shown and "64 element feature(s) + 8 derived" in shown
    doc = json.loads(invoke_cli(ws_path, "drift", "reference", "build", "digits", "--json").stdout)
    assert doc["dataset"] == "holdout" and doc["rows"] == 600
    proc = invoke_cli(ws_path, "drift", "reference", "build", "digits", "--dataset", "nope", code=2)
    assert "no dataset named 'nope'" in proc.stderr


def test_key_value_options_refuse_a_key_given_twice() -> None:
    """--threshold, --privacy and bundle's NAME=VALUE options parse alike: a repeated key is an error,
    not the last one silently winning."""
    from tinymlops.cli.bundle import _pairs
    from tinymlops.cli.drift import parse_thresholds
    from tinymlops.cli.release import _telemetry_options
    from tinymlops.errors import UsageError

    assert parse_thresholds(["ks=0.001", " wasserstein = 0.15"]) == {"ks": 0.001, "wasserstein": 0.15}
    for call in (
        lambda: parse_thresholds(["ks=0.1", "ks=0.2"]),
        lambda: _telemetry_options(True, None, ["classes_epsilon=1", "classes_epsilon=2"]),
        lambda: _pairs(["a=x.wasm", "a=y.wasm"], "--wasm"),
    ):
        with pytest.raises(UsageError, match=r"'.*' is given twice"):
            call()
    with pytest.raises(UsageError, match="--wasm: 'a' has no value"):
        _pairs(["a="], "--wasm")
