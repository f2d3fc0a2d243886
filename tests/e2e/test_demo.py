"""The main job, end to end, as the README runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlperf_models import MLPERF_DIR


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path) -> None:
    ws = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tinymlops", "demo", "--workspace", str(ws), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        env={"TINYMLOPS_MLPERF_DIR": str(MLPERF_DIR), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["digits_fp32_accuracy"] > 0.9
    regs = out["registrations"]
    assert "digits-cnn" in regs
    digits = regs["digits-cnn"]
    assert sum(d["status"] == "succeeded" for d in digits["derivations"]) >= 5
    if MLPERF_DIR.is_dir():
        assert {"kws-dscnn", "ic-resnet8"} <= set(regs)
        assert regs["kws-dscnn"]["base"]["info"]["format"] == "tflite"
    chosen = [s for s in out["selections"] if s["chosen"]]
    assert len(chosen) >= len(out["selections"]) // 2
    # delivery: every digits device got its selected variant and the bundle predicts exactly like it
    devices = out["devices"]
    digits_chosen = [s for s in chosen if s["model"] == "digits-cnn"]
    direct = [d for d in devices if d["agrees_with_direct"] is not None and d["ref"].startswith("digits-cnn")]
    assert [d["ref"] for d in direct] == [s["chosen"] for s in digits_chosen]
    for d in direct:
        assert d["agrees_with_direct"] == 1.0 and d["predictions"] == 450 and d["accuracy"] > 0.9, d
    (cascade,) = [d for d in devices if d["escalated"] is not None]
    assert 0.0 < cascade["escalated"] < 0.5 and cascade["accuracy"] > 0.9
    if MLPERF_DIR.is_dir():
        (kws,) = [d for d in devices if d.get("backend") == "litert"]
        assert kws["agrees_with_direct"] == 1.0
    assert len({d["device_id"] for d in devices}) == len(devices)
    # the human-readable run works too and reuses the workspace (a new base version)
    text = subprocess.run(
        [sys.executable, "-m", "tinymlops", "demo", "--workspace", str(ws)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"TINYMLOPS_MLPERF_DIR": str(MLPERF_DIR), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200"},
    )
    assert text.returncode == 0, text.stderr
    assert "digits-cnn:2" in text.stdout and "Selection" in text.stdout and "Delivery" in text.stdout
