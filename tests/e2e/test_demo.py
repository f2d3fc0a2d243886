"""The main job, end to end, as the README runs it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import httpx
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
    # the fleet: a staged rollout (canary → half → all) put every ONNX-capable device on the variant
    # selected for its profile, installed through TUF, predicting exactly like it; the LiteRT-only
    # MCUs got nothing, with the reason
    fleet = out["fleet"]["devices"]
    assert len(fleet) >= 10 and len({d["device_id"] for d in fleet}) == len(fleet)
    assert len({d["profile"] for d in fleet}) >= 5
    for d in fleet:
        if d["profile"] == "mcu-cortex-m7":
            assert d["ref"] is None and d["status"] == "skipped" and "mcu-cortex-m7" in d["reason"], d
        else:
            assert d["status"] == "installed" and d["ref"].startswith("digits-cnn:1"), d
            assert d["predictions"] == 450 and d["agrees_with_direct"] == 1.0 and d["accuracy"] > 0.9, d
    assert {d["stage"] for d in fleet if d["stage"] is not None} == {0, 1, 2}
    good, broken = out["fleet"]["rollouts"]
    assert good["status"] == "completed" and [t["to_stage"] for t in good["transitions"]] == [0, 1, 2, 2]
    assert all(t["actor"] == "auto" for t in good["transitions"][1:])
    # the deliberately broken version 2 failed its canary and was rolled back with no human involved;
    # only canary devices ever saw it
    assert broken["status"] == "rolled_back" and broken["requested"] == "digits-cnn:2"
    assert [t["to_status"] for t in broken["transitions"]] == ["running", "halted", "rolling_back", "rolled_back"]
    assert all(t["actor"] == "auto" for t in broken["transitions"][1:])
    canaries = [d for d in fleet if d["broken_release"].startswith("canary")]
    assert 1 <= len(canaries) <= 3 and all("installed" in d["broken_release"] for d in canaries), canaries
    assert all(d["broken_release"] in ("never offered", "-") for d in fleet if d not in canaries)
    assert out["fleet"]["dashboard_url"].endswith("/dashboard")
    # drift: site-south saw three pixels shifted; the server names exactly them, there only, from sketches
    drift = out["fleet"]["drift"]
    assert drift["shifted_site"] == "site-south"
    assert drift["shifted_features"] == ["element:19", "element:20", "element:44"]
    cohorts = {c["label"]: c for c in drift["cohorts"]}
    assert sorted(cohorts["tag=site-south"]["drifted_features"]) == drift["shifted_features"]
    assert cohorts["tag=site-south"]["verdict"] == "drift" and cohorts["tag=site-south"]["devices"] == 5
    assert cohorts["tag=site-north"]["drifted_features"] == [] and cohorts["tag=site-north"]["verdict"] == "no_drift"
    assert drift["uploads"]["windows"] >= 10 and drift["uploads"]["refused"] == 0
    assert drift["audit"]["rows_checked"] == 10 * 450 and drift["audit"]["rows_found"] == 0
    assert drift["audit"]["windows"] >= 10
    # pay per query: the kiosk runs out offline and is refused, is topped up online; its copy is flagged
    metering = out["fleet"]["metering"]
    assert (metering["offline_served"], metering["offline_refused"]) == (40, 15), metering
    assert "QuotaExceededError" in metering["refusal"] and metering["served_after_top_up"] == 21
    kinds = {f["kind"] for f in metering["flags"]}
    assert {"clone", "rollback"} <= kinds and all(f["device_id"] == metering["device_id"] for f in metering["flags"])
    # billed: 40 + 21 before the copy, then 12 calls twice on each of the two branches
    assert metering["reported_used"] >= 40 + 21 + 4 * 12, metering

    # the human-readable run reuses the workspace (a new base version); --serve keeps the
    # control plane up afterwards until interrupted
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinymlops", "demo", "--workspace", str(ws), "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"TINYMLOPS_MLPERF_DIR": str(MLPERF_DIR), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200"},
    )
    try:
        url = None
        assert proc.stderr is not None
        for line in proc.stderr:
            found = re.search(r"control plane on (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found.group(1)
                break
        assert url is not None, f"no server line; exit {proc.poll()}"
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{url}/v1/releases", timeout=10).status_code == 401  # still needs a key
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert (
        "digits-cnn:3" in stdout
        and "Selection" in stdout
        and "Delivery" in stdout
        and "Fleet" in stdout
        and "Dashboard: http" in stdout
        and "Pay per query" in stdout
        and "flag: clone" in stdout
        and "/dashboard/licenses" in stdout
    )
