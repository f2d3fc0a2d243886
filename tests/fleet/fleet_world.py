"""A real control plane with the digits model registered, and a way to wait for a simulated fleet.

A plain module (test modules import it by name; see tests/edge/agent/agent_testbed.py for why not a
conftest).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from live_server import start_plane
from tinymlops.devices.identity import EnrolmentState, load_or_create_keys
from tinymlops.fleet.mix import parse_mix
from tinymlops.fleet.simulator import FleetSimulator, FleetSnapshot

#: three profiles, eight devices: Raspberry Pis on flaky Wi-Fi, phones on Wi-Fi/cellular with a
#: battery that drains and charges, and LiteRT-only microcontrollers (no ONNX variant fits them)
TEST_MIX = """\
spec_version = "1.0"

[profiles.rpi-4]
count = 3
rate = 25
[profiles.rpi-4.network]
wifi = 0.5
offline = 0.5
mean_period_s = 0.8
min_period_s = 0.3

[profiles.android-nnapi-phone]
count = 3
rate = 25
tags = ["phones"]
[profiles.android-nnapi-phone.network]
wifi = 0.5
cellular = 0.5
mean_period_s = 1.0
[profiles.android-nnapi-phone.battery]
initial = 0.9
drain_per_s = 0.01
drain_per_prediction = 0.0005
charge_per_s = 0.05
charge_every_s = 6.0
charge_for_s = 1.0

[profiles.mcu-cortex-m7]
count = 2
rate = 5
"""


def test_mix() -> Any:
    return parse_mix(TEST_MIX, "test mix")


test_mix.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(name="digits_plane")
def digits_plane_fixture(sqlite_workspace: Any, digits_model: Any) -> Any:
    """A live control plane over a workspace holding the digits CNN and its derived variants."""
    from tinymlops.optimize.pipeline import register_model

    register_model(sqlite_workspace, "digits", digits_model.onnx)  # derives and evaluates the variants
    plane = start_plane(sqlite_workspace)
    yield plane
    plane.close()


def wait_for(
    sim: FleetSimulator, what: str, done: Callable[[FleetSnapshot], bool], *, timeout_s: float = 60.0
) -> FleetSnapshot:
    """Poll the simulation's snapshot until ``done`` holds (or fail, showing the last snapshot)."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = sim.snapshot()
        if done(snap):
            return snap
        if time.monotonic() > deadline:
            states = [(d["name"], d["state"], d["cycles"], d["predictions"], d["last_error"]) for d in snap.devices]
            raise AssertionError(f"timed out waiting for {what}: {states}")
        time.sleep(0.05)


def enrolled_elsewhere(data_dir: Path, server_url: str) -> None:
    """device-00001 with its own keys and an enrolment record the server knows nothing of (a device
    deleted on the control plane, or a copied data directory)."""
    device = data_dir / "devices" / "device-00001"
    keys = load_or_create_keys(device / "keys")
    EnrolmentState(server_url, keys.device_id, "rpi-4", "2026-01-01T00:00:00+00:00", ()).save(device)


def by_profile(devices: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in devices:
        out.setdefault(d["profile"], []).append(d)
    return out
