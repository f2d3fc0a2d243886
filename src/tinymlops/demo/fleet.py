"""The demo's control-plane step: a real server, a mixed fleet of agents, staged rollouts through TUF.

The control plane starts on 127.0.0.1 (a free port) over the demo's workspace. An operator key
is created the way ``tinymlops apikey create`` does it; everything after goes through the HTTP
API. Each simulated device keeps its own data directory (its keys never leave it): it is given
a one-time enrolment token for its profile, enrols, bootstraps its trust (the TUF root and the
release keys), and runs the real agent.

Two releases roll out in stages (canary → half → everyone), each device on the variant selected
for its profile; the devices install through TUF, smoke-test in their A/B slot, classify held-out
digits, and report installs and health (predictions, errors, latency — never inputs). The server
judges every stage from those reports:

1. **the digits model** passes each stage's health gate and reaches every device that has a
   variant (the answers must equal those of the variant run directly in ONNX Runtime);
2. **a deliberately broken version 2** — the same network re-exported with a fixed batch
   dimension of 2, a classic export bug: its 2-row smoke test passes, but every single-digit
   prediction fails on the device — fails its canary stage (the canary's agents roll back on
   their own after repeated failures and report it; the error rate breaks the gate), and the
   server halts the rollout and offers the canary devices their previous bundle again through
   TUF. No device beyond the canary ever sees version 2, and every device still classifies
   digits with version 1 afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops.access.service import ApiKeyService
from tinymlops.demo.drift import DriftResult, run_drift, site_of
from tinymlops.demo.metering import MeteringResult, run_metering
from tinymlops.edge.agent.loop import Agent, AgentConfig
from tinymlops.edge.agent.remote import Connection, connect
from tinymlops.edge.backends import open_backend
from tinymlops.errors import OperationError, TinyMLOpsError
from tinymlops.observe.upload_policy import UploadPolicy
from tinymlops.server.background import BackgroundServer
from tinymlops.workspace import Workspace

#: the simulated fleet: two devices per profile (the MCU has only LiteRT: the ONNX digits model has
#: no variant for it, and the release says so instead of failing)
FLEET_PROFILES = ("x86-edge-server", "rpi-4", "rpi-zero-2w", "android-nnapi-phone", "jetson-orin-nano", "mcu-cortex-m7")
DEVICES_PER_PROFILE = 2
#: polls fast, reports health and syncs licenses and usage every cycle: the demo drives the agents one
#: cycle at a time; telemetry windows close when the demo says (flush_telemetry), not on a timer
DEMO_AGENT = AgentConfig(
    poll_interval=0.5,
    poll_jitter=0.1,
    backoff_base=0.1,
    backoff_cap=1.0,
    health_interval=0.0,
    telemetry_interval=3600,
    metering_interval=0.0,
)
#: the demo devices' owners consented to telemetry, on any network
DEMO_UPLOADS = UploadPolicy(consent=True, wifi_only=False)
#: digits each device classifies per round (one at a time, as a device would)
DIGITS_PER_ROUND = 60
MAX_ROUNDS = 30


def rollout_plan(*, max_error_rate: float = 0.02) -> dict[str, Any]:
    """canary (1/6 of the fleet) → half → everyone; each stage needs every reached device's report."""
    gate = {
        "min_install_success_rate": 1.0,
        "max_smoke_failure_rate": 0.0,
        "max_error_rate": max_error_rate,
        "max_latency_ratio": 3.0,
        "min_reports": 2,
        "min_predictions": 100,
    }
    return {
        "spec_version": "1.0",
        "on_failure": "rollback",
        "stages": [
            {"name": "canary", "fraction": 0.17, "health": gate},
            {"name": "half", "fraction": 0.5, "health": {**gate, "min_reports": 5, "min_predictions": 300}},
            {"name": "all", "fraction": 1.0, "health": {**gate, "min_reports": 10, "min_predictions": 600}},
        ],
    }


@dataclass
class FleetDevice:
    device_id: str
    profile: str
    ref: str | None
    stage: int | None
    status: str
    reason: str
    bundle_id: str | None
    install_ms: float | None
    predictions: int
    accuracy: float | None
    agrees_with_direct: float | None
    broken_release: str = "-"  # what version 2 did on this device

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RolloutRun:
    """One release rolled out: its id, final rollout status and every transition."""

    release_id: str
    requested: str
    status: str
    rounds: int
    transitions: list[dict[str, Any]]
    stages: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FleetResult:
    server_url: str
    release_id: str
    devices: list[FleetDevice]
    rollouts: list[RolloutRun] = field(default_factory=list)
    dashboard_url: str = ""
    api_key: str = ""  # the demo operator's key (admin): log in to the dashboard with it
    drift: DriftResult | None = None
    metering: MeteringResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "server_url": self.server_url,
            "dashboard_url": self.dashboard_url,
            "release_id": self.release_id,
            "devices": [d.to_dict() for d in self.devices],
            "rollouts": [r.to_dict() for r in self.rollouts],
            "drift": None if self.drift is None else self.drift.to_dict(),
            "metering": None if self.metering is None else self.metering.to_dict(),
        }


