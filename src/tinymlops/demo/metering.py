"""The demo's pay-per-query step: a kiosk device serves a metered bundle offline under a small
prepaid license, is refused when it runs out, gets a top-up when it reconnects — and a copy of its
state running on a second device is caught by the server.

1. The operator sells the kiosk (the fleet's first device) a license for :data:`PREPAID` queries of
   the model, valid 30 days (``POST /v1/licenses``), and releases the model to it **metered**
   (``"metering": {"block": BLOCK}``): the bundle's signed manifest says every prediction is debited
   from the device's usage ledger first.
2. The kiosk contacts the server once: it installs the bundle and the license (the agent's metering
   sync), then goes **offline** and classifies :data:`OFFLINE_CALLS` digits one at a time. The
   first :data:`PREPAID` are served; the rest are refused on the device (``QuotaExceededError``),
   with no network and without running the model.
3. It **reconnects**: its signed usage report reaches the server (which now counts every prepaid
   query used), the operator tops the license up (``POST /v1/licenses/{id}/top-up``), the next
   contact installs the top-up and the kiosk serves again.
4. Someone **copies the kiosk's whole state** (data directory: key, ledger, counter) to a second
   machine and runs both. Each serves and reports; the server sees the two ledgers fork from the
   same chain and keep growing: it flags the chain (``rollback`` when the copy first reports
   behind what the original already reported, ``clone`` when both branches grow), visible in
   ``GET /v1/licensing/audit``, ``tinymlops license audit`` and the dashboard's licenses page.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tinymlops.edge.agent.loop import Agent, AgentConfig
from tinymlops.edge.agent.remote import Connection, connect
from tinymlops.errors import MeteringRefusedError, OperationError

#: queries in the kiosk's first license, and calls it tries while offline
PREPAID = 40
OFFLINE_CALLS = 55
TOP_UP = 200
#: calls per durable reservation on the kiosk
BLOCK = 8
#: calls each of the two copies serves before each report
CLONE_CALLS = 12
MAX_CYCLES = 20


class _Http(Protocol):
    def get(self, url: str, **kw: Any) -> Any: ...
    def post(self, url: str, **kw: Any) -> Any: ...


@dataclass
class MeteringResult:
    device_id: str
    license_id: str
    top_up_id: str
    release_id: str
    prepaid: int
    offline_served: int
    offline_refused: int
    refusal: str
    reported_used: int
    served_after_top_up: int
    clone_device_dir: str
    flags: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ok(response: Any, what: str) -> Any:
    if response.status_code >= 400:
        raise OperationError(f"{what} failed: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def _serve(agent: Agent, x: np.ndarray) -> tuple[int, int, str]:
    """Classify ``x`` one digit at a time: (served, refused by metering, the last refusal's reason)."""
    served = refused = 0
    reason = ""
    for i in range(len(x)):
        try:
            agent.predict(x[i : i + 1])
        except MeteringRefusedError as exc:
            refused += 1
            reason = f"{type(exc).__name__}: {exc.message}"
            continue
        served += 1
    return served, refused, reason


def _until(agent: Agent, done: Callable[[], bool], what: str) -> None:
    for _ in range(MAX_CYCLES):
        agent.run_once()
        if done():
            return
        time.sleep(0.05)
    raise OperationError(f"the kiosk did not {what} within {MAX_CYCLES} agent cycles")


def run_metering(
    http: _Http,
    kiosk_conn: Connection,
    kiosk: Agent,
    ref: str,
    x01: np.ndarray,
    *,
    server_url: str,
    agent_config: AgentConfig,
    clone_dir: Path,
    say: Callable[[str], None] = lambda _m: None,
) -> tuple[MeteringResult, Sequence[Agent]]:
    """Steps 1-4 of the module doc. Returns the result and the agents it opened (the kiosk's copy
    and the kiosk reopened), for the caller to close."""
    device_id = kiosk_conn.device_id
    model = ref.split(":", 1)[0]  # a license names the model; the release ships this version (or variant)
    lic = _ok(
        http.post("/v1/licenses", json={"device_id": device_id, "model": model, "queries": PREPAID, "valid_days": 30}),
        "issuing a license",
    )
    release = _ok(
        http.post("/v1/releases", json={"model": ref, "devices": [device_id], "metering": {"block": BLOCK}}),
        "the metered release",
    )
    say(
        f"license {lic['license_id'][:8]}…: {PREPAID} prepaid queries of {model} for the kiosk {device_id}; "
        f"metered release {release['id']} of {ref} (reservations of {BLOCK} calls)"
    )
    bundle_id = release["assignments"][0]["bundle_id"]

    def installed() -> bool:
        runtime = kiosk.runtime
        return runtime is not None and runtime.manifest.bundle_id == bundle_id

    _until(kiosk, installed, "install the metered bundle")

    offline = x01[:OFFLINE_CALLS]
    served, refused, reason = _serve(kiosk, offline)
    say(f"kiosk offline: {served} of {len(offline)} digits served, {refused} refused on the device ({reason})")
    if served != PREPAID or refused != len(offline) - PREPAID:
        raise OperationError(f"the kiosk served {served} digits offline under a {PREPAID}-query license")

    def reported() -> bool:
        return int(_ok(http.get(f"/v1/licenses/{lic['license_id']}"), "the license")["chain_used"]) >= PREPAID

    _until(kiosk, reported, "report its usage")
    shown = _ok(http.get(f"/v1/licenses/{lic['license_id']}"), "the license")
    top = _ok(http.post(f"/v1/licenses/{lic['license_id']}/top-up", json={"queries": TOP_UP}), "the top-up")
    say(
        f"kiosk back online: the server counts {shown['chain_used']} of {shown['chain_licensed']} queries used; "
        f"top-up {top['license_id'][:8]}… of {TOP_UP} queries issued"
    )

    def topped_up() -> bool:
        return _serve(kiosk, x01[:1])[0] == 1

    _until(kiosk, topped_up, "install the top-up")
    after, _, _ = _serve(kiosk, x01[OFFLINE_CALLS : OFFLINE_CALLS + 20])
    say(f"kiosk after the top-up: {after + 1} digits served")

    # the copy: the kiosk's whole data directory, taken while it is stopped, run on a second machine
    _until(kiosk, lambda: True, "contact the server")  # report everything so far first
    kiosk.close()
    if clone_dir.exists():
        shutil.rmtree(clone_dir)
    shutil.copytree(kiosk_conn.data_dir, clone_dir)
    original = connect(server_url, kiosk_conn.data_dir).agent(config=agent_config)
    original.start()
    copy = connect(server_url, clone_dir).agent(config=agent_config)
    copy.start()
    say(f"the kiosk's state copied to {clone_dir.name}: both run, serve and report")
    for agent in (original, copy, original, copy):
        _serve(agent, x01[:CLONE_CALLS])
        agent.run_once()
    flags = _ok(http.get("/v1/licensing/audit", params={"device": device_id}), "the audit")
    kinds = sorted({f["kind"] for f in flags})
    say(f"server audit of {device_id}: {', '.join(kinds) or 'nothing flagged'}")
    if "clone" not in kinds:
        raise OperationError(f"the copied kiosk was not flagged as a clone (flags: {kinds})")
    used = int(_ok(http.get(f"/v1/licenses/{top['license_id']}"), "the top-up")["chain_used"])
    return (
        MeteringResult(
            device_id=device_id,
            license_id=lic["license_id"],
            top_up_id=top["license_id"],
            release_id=release["id"],
            prepaid=PREPAID,
            offline_served=served,
            offline_refused=refused,
            refusal=reason,
            reported_used=used,
            served_after_top_up=after + 1,
            clone_device_dir=str(clone_dir),
            flags=flags,
        ),
        (original, copy),
    )


__all__ = ["BLOCK", "OFFLINE_CALLS", "PREPAID", "TOP_UP", "MeteringResult", "run_metering"]
