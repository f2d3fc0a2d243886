"""Telemetry gates of a rollout: per device class, the new bundle's p95 latency and energy per
inference against the same devices' previous bundle. The pure judge first (a violated class fails,
a class with too few samples holds, a class without a baseline is not judged, the old gates are
unchanged), then real rollouts over HTTP: devices report installs and upload sealed telemetry, and
the server's rollout holds, fails and rolls back, or completes on its own."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import delivery_world
from delivery_world import World
from sealed_telemetry import SimulatedDevice, send
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.errors import UsageError
from tinymlops.release.rollout import ClassComparison, HealthSnapshot, judge
from tinymlops.spec.rollout import HealthCriteria

delivery = delivery_world.delivery  # the live world (fixture)


# --- the judge -------------------------------------------------------------------------------------
def _cls(profile: str, *, n: int = 500, base_n: int = 500, p95: float = 2.0, base_p95: float = 2.0,
         j: float = 1.0, base_j: float = 1.0, baseline: bool = True) -> ClassComparison:  # fmt: skip
    return ClassComparison(
        profile=profile,
        devices=2,
        latency_baseline=baseline,
        new_latency_samples=n,
        base_latency_samples=base_n,
        new_p95_ms=p95 if n else None,
        base_p95_ms=base_p95 if base_n else None,
        energy_baseline=baseline,
        energy_method="rapl",
        new_energy_samples=n,
        base_energy_samples=base_n,
        new_energy_j=j if n else None,
        base_energy_j=base_j if base_n else None,
    )


GATED = HealthCriteria(min_reports=1, max_energy_ratio=1.2, max_p95_latency_ratio=1.5, min_class_samples=100)


def _snapshot(*classes: ClassComparison) -> HealthSnapshot:
    return HealthSnapshot(stage=0, installs_ok=4, classes=classes)


def test_a_class_whose_energy_regresses_fails_the_stage() -> None:
    v = judge(GATED, _snapshot(_cls("rpi-4", j=1.5), _cls("x86-edge-server")), 0.0)
    assert v.decision == "fail"
    assert [c.criterion for c in v.failed] == ["max_energy_ratio"]
    assert "energy per inference / previous bundle on rpi-4 (rapl) 1.5 > 1.2" in v.reason
    ok = [c for c in v.checks if c.criterion == "max_energy_ratio" and "x86" in c.detail]
    assert ok and ok[0].ok is True


def test_a_class_with_too_few_samples_holds_neither_passing_nor_failing() -> None:
    # rpi-4 regresses, but on 40 samples: not judged yet, and the stage waits instead of passing
    v = judge(GATED, _snapshot(_cls("rpi-4", n=40, j=3.0), _cls("x86-edge-server")), 0.0)
    assert v.decision == "wait" and v.failed == ()
    assert "latency samples on rpi-4: 40 new, 500 previous, 100 needed on each" in v.reason
    assert "energy samples on rpi-4: 40 new" in v.reason
    # a violated class elsewhere still fails the stage
    v = judge(GATED, _snapshot(_cls("rpi-4", n=40), _cls("x86-edge-server", p95=4.0)), 0.0)
    assert v.decision == "fail" and "p95 latency / previous bundle on x86-edge-server 2 > 1.5" in v.reason


def test_without_a_baseline_a_class_is_not_judged_and_without_gates_nothing_changes() -> None:
    v = judge(GATED, _snapshot(_cls("rpi-4", base_n=0, baseline=False)), 0.0)
    assert v.decision == "pass"
    assert {c.ok for c in v.checks if c.criterion in ("max_energy_ratio", "max_p95_latency_ratio")} == {None}
    assert judge(GATED, _snapshot(), 0.0).decision == "pass"  # nobody had a previous bundle
    # a plan without telemetry gates judges exactly as before, whatever the classes say
    plain = HealthCriteria(min_reports=1)
    before = judge(plain, HealthSnapshot(stage=0, installs_ok=4), 0.0)
    after = judge(plain, _snapshot(_cls("rpi-4", j=9.0)), 0.0)
    assert (before.decision, before.reason, before.checks) == (after.decision, after.reason, after.checks)
    # ... and gates need the install reports before they fail anything
    early = judge(HealthCriteria(min_reports=10, max_energy_ratio=1.2), _snapshot(_cls("rpi-4", j=2.0)), 0.0)
    assert early.decision == "wait" and "too few reports" in early.reason


def test_class_comparisons_are_checked() -> None:
    with pytest.raises(UsageError, match="new_latency_samples"):
        ClassComparison("rpi-4", new_latency_samples=-1)
    with pytest.raises(UsageError, match="base_energy_j"):
        ClassComparison("rpi-4", base_energy_j=float("nan"))
    with pytest.raises(UsageError, match="ClassComparison"):
        HealthSnapshot(stage=0, classes=({"profile": "rpi-4"},))  # type: ignore[arg-type]
    c = _cls("rpi-4", p95=3.0, j=0.5)
    assert (c.p95_ratio, c.energy_ratio) == (1.5, 0.5)
    assert json.loads(json.dumps(c.to_dict()))["energy_ratio"] == 0.5


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.floats(0.01, 10, allow_nan=False),
    threshold=st.floats(0.01, 10, allow_nan=False),
    n=st.integers(0, 300),
    need=st.integers(1, 300),
)
def test_the_gate_decision_follows_the_ratio_and_the_samples(ratio: float, threshold: float, n: int, need: int) -> None:
    criteria = HealthCriteria(min_reports=1, max_energy_ratio=threshold, min_class_samples=need)
    v = judge(criteria, _snapshot(_cls("rpi-4", n=n, j=ratio)), 0.0)
    if n < need:
        assert v.decision == "wait"
    elif n and ratio > threshold:
        assert v.decision == "fail"
    else:
        assert v.decision == "pass"


# --- real rollouts over HTTP -----------------------------------------------------------------------
def _enrol(world: World, profile: str, seed: int) -> SimulatedDevice:
    keys = DeviceKeys.generate()
    DeviceClient(world.url, keys).enrol(world.plane.enrolment_token(), profile)
    return SimulatedDevice(keys, power_w=5.0, seed=seed, now=1_700_000_000.0 + 10_000 * seed)


def _installed(world: World, dev: SimulatedDevice, bundle: str) -> None:
    body = {
        "spec_version": "1.0",
        "status": "installed",
        "reason": "ok",
        "bundle_id": bundle,
        "active_bundle_id": bundle,
    }
    r = world.plane.signed(dev.keys, "POST", "/v1/devices/me/installs", json.dumps(body).encode())
    assert r.status_code == 201, r.text


def _release(world: World, model: str, devices: list[SimulatedDevice], gate: dict[str, Any] | None) -> dict[str, str]:
    plan = None
    if gate is not None:
        plan = {
            "spec_version": "1.0",
            "on_failure": "rollback",
            "stages": [{"name": "all", "fraction": 1.0, "health": gate}],
        }
    doc = world.release(model, [d.device_id for d in devices], plan=plan)
    bundles = {a["device_id"]: a["bundle_id"] for a in doc["assignments"]}
    for d in devices:
        _installed(world, d, bundles[d.device_id])
    return {"id": doc["id"], **bundles}


def _rollout(world: World, release_id: str) -> dict[str, Any]:
    r = world.plane.http(world.read_key).get(f"/v1/releases/{release_id}/rollout")
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _fleet(world: World) -> tuple[list[SimulatedDevice], dict[str, str]]:
    """2 rpi-4 and 2 x86 devices on tiny:1, each with 120 calls of telemetry from it (1 ms of CPU at 5 W)."""
    devices = [_enrol(world, "rpi-4", 1), _enrol(world, "rpi-4", 2), _enrol(world, "x86-edge-server", 3)]
    devices.append(_enrol(world, "x86-edge-server", 4))
    base = _release(world, "tiny:1", devices, None)
    for d in devices:
        assert send(world.plane, d, d.seal(d.window(base[d.device_id], 120, cpu_ms=1.0))).status_code == 201
    return devices, base


@pytest.mark.slow
def test_a_rollout_whose_energy_regresses_on_one_class_holds_then_fails_and_rolls_back(delivery: World) -> None:
    devices, _ = _fleet(delivery)
    gate = {"min_reports": 4, "max_energy_ratio": 1.2, "min_class_samples": 100, "max_latency_ratio": 1000}
    new = _release(delivery, "tiny:2", devices, gate)
    status = _rollout(delivery, new["id"])  # installed everywhere, no telemetry from the new bundle: hold
    assert status["status"] == "running" and status["verdict"]["decision"] == "wait"
    assert "energy samples on rpi-4: 0 new, 0 previous, 100 needed on each" in status["verdict"]["reason"]
    rpi, x86 = devices[:2], devices[2:]
    for d in x86:  # the x86 class is as frugal as before
        assert send(delivery.plane, d, d.seal(d.window(new[d.device_id], 120, cpu_ms=1.0))).status_code == 201
    # one rpi-4 device's 60 calls: still too few for its class, which keeps holding
    assert (
        send(delivery.plane, rpi[0], rpi[0].seal(rpi[0].window(new[rpi[0].device_id], 60, cpu_ms=2.0))).status_code
        == 201
    )
    status = _rollout(delivery, new["id"])
    assert status["status"] == "running" and "energy samples on rpi-4: 60 new" in status["verdict"]["reason"]
    # the rest of the rpi-4 class: its energy per inference doubled -> the gate fails, the release goes back
    r = send(delivery.plane, rpi[1], rpi[1].seal(rpi[1].window(new[rpi[1].device_id], 60, cpu_ms=2.0)))
    assert r.status_code == 201
    status = _rollout(delivery, new["id"])
    assert status["status"] in ("rolling_back", "rolled_back"), status["verdict"]
    halted = next(t for t in status["transitions"] if t["to_status"] == "halted")
    assert "energy per inference / previous bundle on rpi-4 (model) 2 > 1.2" in halted["reason"]
    assert "x86" not in halted["reason"]
    checks = {(c["criterion"], c["detail"].split(" on ")[-1].split(" ")[0]): c for c in status["verdict"]["checks"]}
    assert checks[("max_energy_ratio", "x86-edge-server")]["ok"] is True
    assert checks[("max_energy_ratio", "rpi-4")]["measured"] == pytest.approx(2.0)
    classes = {c["profile"]: c for c in status["health"]["classes"]}
    assert classes["rpi-4"]["energy_ratio"] == pytest.approx(2.0)


@pytest.mark.slow
def test_a_rollout_without_regressions_waits_for_enough_telemetry_then_completes(delivery: World) -> None:
    devices, _ = _fleet(delivery)
    gate = {"min_reports": 4, "max_energy_ratio": 1.2, "max_p95_latency_ratio": 1.5, "min_class_samples": 100}
    new = _release(delivery, "tiny:2", devices, gate)
    for d in devices:
        assert send(delivery.plane, d, d.seal(d.window(new[d.device_id], 30, cpu_ms=1.0))).status_code == 201
    status = _rollout(delivery, new["id"])
    assert status["status"] == "running" and "latency samples on rpi-4: 60 new" in status["verdict"]["reason"]
    for d in devices:
        assert send(delivery.plane, d, d.seal(d.window(new[d.device_id], 30, cpu_ms=1.05))).status_code == 201
    status = _rollout(delivery, new["id"])
    assert status["status"] == "completed", status["verdict"]
    assert status["plan"]["stages"][0]["health"]["max_energy_ratio"] == 1.2