@dataclass
class _Device:
    profile: str
    site: str
    conn: Connection
    agent: Agent
    installs: list[Any] = field(default_factory=list)


def _http(server_url: str, key: str) -> Any:
    import httpx

    return httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _ok(response: Any, what: str) -> Any:
    if response.status_code >= 400:
        raise OperationError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def broken_export(onnx_bytes: bytes, batch: int = 2) -> bytes:
    """The same network with the batch size baked into its graph — the classic tracing bug of
    ``torch.onnx.export`` (``x.view(2, …)`` recorded as a constant) while the input still *declares*
    a dynamic batch: a ``Reshape`` to ``[batch, …]`` in front of the network. ``batch`` rows run
    (and give the right answers); any other count fails inside ONNX Runtime."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    x = graph.input[0]
    dims = [d.dim_value for d in x.type.tensor_type.shape.dim[1:]]
    if not dims or any(d <= 0 for d in dims):
        raise OperationError(f"broken_export needs static non-batch dimensions, got {dims}")
    fixed = f"{x.name}__fixed_batch"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == x.name:
                node.input[i] = fixed
    shape = numpy_helper.from_array(np.array([batch, *dims], dtype=np.int64), f"{fixed}_shape")
    graph.initializer.append(shape)
    graph.node.insert(0, helper.make_node("Reshape", [x.name, shape.name], [fixed], name="baked_batch"))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _classify(agent: Agent, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Each digit's class on the device, one call per digit; -1 where the call failed."""
    out = np.full(len(x), -1, dtype=np.int64)
    errors = 0
    for i in range(len(x)):
        try:
            scores = next(iter(agent.predict(x[i : i + 1]).outputs.values()))
        except TinyMLOpsError:
            errors += 1
            continue
        except Exception:  # the model itself failed (what a broken bundle does): counted, not fatal
            errors += 1
            continue
        out[i] = int(np.argmax(np.asarray(scores)))
    return out, errors


def _roll_out(
    http: Any,
    devices: list[_Device],
    model: str,
    x01: np.ndarray,
    *,
    plan: dict[str, Any],
    say: Callable[[str], None],
) -> tuple[dict[str, Any], RolloutRun]:
    release = _ok(
        http.post("/v1/releases", json={"model": model, "devices": [d.conn.device_id for d in devices], "plan": plan}),
        f"release of {model}",
    )
    rid = release["id"]
    staged = sum(1 for a in release["assignments"] if a["status"] == "published")
    say(f"release {rid} of {model}: {staged} device bundles built; rolling out in stages")
    seen = 0
    status: dict[str, Any] = {}
    rounds = 0
    rng = np.random.default_rng(0)
    while rounds < MAX_ROUNDS:
        rounds += 1
        for d in devices:
            cycle = d.agent.run_once()
            if cycle.result is not None and cycle.action in ("installed", "rolled_back", "failed", "refused"):
                d.installs.append((rid, cycle.action, cycle.result))
            if d.agent.runtime is not None:
                _classify(d.agent, x01[rng.choice(len(x01), DIGITS_PER_ROUND, replace=False)])
                d.agent.flush_health()
        status = _ok(http.get(f"/v1/releases/{rid}/rollout"), "rollout status")
        for t in status["transitions"][seen:]:
            stage = status["plan"]["stages"][t["to_stage"]]["name"]
            move = f"{t['from_status']} → {t['to_status']} (stage '{stage}')"
            say(f"  rollout {rid}: {move} by {t['actor']}: {t['reason']}")
        seen = len(status["transitions"])
        if status["status"] in ("completed", "rolled_back"):
            break
        time.sleep(0.05)
    run = RolloutRun(
        rid, model, status.get("status", "?"), rounds, status.get("transitions", []), status.get("stages", [])
    )
    return release, run


