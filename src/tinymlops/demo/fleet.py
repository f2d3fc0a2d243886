"""The demo's control-plane step: a real server, a heterogeneous fleet of agents, a TUF release.

The control plane starts on 127.0.0.1 (a free port) over the demo's workspace. An operator key
is created the way ``tinymlops apikey create`` does it; everything after goes through the HTTP
API. Each simulated device keeps its own data directory (its keys never leave it): it is given
a one-time enrolment token for its profile, enrols, bootstraps its trust (the TUF root and the
release keys), and runs the real agent. A release of the digits model selects a variant per
device profile, builds a bundle encrypted to each device, publishes them through the TUF
repository; each agent downloads its own through TUF, verifies it, smoke-tests it in its A/B
slot and commits it, reports the install, and then classifies the held-out digits with it
(the answers must equal those of the variant run directly in ONNX Runtime).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.access.service import ApiKeyService
from tinymlops.edge.agent.loop import AgentConfig
from tinymlops.edge.agent.remote import connect
from tinymlops.edge.backends import open_backend
from tinymlops.errors import OperationError
from tinymlops.server.background import BackgroundServer
from tinymlops.workspace import Workspace

#: the simulated fleet: one device per profile (the MCU has only LiteRT: the ONNX digits model
#: has no variant for it, and the release says so instead of failing)
FLEET_PROFILES = ("x86-edge-server", "rpi-4", "rpi-zero-2w", "android-nnapi-phone", "jetson-orin-nano", "mcu-cortex-m7")
#: polls fast: the demo drives the agents one cycle at a time
DEMO_AGENT = AgentConfig(poll_interval=0.5, poll_jitter=0.1, backoff_base=0.1, backoff_cap=1.0)


@dataclass
class FleetDevice:
    device_id: str
    profile: str
    ref: str | None
    status: str
    reason: str
    bundle_id: str | None
    install_ms: float | None
    predictions: int
    accuracy: float | None
    agrees_with_direct: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FleetResult:
    server_url: str
    release_id: str
    devices: list[FleetDevice]

    def to_dict(self) -> dict[str, Any]:
        return {
            "server_url": self.server_url,
            "release_id": self.release_id,
            "devices": [d.to_dict() for d in self.devices],
        }


def _http(server_url: str, key: str) -> Any:
    import httpx

    return httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _ok(response: Any, what: str) -> Any:
    if response.status_code >= 400:
        raise OperationError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def run_fleet(
    ws: Workspace,
    model: str,
    x01: np.ndarray,
    y: np.ndarray,
    *,
    say: Callable[[str], None] = lambda _m: None,
) -> FleetResult:
    """Start the control plane, enrol one agent per profile, release ``model``, install, predict."""
    fleet_dir = ws.root / "fleet"
    fleet_dir.mkdir(exist_ok=True)
    _, admin_key = ApiKeyService(ws.engine).create("demo-operator", "admin", created_by="tinymlops demo")
    with BackgroundServer(ws) as server:
        say(f"control plane on {server.url}")
        http = _http(server.url, admin_key)
        agents = []
        for n, profile in enumerate(FLEET_PROFILES):
            token = _ok(
                http.post("/v1/admin/enrolment-tokens", json={"ttl_s": 600, "profile": profile}), "enrolment token"
            )["token"]
            conn = connect(
                server.url, _fresh(fleet_dir / f"device-{n}-{profile}"), enrolment_token=token, profile=profile
            )
            agent = conn.agent(config=DEMO_AGENT)
            agent.start()
            agents.append((profile, conn, agent))
            say(f"device {conn.device_id} ({profile}) enrolled")

        release = _ok(
            http.post("/v1/releases", json={"model": model, "devices": [c.device_id for _, c, _ in agents]}),
            "release",
        )
        say(f"release {release['id']}: {len(release['assignments'])} device bundles published through TUF")
        by_device = {a["device_id"]: a for a in release["assignments"]}
        direct_cache: dict[str, np.ndarray] = {}
        devices: list[FleetDevice] = []
        for profile, conn, agent in agents:
            assignment = by_device.get(conn.device_id, {})
            cycle = agent.run_once()
            result = cycle.result
            ref = assignment.get("ref")
            accuracy = agrees = None
            count = 0
            if cycle.action == "installed" and ref:
                preds = _predict_all(agent, x01)
                if ref not in direct_cache:
                    direct_cache[ref] = _direct(ws, ref, x01)
                accuracy = float((preds == y).mean())
                agrees = float((preds == direct_cache[ref]).mean())
                count = len(preds)
            devices.append(
                FleetDevice(
                    device_id=conn.device_id,
                    profile=profile,
                    ref=ref,
                    status=cycle.action,
                    reason=(result.reason if result is not None else cycle.error) or assignment.get("reason", ""),
                    bundle_id=result.bundle_id if result is not None else None,
                    install_ms=(result.timings.get("total_s", 0.0) * 1e3) if result is not None else None,
                    predictions=count,
                    accuracy=accuracy,
                    agrees_with_direct=agrees,
                )
            )
            agent.run_once()  # the next poll sends the install report (and finds nothing new)
        shown = _ok(http.get(f"/v1/releases/{release['id']}"), "release status")
        reported = {a["device_id"]: (a.get("latest_report") or {}).get("status") for a in shown["assignments"]}
        for d in devices:
            if d.status == "installed" and reported.get(d.device_id) != "installed":
                raise OperationError(f"device {d.device_id} installed but the control plane has no report of it")
        for _, _, agent in agents:
            agent.close()
        http.close()
        return FleetResult(server.url, release["id"], devices)


def _fresh(path: Path) -> Path:
    """A device data directory for this run (a re-run of the demo enrols new devices)."""
    import shutil

    if path.exists():
        shutil.rmtree(path)
    return path


def _predict_all(agent: Any, x: np.ndarray) -> np.ndarray:
    """The class each digit gets on the device (the release ships the bare model: scores out)."""
    out = np.empty(len(x), dtype=np.int64)
    for i in range(len(x)):
        scores = next(iter(agent.predict(x[i : i + 1]).outputs.values()))
        out[i] = int(np.argmax(np.asarray(scores)))
    return out


def _direct(ws: Workspace, ref: str, x01: np.ndarray) -> np.ndarray:
    backend = open_backend(ws.registry.read_bytes(ws.registry.resolve(ref)))
    return np.array([int(np.argmax(backend.run(x01[i : i + 1])[0])) for i in range(len(x01))])


__all__ = ["FLEET_PROFILES", "FleetDevice", "FleetResult", "run_fleet"]
