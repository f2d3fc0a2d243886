"""The Ray half of ``test_twenty_devices_on_ray_actors_install_and_predict``, run in its own process:
``python ray_fleet_run.py SERVER_URL ADMIN_KEY RELEASE_KEY DATA_DIR`` prints the result as JSON.

Ray's core worker installs process-wide failure signal handlers (SIGSEGV and others) that stay after
``ray.shutdown()``; in the test process they would take over the guard-page faults wasmtime turns
into traps, and a later WebAssembly test would crash the whole run. So the Ray fleet never runs in
the pytest process."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx

from tinymlops.fleet.mix import parse_mix
from tinymlops.fleet.simulator import FleetSettings, FleetSimulator

MIX = (
    "[profiles.rpi-4]\nweight = 2\nrate = 10\n[profiles.rpi-4.network]\nwifi = 0.6\noffline = 0.4\n"
    "mean_period_s = 1.0\nmin_period_s = 0.3\n"
    "[profiles.android-nnapi-phone]\nweight = 2\nrate = 10\n[profiles.mcu-cortex-m7]\nweight = 1\nrate = 2\n"
)


def wait_for(sim: FleetSimulator, what: str, done, timeout_s: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        snap = sim.snapshot()
        if done(snap):
            return snap
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}: {[(d['name'], d['state']) for d in snap.devices]}")
        time.sleep(0.05)


def main(server_url: str, admin_key: str, release_key: str, data_dir: str) -> None:
    settings = FleetSettings(
        server_url,
        devices=20,
        mix=parse_mix(MIX),
        api_key=admin_key,
        data_dir=Path(data_dir),
        backend="ray",
        ray_actors=2,
        ray_cpus=2,
        poll_interval_s=0.5,
    )
    with FleetSimulator(settings) as sim:
        sim.start()
        wait_for(sim, "enrolment on Ray", lambda s: all(d["device_id"] for d in s.devices))
        r = httpx.post(
            f"{server_url}/v1/releases", json={"model": "digits"}, headers={"Authorization": f"Bearer {release_key}"}
        )
        if r.status_code != 201:
            raise SystemExit(f"release refused: {r.status_code} {r.text}")
        published = {a["device_id"] for a in r.json()["assignments"] if a["status"] == "published"}
        wait_for(
            sim,
            "installs and predictions on Ray",
            lambda s: all(d["labelled"] >= 10 for d in s.devices if d["device_id"] in published),
        )
        result = sim.stop()
    print(
        json.dumps(
            {
                "published": sorted(published),
                "backend": result.backend,
                "devices": [{"device_id": d["device_id"]} for d in result.devices],
                "summary": result.summary,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:5])
