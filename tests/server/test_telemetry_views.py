"""Performance read back from telemetry (``GET /v1/fleet/telemetry``, ``GET /v1/releases/{id}/performance``):
the numbers are checked against numbers computed independently from what the simulated devices did
(every call's latency and energy), not from the windows the server stored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

import delivery_world
from delivery_world import World
from live_server import error_of
from sealed_telemetry import SimulatedDevice, send
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.edge.agent.serving_stats import LatencyHistogram

delivery = delivery_world.delivery  # the live world (fixture)


def _enrol(world: World, profile: str, power_w: float, seed: int) -> SimulatedDevice:
    keys = DeviceKeys.generate()
    DeviceClient(world.url, keys).enrol(world.plane.enrolment_token(), profile)
    return SimulatedDevice(keys, power_w=power_w, seed=seed, now=1_700_000_000.0 + 10_000 * seed)


def _bundles(release: dict[str, Any]) -> dict[str, str]:
    return {a["device_id"]: a["bundle_id"] for a in release["assignments"]}


def _independent(devices: list[SimulatedDevice], cpu_ms: float) -> dict[str, Any]:
    latencies = [s for d in devices for s in d.latencies]
    h = LatencyHistogram()
    for s in latencies:
        h.add(s)
    p50, p95, p99 = (v * 1e3 for v in h.quantiles([0.5, 0.95, 0.99]))
    joules = [j for d in devices for j in d.joules]
    return {"latencies": latencies, "p50": p50, "p95": p95, "p99": p99, "energy": float(np.mean(joules))}


def test_fleet_numbers_per_class_match_what_the_devices_did(delivery: World) -> None:
    rpi = [_enrol(delivery, "rpi-4", 4.0, 1), _enrol(delivery, "rpi-4", 6.0, 2)]
    x86 = [_enrol(delivery, "x86-edge-server", 20.0, 3)]
    release = delivery.release("tiny:1", [d.device_id for d in rpi + x86])
    bundles = _bundles(release)
    requests = errors = 0
    peaks: dict[str, int] = {"rpi-4": 0, "x86-edge-server": 0}
    for dev, lat in ((rpi[0], 2.0), (rpi[1], 5.0), (x86[0], 0.5)):
        windows = [
            dev.window(bundles[dev.device_id], 90, latency_ms=lat, errors=3),
            dev.window(bundles[dev.device_id], 40),
        ]
        assert send(delivery.plane, dev, dev.seal(*windows)).status_code == 201
        requests += 130 if dev in rpi else 0
        errors += 3 if dev in rpi else 0
        profile = "rpi-4" if dev in rpi else "x86-edge-server"
        peaks[profile] = max([peaks[profile]] + [w.performance.peak_memory_bytes or 0 for w in windows])
    reader = delivery.plane.http(delivery.read_key)
    r = reader.get("/v1/fleet/telemetry", params={"model": "tiny"})
    assert r.status_code == 200, r.text
    classes = {c["profile"]: c for c in r.json()["classes"]}
    assert sorted(classes) == ["rpi-4", "x86-edge-server"]
    got = classes["rpi-4"]
    want = _independent(rpi, 1.0)
    assert (got["ref"], got["devices"], got["windows"]) == ("tiny:1", 2, 4)
    assert (got["requests"], got["errors"], got["latency_samples"]) == (requests, errors, len(want["latencies"]))
    assert got["error_rate"] == pytest.approx(errors / requests)
    # exact merge: the server's percentiles are those of one histogram of every call of the class
    assert (got["p50_ms"], got["p95_ms"], got["p99_ms"]) == pytest.approx((want["p50"], want["p95"], want["p99"]))
    # ... and so within the histogram's 1% of the exact percentiles of the raw latencies
    for q, key in ((50, "p50_ms"), (95, "p95_ms")):
        exact = float(np.percentile(want["latencies"], q, method="inverted_cdf")) * 1e3
        assert got[key] == pytest.approx(exact, rel=0.0101)
    # energy per inference: 4 W and 6 W devices, 1 ms of CPU each call, weighted by calls measured
    assert got["energy_method"] == "model" and got["energy"][0]["inferences"] == len(want["latencies"])
    assert got["energy_j_per_inference"] == pytest.approx(want["energy"], rel=1e-9)
    assert got["peak_memory_bytes"] == peaks["rpi-4"]
    assert classes["x86-edge-server"]["energy_j_per_inference"] == pytest.approx(20.0 * 1e-3)
    assert classes["x86-edge-server"]["p95_ms"] == pytest.approx(_independent(x86, 1.0)["p95"])

    # filters: another model, the release, a time range on the devices' clocks
    assert reader.get("/v1/fleet/telemetry", params={"model": "other"}).json()["classes"] == []
    by_release = reader.get("/v1/fleet/telemetry", params={"release": release["id"]}).json()["classes"]
    assert [c["requests"] for c in by_release] == [c["requests"] for c in r.json()["classes"]]
    late = datetime.fromtimestamp(max(d.now for d in rpi + x86) + 3600, UTC).isoformat()
    assert reader.get("/v1/fleet/telemetry", params={"since": late}).json()["classes"] == []
    first_end = datetime.fromtimestamp(min(rpi[0].by_window) + 1, UTC).isoformat()
    early = reader.get("/v1/fleet/telemetry", params={"until": first_end}).json()["classes"]
    assert [(c["profile"], c["windows"]) for c in early] == [("rpi-4", 1)]
    assert reader.get("/v1/fleet/telemetry", params={"since": late, "until": first_end}).json()["classes"] == []
    naive = reader.get("/v1/fleet/telemetry", params={"since": "2024-01-01T00:00:00"})
    assert naive.status_code == 400 and "time zone" in error_of(naive)["message"]
    garbled = reader.get("/v1/fleet/telemetry", params={"until": "yesterday"})
    assert garbled.status_code == 400 and "'until' must be an RFC 3339 date-time" in error_of(garbled)["message"]
    assert reader.get("/v1/fleet/telemetry", params={"modle": "tiny"}).status_code == 422
    assert delivery.plane.http().get("/v1/fleet/telemetry").status_code == 401


def test_release_performance_compares_each_class_with_the_bundles_it_replaced(delivery: World) -> None:
    rpi = [_enrol(delivery, "rpi-4", 5.0, 10 + i) for i in range(2)]
    x86 = [_enrol(delivery, "x86-edge-server", 5.0, 20)]
    devices = rpi + x86
    base = _bundles(delivery.release("tiny:1", [d.device_id for d in devices]))
    for d in devices:
        assert (
            send(delivery.plane, d, d.seal(d.window(base[d.device_id], 100, latency_ms=2.0, cpu_ms=1.0))).status_code
            == 201
        )
    old = {d.device_id: list(d.latencies) for d in devices}
    release = delivery.release("tiny:2", [d.device_id for d in devices])
    new = _bundles(release)
    for d in rpi:  # the new bundle is slower and hungrier on the rpi-4 class only
        assert (
            send(delivery.plane, d, d.seal(d.window(new[d.device_id], 100, latency_ms=4.0, cpu_ms=2.5))).status_code
            == 201
        )
    r = delivery.plane.http(delivery.read_key).get(f"/v1/releases/{release['id']}/performance")
    assert r.status_code == 200, r.text
    classes = {c["profile"]: c for c in r.json()["classes"]}
    got = classes["rpi-4"]
    h_old, h_new = LatencyHistogram(), LatencyHistogram()
    for d in rpi:
        for s in old[d.device_id]:
            h_old.add(s)
        for s in d.latencies[len(old[d.device_id]) :]:
            h_new.add(s)
    assert got["devices"] == 2 and got["new_latency_samples"] == got["base_latency_samples"] == 200
    assert got["base_p95_ms"] == pytest.approx(h_old.quantile(0.95) * 1e3)
    assert got["new_p95_ms"] == pytest.approx(h_new.quantile(0.95) * 1e3)
    assert got["p95_ratio"] == pytest.approx(h_new.quantile(0.95) / h_old.quantile(0.95))
    assert got["energy_method"] == "model" and got["energy_ratio"] == pytest.approx(2.5)
    # the x86 device sent nothing from its new bundle: a baseline, no pairs, no ratio
    assert classes["x86-edge-server"]["latency_baseline"] is True
    assert classes["x86-edge-server"]["new_latency_samples"] == 0 and classes["x86-edge-server"]["p95_ratio"] is None
    assert delivery.plane.http(delivery.read_key).get("/v1/releases/0123456789abcdef/performance").status_code == 404
