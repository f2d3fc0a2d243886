"""``tinymlops fleet`` as a user runs it: bad input is a clear message and a non-zero exit, before
any device starts; a short run prints the result as JSON; ``fleet mix`` prints and checks mixes.
In this process (``invoke_cli``: the entry point under typer's CliRunner); ``fleet mix`` once through a
real subprocess (the installed entry point must really work)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from fleet_world import enrolled_elsewhere

from cli_process import invoke_cli, run_cli
from live_server import plane  # noqa: F401 (fixture)
from tinymlops.fleet.mix import DEFAULT_MIX_TOML, parse_mix

ENV_KEY = "TINYMLOPS_API_KEY"


def _closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tokens(p: Any) -> int:
    return len(p.admin.get("/v1/admin/enrolment-tokens").json())


def test_bad_numbers_and_an_unreachable_server_exit_non_zero_with_the_reason(tmp_path: Path) -> None:
    proc = invoke_cli(None, "fleet", "simulate", "--devices", "0", "--server", "http://127.0.0.1:1", code=2)
    assert "--devices" in proc.stderr and "greater than or equal to 1" in proc.stderr
    url = f"http://127.0.0.1:{_closed_port()}"
    proc = invoke_cli(None, "fleet", "simulate", "-n", "3", "--server", url, "--data-dir", str(tmp_path / "d"), code=4)
    assert f"cannot reach the control plane at {url}" in proc.stderr
    assert not list((tmp_path / "d").glob("devices/*"))  # nothing was started


def test_a_bad_key_or_an_unknown_profile_stops_the_run_before_any_device_starts(
    plane: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = tmp_path / "fleet"
    common = ["fleet", "simulate", "--server", plane.url, "--data-dir", str(data), "--duration", "1"]
    proc = invoke_cli(None, *common, "-n", "2", "--api-key", "tmk_0000000000000000_" + "A" * 43, code=2)
    assert "refused the API key" in proc.stderr
    mix = tmp_path / "mix.toml"
    mix.write_text("[profiles.rpi-4]\nweight = 1\n\n[profiles.toaster]\nprofile = 'smart-toaster-9000'\n")
    proc = invoke_cli(None, *common, "-n", "4", "--api-key", plane.admin_key, "--profiles", str(mix), code=2)
    assert "entry 'toaster'" in proc.stderr and "no device profile 'smart-toaster-9000'" in proc.stderr
    assert str(mix) in proc.stderr
    # the first token of each profile is made first: the bad profile stopped it after one token
    assert _tokens(plane) == 1
    assert plane.admin.get("/v1/devices").json() == []


@pytest.mark.slow
def test_a_short_run_prints_its_result_and_more_bad_input_is_refused(
    plane: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = tmp_path / "fleet"
    mix = tmp_path / "mix.toml"
    mix.write_text("[profiles.rpi-4]\ncount = 1\nrate = 5\n\n[profiles.x86-edge-server]\nweight = 1\nrate = 5\n")
    common = ["fleet", "simulate", "--server", plane.url, "--data-dir", str(data), "--profiles", str(mix)]
    out = tmp_path / "result.json"
    proc = invoke_cli(
        None,
        *common,
        "-n",
        "2",
        "--duration",
        "2",
        "--poll-interval",
        "0.3",
        "--api-key",
        plane.admin_key,
        "--json",
        "--out",
        str(out),
    )
    doc = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == doc
    assert doc["enrolled_now"] == 2 and doc["kept"] and doc["elapsed_s"] >= 2 and not doc["interrupted"]
    assert [r["profile"] for r in doc["profiles"]] == ["rpi-4", "x86-edge-server"]
    assert all(d["device_id"] and d["state"] == "stopped" and d["cycles"]["idle"] > 0 for d in doc["devices"])
    enrolled = {d["id"] for d in plane.admin.get("/v1/devices").json()}
    assert enrolled == {d["device_id"] for d in doc["devices"]}
    # human output, the same devices again (no key needed now), through the env var for the key
    proc = invoke_cli(None, *common, "-n", "2", "--duration", "1", "--poll-interval", "0.3")
    assert "per profile" in proc.stdout and "0 enrolled now" in proc.stdout
    # more devices than enrolled and no key; a mix the data directory does not match; a broken mix
    proc = invoke_cli(None, *common, "-n", "3", code=2)
    assert "1 simulated device(s) must enrol" in proc.stderr and ENV_KEY in proc.stderr
    other = tmp_path / "other.toml"
    other.write_text("[profiles.jetson-orin-nano]\nweight = 1\n")
    proc = invoke_cli(
        None,
        "fleet",
        "simulate",
        "--server",
        plane.url,
        "--data-dir",
        str(data),
        "-n",
        "2",
        "--profiles",
        str(other),
        code=2,
    )
    assert "device-00001" in proc.stderr and "mix entry 'rpi-4'" in proc.stderr and "no longer has" in proc.stderr
    other.write_text("[profiles.rpi-4]\nprofile = 'jetson-orin-nano'\n[profiles.x86-edge-server]\n")
    proc = invoke_cli(None, *common[:-1], str(other), "-n", "2", code=2)
    assert "enrolled with profile 'rpi-4' but the mix gives it 'jetson-orin-nano'" in proc.stderr
    other.write_text("[profiles.rpi-4]\nweight = 1\nrate = -1\n")
    proc = invoke_cli(None, *common[:-1], str(other), "-n", "2", code=2)
    assert f"{other}:3: profiles.rpi-4.rate" in proc.stderr
    proc = invoke_cli(None, *common, "-n", "2", "--backend", "dask", code=2)
    assert "unknown backend 'dask'" in proc.stderr
    # a device the server refuses: the result still comes out (one JSON document), the exit code is 4
    enrolled_elsewhere(tmp_path / "gone", plane.url)
    rpi = tmp_path / "rpi.toml"
    rpi.write_text("[profiles.rpi-4]\nrate = 1\n")
    gone = ["--data-dir", str(tmp_path / "gone"), "--profiles", str(rpi), "--duration", "1", "--json"]
    proc = invoke_cli(None, "fleet", "simulate", "--server", plane.url, "-n", "1", *gone, code=4)
    assert json.loads(proc.stdout)["devices"][0]["state"] == "failed"
    assert "1 of 1 simulated devices could not run; device-00001 (rpi-4): ServerRequestError" in proc.stderr
    _, reader = plane.api_key("read", "reader")
    proc = invoke_cli(None, "fleet", "simulate", "--server", plane.url, "-n", "1", "--api-key", reader, code=2)
    assert "admin-scope key" in proc.stderr


def test_fleet_mix_prints_the_default_and_checks_a_file(tmp_path: Path) -> None:
    proc = run_cli(None, "fleet", "mix")  # the subprocess smoke test
    assert proc.stdout == DEFAULT_MIX_TOML and parse_mix(proc.stdout).names()
    mix = tmp_path / "mix.toml"
    mix.write_text("[profiles.rpi-4]\ncount = 2\n[profiles.android-nnapi-phone]\nweight = 1\ntags = ['eu']\n")
    doc = json.loads(invoke_cli(None, "fleet", "mix", str(mix), "-n", "5", "--json").stdout)
    assert doc["counts"] == {"rpi-4": 2, "android-nnapi-phone": 3}
    assert doc["profiles"]["android-nnapi-phone"]["tags"] == ["eu"]
