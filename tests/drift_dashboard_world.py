"""A live control plane with real telemetry, for the dashboard's telemetry and drift pages.

* ``digits`` — a real ONNX logistic regression on scikit-learn's digits, registered with its eval
  set (the reference profile is built then); ten devices (tags ``site-a``/``site-b``) served field
  rows with real ONNX Runtime, site-b's inputs shifted by half a reference SD in pixels
  :data:`SHIFTED_PIXELS`; their recorders' windows sealed and stored
  (:func:`observe.telemetry_rows.populate`). One more device, whose profile and tag at ingestion
  are markup (:data:`dashboard_browser.XSS`), served unshifted rows with randomized response on its
  class histogram (epsilon :data:`LDP_EPSILON`): a cohort with too few rows to judge.
* ``tiny`` — tiny:1 (no dataset, so no reference profile) released to three simulated devices
  (:class:`sealed_telemetry.SimulatedDevice`: real predictions, chosen latencies, a power model)
  whose batches went through ``POST /v1/devices/me/telemetry``; one reported a ``full`` upload
  store, one an ``unwritable`` one, the third ``full`` and later ``ok`` again.
* ``bare`` — a model without dataset and without telemetry.

:func:`open_drift_world` yields it; ``DriftWorld.api()`` is a read-key client of the JSON API.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from dashboard_browser import XSS
from delivery_world import World, open_world, register_tiny
from observe.telemetry_rows import SHIFTED_PIXELS, device_windows, digits_world, enrol, insert_windows, populate
from sealed_telemetry import SimulatedDevice, send
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.optimize.pipeline import register_model
from tinymlops.spec.telemetry import StoreStatus

SHIFTED = {f"element:{p}" for p in SHIFTED_PIXELS}
LDP_EPSILON = 2.0
XSS_COHORT = f"tag={XSS}"


@dataclass
class DriftWorld:
    world: World
    digits_devices: int
    full: str  # device ids by the store status they last reported
    unwritable: str
    recovered: str

    @property
    def url(self) -> str:
        return self.world.url

    @property
    def read_key(self) -> str:
        return self.world.read_key

    def api(self) -> httpx.Client:
        return self.world.plane.http(self.world.read_key)

    def drift(self, **params: Any) -> dict[str, Any]:
        r = self.api().get("/v1/models/digits/drift", params=params)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc


def _simulated(world: World, profile: str, power_w: float, seed: int) -> SimulatedDevice:
    keys = DeviceKeys.generate()
    DeviceClient(world.url, keys).enrol(world.plane.enrolment_token(), profile)
    return SimulatedDevice(keys, power_w=power_w, seed=seed, now=time.time() - 3000 + 60 * seed)


@contextmanager
def open_drift_world(ws: Any) -> Iterator[DriftWorld]:
    digits = digits_world(0)
    keys = populate(ws, digits)
    (odd,) = enrol(ws, [["site-a"]])
    rows = digits.x_field[:60]
    windows = device_windows(digits.onnx, rows, start=time.time() - 1500, classes_epsilon=LDP_EPSILON, seed=77)
    insert_windows(ws, odd, windows, model="digits", version=1, profile=XSS, tags=[XSS])
    register_model(ws, "bare", digits.onnx, derive=False, run_evaluation=False)
    register_tiny(ws, versions=1)
    with open_world(ws) as world:
        sims = [
            _simulated(world, "rpi-4", 4.0, 1),
            _simulated(world, "rpi-4", 6.0, 2),
            _simulated(world, "x86-edge-server", 20.0, 3),
        ]
        release = world.release("tiny:1", [d.device_id for d in sims])
        bundles = {a["device_id"]: a["bundle_id"] for a in release["assignments"]}
        stores = [
            [StoreStatus("full", pending_windows=512, merged_windows=40, dropped_windows=0, error="store full")],
            [StoreStatus("unwritable", pending_windows=3, error="OSError: read-only file system")],
            [StoreStatus("full", pending_windows=500, merged_windows=2), StoreStatus("ok", pending_windows=1)],
        ]
        for dev, latency, statuses in zip(sims, (2.0, 5.0, 0.5), stores, strict=True):
            for status in statuses:
                w = dev.window(bundles[dev.device_id], 40, latency_ms=latency, errors=2, cpu_ms=1.0)
                r = send(world.plane, dev, dev.seal(w, store=status))
                assert r.status_code == 201, r.text
        yield DriftWorld(world, len(keys) + 1, sims[0].device_id, sims[1].device_id, sims[2].device_id)


def numbers_close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.isclose(a, b, rtol=rel, atol=1e-12))


__all__ = ["LDP_EPSILON", "SHIFTED", "XSS_COHORT", "DriftWorld", "numbers_close", "open_drift_world"]
