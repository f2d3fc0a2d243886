"""A simulated fleet against a real control plane: real agents enrol with their own keys and tokens,
a release made through the API reaches every ONNX-capable device through TUF, each installs its own
variant and classifies the held-out digits with it while its network comes and goes; a re-run over
the same data directory is the same fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet_world import by_profile, digits_plane_fixture, test_mix, wait_for  # noqa: F401 (fixture)

from tinymlops.fleet.simulator import FLEET_FILE, FleetSettings, FleetSimulator
from tinymlops.fleet.summary import final_view, profile_table


def test_a_fleet_enrols_installs_its_variants_and_predicts_through_offline_periods(
    digits_plane: Any, tmp_path: Path
) -> None:
    plane = digits_plane
    _, release_key = plane.api_key("release", "releaser")
    settings = FleetSettings(
        plane.url,
        devices=8,
        mix=test_mix(),
        api_key=plane.admin_key,
        data_dir=tmp_path / "fleet",
        seed=7,
        poll_interval_s=0.3,
        ramp_s=0.3,
    )
    with FleetSimulator(settings) as sim:
        sim.start()
        assert sim.enrolled_now == 8
        enrolled = wait_for(sim, "every device to enrol", lambda s: all(d["device_id"] for d in s.devices))
        ids = {d["name"]: d["device_id"] for d in enrolled.devices}
        assert len(set(ids.values())) == 8

        r = plane.http(release_key).post("/v1/releases", json={"model": "digits"})
        assert r.status_code == 201, r.text
        release = r.json()
        assignments = {a["device_id"]: a for a in release["assignments"]}
        assert set(assignments) == set(ids.values())
        published = {i for i, a in assignments.items() if a["status"] == "published"}
        profiles = {d["device_id"]: d["profile"] for d in enrolled.devices}
        assert {profiles[i] for i in published} == {"rpi-4", "android-nnapi-phone"} and len(published) == 6

        def served_and_offline(s: Any) -> bool:
            running = {d["device_id"]: d for d in s.devices}
            rpis = [d for d in s.devices if d["profile"] == "rpi-4"]
            return (
                all(running[i]["bundle_id"] == assignments[i]["bundle_id"] for i in published)
                and all(running[i]["labelled"] >= 30 for i in published)
                and all(running[i]["reports_sent"]["health"] >= 1 for i in published)
                and sum(d["offline_predictions"] for d in rpis) > 0
                and all(d["cycles"].get("offline", 0) > 0 for d in rpis)
            )

        wait_for(sim, "every ONNX device to serve its bundle through offline periods", served_and_offline)
        result = sim.stop(requested_s=None)

    shown = plane.http(release_key).get(f"/v1/releases/{release['id']}").json()
    reported = {a["device_id"]: (a.get("latest_report") or {}).get("status") for a in shown["assignments"]}
    groups = by_profile(result.devices)
    for d in groups["rpi-4"] + groups["android-nnapi-phone"]:
        a = assignments[d["device_id"]]
        assert (d["bundle_id"], d["ref"]) == (a["bundle_id"], a["ref"]), d  # its own variant, through TUF
        assert d["installs"] == 1 and d["errors"] == 0 and d["workload"] == "digits", d
        assert d["accuracy"] > 0.85, d  # the held-out digits, classified on the device
        assert d["state"] == "stopped" and reported[d["device_id"]] == "installed"
        assert d["reports_sent"]["install"] >= 1 and d["reports_pending"] == 0
    for d in groups["mcu-cortex-m7"]:  # LiteRT only: nothing fits, it says so and serves nothing
        assert "mcu-cortex-m7" in assignments[d["device_id"]]["reason"]
        assert d["bundle_id"] is None and d["predictions"] == 0 and d["refused"] > 0
        assert d["cycles"].get("idle", 0) > 0 and "installed" not in d["cycles"]

    rows = {r["profile"]: r for r in result.summary["profiles"]}
    assert set(rows) == {"rpi-4", "android-nnapi-phone", "mcu-cortex-m7"}
    rpi, phones = rows["rpi-4"], rows["android-nnapi-phone"]
    assert rpi["offline_s"] > 0 and rpi["cycles"]["offline"] > 0 and rpi["offline_predictions"] > 0
    assert phones["network_s"]["cellular"] > 0 and phones["offline_s"] == 0
    assert phones["battery_mean"] < 1.0 and rows["mcu-cortex-m7"]["battery_mean"] == 1.0
    assert result.summary["total"]["predictions"] == sum(d["predictions"] for d in result.devices)
    assert result.summary["total"]["accuracy"] > 0.85
    assert rpi["latency_ms"]["p50"] is not None and rpi["latency_ms"]["p50"] <= rpi["latency_ms"]["p95"]
    doc = json.loads(json.dumps(result.to_dict()))  # the JSON result holds everything above
    assert doc["total"]["installs"] == 6 and len(doc["devices"]) == 8 and "latency_hist" not in doc["devices"][0]
    assert (tmp_path / "fleet" / FLEET_FILE).exists() and result.kept
    # the tables render
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(final_view(result))
    text = console.export_text()
    assert "android-nnapi-phone" in text and "total" in text
    assert profile_table(result.summary).row_count == 4

    # a re-run over the same data directory is the same fleet: no key needed, no new enrolment,
    # every device opens the bundle it installed and serves at once
    again = FleetSettings(plane.url, devices=8, mix=test_mix(), data_dir=tmp_path / "fleet", poll_interval_s=0.3)
    with FleetSimulator(again) as sim:
        sim.start()
        assert sim.enrolled_now == 0
        wait_for(
            sim,
            "the re-run to serve",
            lambda s: (
                all(d["device_id"] for d in s.devices)
                and all(d["predictions"] > 0 for d in s.devices if d["device_id"] in published)
            ),
        )
        second = sim.stop()
    assert {d["name"]: d["device_id"] for d in second.devices} == ids
    for d in second.devices:
        assert d["bundle_id"] == assignments[d["device_id"]]["bundle_id"] and "installed" not in d["cycles"]
