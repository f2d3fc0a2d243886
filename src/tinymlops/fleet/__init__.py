"""The fleet simulator: many real device agents against a real control plane.

Each simulated device is the real device software — its own keys and data directory, enrolment
with a one-time token, TUF trust and updates, A/B installs, the runtime serving predictions — with
a simulated context (battery draining and charging, Wi-Fi / cellular / offline periods) and a
prediction workload on real data. ``tinymlops fleet simulate`` is the command.

Modules (each holds one thing):

* :mod:`~tinymlops.fleet.mix` — the profile mix file (TOML) and the default mix;
* :mod:`~tinymlops.fleet.context` — the simulated context provider and its scenarios;
* :mod:`~tinymlops.fleet.workload` — what a device predicts (digits, or generated inputs);
* :mod:`~tinymlops.fleet.device` — one simulated device, and a group of them on threads;
* :mod:`~tinymlops.fleet.stats` — per-device counters, per-profile rows;
* :mod:`~tinymlops.fleet.backends` — ``threads`` or ``ray``;
* :mod:`~tinymlops.fleet.simulator` — preparing, running and stopping a simulation;
* :mod:`~tinymlops.fleet.summary` — the live and final tables (rich) and the JSON result.

The names below are imported lazily: a Ray worker that runs devices imports only the device side
(the edge agent, numpy), never the mix parser's or the summary's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatteryScenario": "tinymlops.fleet.context",
    "NetworkScenario": "tinymlops.fleet.context",
    "Scenario": "tinymlops.fleet.context",
    "SimulatedContext": "tinymlops.fleet.context",
    "DeviceGroup": "tinymlops.fleet.device",
    "DevicePlan": "tinymlops.fleet.device",
    "SimulatedDevice": "tinymlops.fleet.device",
    "Mix": "tinymlops.fleet.mix",
    "MixEntry": "tinymlops.fleet.mix",
    "default_mix": "tinymlops.fleet.mix",
    "load_mix": "tinymlops.fleet.mix",
    "parse_mix": "tinymlops.fleet.mix",
    "FleetResult": "tinymlops.fleet.simulator",
    "FleetSettings": "tinymlops.fleet.simulator",
    "FleetSimulator": "tinymlops.fleet.simulator",
    "FleetSnapshot": "tinymlops.fleet.simulator",
    "open_backend": "tinymlops.fleet.backends",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tinymlops.fleet' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