def run_fleet(
    ws: Workspace,
    model: str,
    x01: np.ndarray,
    y: np.ndarray,
    *,
    onnx_bytes: bytes | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> FleetResult:
    """Start the control plane, enrol the fleet, roll ``model`` out in stages, then roll out a broken
    version 2 of it (when ``onnx_bytes`` of the good version are given) and watch it roll back."""
    fleet_dir = ws.root / "fleet"
    fleet_dir.mkdir(exist_ok=True)
    _, admin_key = ApiKeyService(ws.engine).create("demo-operator", "admin", created_by="tinymlops demo")
    with BackgroundServer(ws) as server:
        say(f"control plane on {server.url}")
        http = _http(server.url, admin_key)
        devices: list[_Device] = []
        for n, profile in enumerate(p for p in FLEET_PROFILES for _ in range(DEVICES_PER_PROFILE)):
            site = site_of(n)
            token = _ok(
                http.post("/v1/admin/enrolment-tokens", json={"ttl_s": 600, "profile": profile, "tags": [site]}),
                "enrolment token",
            )["token"]
            conn = connect(
                server.url,
                _fresh(fleet_dir / f"device-{n:02d}-{profile}"),
                enrolment_token=token,
                profile=profile,
                upload_policy=DEMO_UPLOADS,
            )
            agent = conn.agent(config=DEMO_AGENT)
            agent.start()
            devices.append(_Device(profile, site, conn, agent))
        say(
            f"{len(devices)} devices enrolled ({DEVICES_PER_PROFILE} per profile: {', '.join(FLEET_PROFILES)}; "
            "one of each at site-north, one at site-south)"
        )

        release, good = _roll_out(http, devices, model, x01, plan=rollout_plan(), say=say)
        if good.status != "completed":
            raise OperationError(f"the rollout of {model} ended {good.status}, not completed: {good.transitions[-1:]}")
        by_device = {a["device_id"]: a for a in release["assignments"]}
        direct_cache: dict[str, np.ndarray] = {}
        results: list[FleetDevice] = []
        for d in devices:
            a = by_device.get(d.conn.device_id, {})
            ref = a.get("ref")
            install = next((r for rid, act, r in d.installs if rid == release["id"] and act == "installed"), None)
            accuracy = agrees = None
            count = 0
            if install is not None and ref:
                preds, _ = _classify(d.agent, x01)
                if ref not in direct_cache:
                    direct_cache[ref] = _direct(ws, ref, x01)
                accuracy, agrees, count = (
                    float((preds == y).mean()),
                    float((preds == direct_cache[ref]).mean()),
                    len(preds),
                )
            results.append(
                FleetDevice(
                    device_id=d.conn.device_id,
                    profile=d.profile,
                    ref=ref,
                    stage=a.get("stage"),
                    status="installed" if install is not None else a.get("status", "skipped"),
                    reason=a.get("reason", ""),
                    bundle_id=a.get("bundle_id"),
                    install_ms=None if install is None else install.timings.get("total_s", 0.0) * 1e3,
                    predictions=count,
                    accuracy=accuracy,
                    agrees_with_direct=agrees,
                )
            )
        rollouts = [good]

        if onnx_bytes is not None:
            v2 = ws.registry.register(
                model,
                broken_export(onnx_bytes),
                source="tinymlops demo: the digits CNN re-exported with a fixed batch of 2 (a deliberate export bug)",
            )
            say(f"registered {v2.ref}: the same network with its batch size baked in (deliberately broken)")
            broken_release, broken = _roll_out(
                http, devices, v2.ref, x01, plan=rollout_plan(max_error_rate=0.05), say=say
            )
            rollouts.append(broken)
            if broken.status != "rolled_back":
                raise OperationError(f"the broken release {broken.release_id} was not rolled back: {broken.status}")
            stage_of = {a["device_id"]: a.get("stage") for a in broken_release["assignments"]}
            for r, d in zip(results, devices, strict=True):
                tried = [act for rid, act, _ in d.installs if rid == broken.release_id]
                reached = stage_of.get(d.conn.device_id) == 0
                r.broken_release = (
                    ("canary: " + " → ".join(tried)) if tried else ("canary" if reached else "never offered")
                )
                if r.accuracy is not None:  # after the rollback every device still runs version 1
                    preds, errors = _classify(d.agent, x01)
                    if errors or float((preds == y).mean()) != r.accuracy:
                        raise OperationError(f"device {r.device_id} does not classify as before after the rollback")
        drift = run_drift(
            http, devices, model, x01, engine=ws.engine, server_url=server.url, classify=_classify, say=say
        )
        kiosk = next(d for d in devices if d.agent.runtime is not None)
        kiosk_ref = next(r.ref for r in results if r.device_id == kiosk.conn.device_id)  # the good version
        metering, opened = run_metering(
            http,
            kiosk.conn,
            kiosk.agent,
            kiosk_ref or model,
            x01,
            server_url=server.url,
            agent_config=DEMO_AGENT,
            clone_dir=_fresh(fleet_dir / "kiosk-copy"),
            say=say,
        )
        dashboard_url = f"{server.url}/dashboard"
        say(f"dashboard: {dashboard_url} (log in with the demo operator's API key)")
        for agent in [*(d.agent for d in devices), *opened]:
            agent.close()
        http.close()
        return FleetResult(server.url, release["id"], results, rollouts, dashboard_url, admin_key, drift, metering)


def _fresh(path: Path) -> Path:
    """A device data directory for this run (a re-run of the demo enrols new devices)."""
    import shutil

    if path.exists():
        shutil.rmtree(path)
    return path


def _direct(ws: Workspace, ref: str, x01: np.ndarray) -> np.ndarray:
    backend = open_backend(ws.registry.read_bytes(ws.registry.resolve(ref)))
    return np.array([int(np.argmax(backend.run(x01[i : i + 1])[0])) for i in range(len(x01))])


__all__ = ["FLEET_PROFILES", "FleetDevice", "FleetResult", "RolloutRun", "broken_export", "run_fleet"]
