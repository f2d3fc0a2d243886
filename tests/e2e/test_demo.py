"""The main job, end to end, as the README runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import MLPERF_DIR


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
    # the human-readable run works too and reuses the workspace (a new base version)
    text = subprocess.run(
        [sys.executable, "-m", "tinymlops", "demo", "--workspace", str(ws)],
        capture_output=True,
        text=True,
        timeout=900,
        env={"TINYMLOPS_MLPERF_DIR": str(MLPERF_DIR), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200"},
    )
    assert text.returncode == 0, text.stderr
    assert "digits-cnn:2" in text.stdout and "Selection" in text.stdout
