"""The CLI as a user runs it: real files, exit codes and --json output — in this process (``invoke_cli``:
the entry point under typer's CliRunner), and through a real subprocess for one smoke test of the
``init``, ``model``, ``target`` and ``recipe`` groups (the installed entry point must really work)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from cli_process import invoke_cli as run
from cli_process import run_cli
from mlperf_models import mlperf

SMALL_CONFIG_CHAINS = 'default = ["fp16", "int8-static", "prune-50>int8-static"]'


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    run(None, "init", str(path))
    cfg = path / "tinymlops.toml"
    text = cfg.read_text()
    start = text.index("default = [")
    end = text.index("\n", start)
    cfg.write_text(
        text[:start] + SMALL_CONFIG_CHAINS + text[end:].replace('chains = ["int8-static-s8s8"]', "chains = []")
    )
    return path


@pytest.fixture
def digits_files(tmp_path: Path, digits_model) -> tuple[Path, Path]:
    model = tmp_path / "digits.onnx"
    model.write_bytes(digits_model.onnx)
    data = tmp_path / "test.npz"
    data.write_bytes(digits_model.npz("test"))
    return model, data


@pytest.mark.slow
def test_register_derive_show_lineage_export(ws: Path, digits_files, tmp_path: Path) -> None:
    model, data = digits_files
    out = json.loads(
        run(ws, "model", "register", "digits", str(model), "--dataset", str(data), "--tag", "demo", "--json").stdout
    )
    assert out["base"]["ref"] == "digits:1"
    statuses = {d["variant"]: d["status"] for d in out["derivations"]}
    assert statuses == {
        "fp16": "succeeded",
        "int8-static": "succeeded",
        "prune-50": "succeeded",
        "prune-50/int8-static": "succeeded",
    }
    evals = out["evaluations"]
    assert len(evals) == 5 and all("latency_ms_p50" in m for m in evals.values())
    base_eval = evals[str(out["base"]["id"])]
    assert base_eval["accuracy"] > 0.9

    listed = json.loads(run(ws, "model", "list", "--json").stdout)
    assert listed[0]["name"] == "digits" and listed[0]["variants"] == 4

    shown = json.loads(run(ws, "model", "show", "digits:1/int8-static", "--json").stdout)
    assert shown["recipe"]["recipe"] == "quantize-static"
    assert shown["recipe"]["params"]["activation_type"] == "quint8"
    assert "onnxruntime" in shown["recipe"]["tools"]
    assert shown["evaluation"]["metrics"]["agreement"] > 0.9
    assert shown["evaluation"]["dataset"].startswith("dataset:eval-v1@")

    tree = json.loads(run(ws, "model", "lineage", "digits", "--json").stdout)
    prune = next(c for c in tree[0]["children"] if c["ref"] == "digits:1/prune-50")
    assert [c["ref"] for c in prune["children"]] == ["digits:1/prune-50/int8-static"]
    text = run(ws, "model", "lineage", "digits").stdout
    assert "prune-50/int8-static" in text and "quantize-static" in text

    target = tmp_path / "fp16.onnx"
    exported = json.loads(run(ws, "model", "export", "digits:1/fp16", str(target), "--json").stdout)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == exported["sha256"]
    again = run(ws, "model", "export", "digits:1/fp16", str(target), code=2)
    assert "--force" in again.stderr

    check = json.loads(run(ws, "target", "check", "digits:1/int8-static", "x86-edge-server", "--json").stdout)
    assert check["compatible"] and check["estimated_latency_ms"] is not None
    mcu = run(ws, "target", "check", "digits:1", "mcu-cortex-m7", "--json", code=1)
    assert json.loads(mcu.stdout)["compatible"] is False

    chosen = json.loads(run(ws, "select", "digits", "--target", "rpi-4", "--battery", "0.1", "--json").stdout)
    assert chosen["chosen"].startswith("digits:1") and chosen["target"] == "rpi-4"
    every = {"digits:1", "digits:1/fp16", "digits:1/int8-static", "digits:1/prune-50", "digits:1/prune-50/int8-static"}
    assert set(chosen["explanations"]) | {chosen["chosen"]} == every


def test_register_tflite_shows_operators(ws: Path) -> None:
    path = mlperf("kws_ref_model.tflite")
    out = json.loads(run(ws, "model", "register", "kws", str(path), "--no-derive", "--no-evaluate", "--json").stdout)
    ops = out["base"]["info"]["operators"]
    assert ops["CONV_2D"] >= 1 and "DEPTHWISE_CONV_2D" in ops
    text = run(ws, "model", "show", "kws").stdout
    assert "DEPTHWISE_CONV_2D" in text and "int8" in text


def test_errors_are_clear_and_change_nothing(ws: Path, tmp_path: Path, digits_files) -> None:
    model, _ = digits_files
    missing = run(ws, "model", "register", "m", str(tmp_path / "nope.onnx"), code=2)
    assert "not found" in missing.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not a model")
    bad = run(ws, "model", "register", "m", str(junk), code=3)
    assert "not an ONNX or TFLite model" in bad.stderr
    err = json.loads(run(ws, "model", "register", "m", str(junk), "--json", code=3).stdout)
    assert err["error"] == "InvalidModelError"
    wrong = tmp_path / "wrong.npz"
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((3, 1, 9, 9), np.float32))
    wrong.write_bytes(buf.getvalue())
    mismatch = run(ws, "model", "register", "m", str(model), "--dataset", str(wrong), code=3)
    assert "does not match the model input" in mismatch.stderr
    assert json.loads(run(ws, "model", "list", "--json").stdout) == []
    assert not list((ws / "blobs").rglob("*")) or all(p.is_dir() for p in (ws / "blobs").rglob("*"))
    assert "no model named 'm'" in run(ws, "model", "show", "m", code=2).stderr
    assert "no target named" in run(ws, "target", "show", "no-such-device", code=2).stderr
    assert "bad version" in run(ws, "model", "show", "m:zero", code=2).stderr


def test_no_workspace_is_a_usage_error(tmp_path: Path) -> None:
    proc = run(None, "model", "list", "--workspace", str(tmp_path), code=2)
    assert "not a tinymlops workspace" in proc.stderr


def test_failing_recipe_is_recorded_not_fatal(ws: Path, digits_files) -> None:
    model, _data = digits_files
    cfg = ws / "tinymlops.toml"
    cfg.write_text(cfg.read_text().replace(SMALL_CONFIG_CHAINS, 'default = ["fp16", "onnx"]'))
    out = json.loads(run(ws, "model", "register", "digits", str(model), "--no-evaluate", "--json").stdout)
    statuses = {d["variant"]: (d["status"], d["error"]) for d in out["derivations"]}
    assert statuses["fp16"][0] == "succeeded"
    assert statuses["onnx"][0] == "failed" and "tflite" in statuses["onnx"][1]
    show = run(ws, "model", "show", "digits:1/onnx", code=2)
    assert "recipe failed" in show.stderr


def test_target_list_and_recipe_list(ws: Path) -> None:
    targets = json.loads(run(ws, "target", "list", "--json").stdout)
    assert {"mcu-cortex-m7", "rpi-4", "android-nnapi-phone", "ios-coreml-phone", "x86-edge-server"} <= {
        t["name"] for t in targets
    }
    recipes = json.loads(run(ws, "recipe", "list", "--json").stdout)
    assert {"fp16", "prune", "quantize-dynamic", "quantize-static", "tflite-to-onnx"} <= {
        r["name"] for r in recipes["recipes"]
    }


def test_the_installed_command_runs_init_model_target_and_recipe(tmp_path: Path) -> None:
    """The smoke test through a real subprocess (``python -m tinymlops``): a success, a table, JSON,
    and a TinyMLOpsError turned into a message and exit code 2 by the entry point."""
    path = tmp_path / "ws"
    created = json.loads(run_cli(None, "init", str(path), "--json").stdout)
    assert (path / "tinymlops.toml").is_file() and Path(created["workspace"]) == path.resolve()
    assert "rpi-4" in run_cli(path, "target", "list").stdout
    assert "quantize-static" in run_cli(path, "recipe", "list").stdout
    missing = run_cli(path, "model", "show", "m", code=2)
    assert "no model named 'm'" in missing.stderr and missing.stdout == ""
