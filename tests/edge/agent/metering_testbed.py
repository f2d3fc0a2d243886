"""The agent's metering tests' world (a plain module: ``from metering_testbed import ...``).

Real metered bundles, built once per session in a real workspace:

``m1``    tiny:1 for this device, its manifest enabling ``[policies.metering]`` (model ``tiny``, block 4)
``free``  tiny:1 for this device without the metering policy

``issuer`` is the workspace's release signing key: licenses are signed with it (the contract's issuer
key), so the device trusts them through the release keys it trusts for bundles.

:class:`Device` is an agent over a local offer directory whose metering sync talks signed HTTP to a
simulated control plane (``tests/simulators/licensing_server.py``); the ``server`` and ``device``
fixtures give one of each (import them with ``metered_bundles_fixture``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from simulators.licensing_server import LicensingServer, licensing_server
from tiny_models import tiny_onnx
from tinymlops.crypto.keys import DeviceKeys
from tinymlops.devices.client import DeviceClient
from tinymlops.edge.agent import Agent, AgentConfig, LocalDirectorySource, MeteringSync, SyncOutcome, write_offer
from tinymlops.edge.agent.metering import METERING_DIR
from tinymlops.errors import LicenseRevokedError, QuotaExceededError
from tinymlops.metering.meter import Meter
from tinymlops.spec.context import DeviceContext
from tinymlops.spec.license import License

BLOCK = 4
METERING = {"enabled": True, "model": "tiny", "block": BLOCK}
EVERY_CYCLE = AgentConfig(poll_interval=0.2, backoff_base=0.05, backoff_cap=0.4, metering_interval=0)
ONLINE = DeviceContext(network="cellular", charging=False)  # usage reports are not gated like telemetry
OFFLINE = DeviceContext(network="offline")
X = np.ones((1, 4), np.float32)


@dataclass
class MeteredBundles:
    device: DeviceKeys
    issuer: Ed25519PrivateKey
    release_public: bytes
    paths: dict[str, Path]

    @property
    def trusted(self) -> list[bytes]:
        return [self.release_public]


_BUILT: list[MeteredBundles] = []


@pytest.fixture(scope="session", name="metered_bundles")
def metered_bundles_fixture(tmp_path_factory: pytest.TempPathFactory) -> MeteredBundles:
    if not _BUILT:
        _BUILT.append(_build(tmp_path_factory.mktemp("metered-bundles")))
    return _BUILT[0]


def _build(root: Path) -> MeteredBundles:
    from tinymlops.bundle.builder import build_bundle
    from tinymlops.bundle.workspace_keys import release_key, release_public_key
    from tinymlops.workspace import Workspace

    ws = Workspace.init(root / "ws")
    device = DeviceKeys.generate()
    paths = {}
    try:
        ws.registry.register("tiny", tiny_onnx(1.0))
        for name, policies in (("m1", {"metering": METERING}), ("free", None)):
            paths[name] = root / f"{name}.tmlb"
            build_bundle(
                ws,
                "tiny:1",
                target="x86-edge-server",
                device_public_key=device.wrapping_public,
                policies=policies,
                out=paths[name],
            )
        issuer, public = release_key(ws), release_public_key(ws)
    finally:
        ws.close()
    return MeteredBundles(device, issuer, public, paths)


class Device:
    """An agent over a local offer directory whose metering sync talks to ``server``. ``agent_kw`` go
    to the :class:`Agent` (``config`` defaults to :data:`EVERY_CYCLE`), ``sync_kw`` to the sync."""

    def __init__(
        self,
        root: Path,
        bundles: MeteredBundles,
        server: LicensingServer,
        *,
        agent_kw: dict[str, Any] | None = None,
        **sync_kw: Any,
    ) -> None:
        self.root = root
        self.bundles = bundles
        self.server = server
        self.offers = root / "offers"
        self.offers.mkdir(parents=True, exist_ok=True)
        self.context = ONLINE
        keys = bundles.device
        server.enrol(keys.device_id, keys.signing.public_key())
        self.client = DeviceClient(server.url, keys, timeout_s=5.0)
        self.agent = Agent(
            root / "agent",
            LocalDirectorySource(self.offers),
            keys,
            bundles.trusted,
            **{"config": EVERY_CYCLE, "context": lambda: self.context, **(agent_kw or {})},
        )
        assert self.agent.metering is not None
        self.sync = MeteringSync(self.agent.metering, self.client, root / "agent" / METERING_DIR, **sync_kw)
        self.agent.metering_sync = self.sync
        self.agent.start()  # reopens the active bundle of an existing data directory

    @property
    def device_id(self) -> str:
        return self.bundles.device.device_id

    @property
    def meter(self) -> Meter:
        assert self.agent.metering is not None
        return self.agent.metering.meter("tiny")

    def offer(self, name: str) -> None:
        dest = self.offers / f"{name}.tmlb"
        shutil.copyfile(self.bundles.paths[name], dest)
        write_offer(self.offers, dest)

    def cycle(self) -> SyncOutcome:
        self.agent.run_once()
        outcome: SyncOutcome = self.agent.metering_outcome
        return outcome

    def serve(self, n: int) -> tuple[int, list[Exception]]:
        served, refusals = 0, []
        for _ in range(n):
            try:
                self.agent.predict(X)
                served += 1
            except (QuotaExceededError, LicenseRevokedError) as exc:
                refusals.append(exc)
        return served, refusals

    def assert_server_has_the_whole_chain(self) -> None:
        chain = self.server.chain(self.device_id, "tiny")
        entries = self.meter.store.entries()
        assert [e.hash for e in chain.branch] == [e.hash for e in entries]

    def close(self) -> None:
        self.agent.close()


@pytest.fixture(name="server")
def server_fixture(metered_bundles: MeteredBundles) -> Iterator[LicensingServer]:
    with licensing_server(metered_bundles.issuer) as srv:
        yield srv


@pytest.fixture(name="device")
def device_fixture(tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer) -> Iterator[Device]:
    dev = Device(tmp_path, metered_bundles, server)
    yield dev
    dev.close()


def installed(dev: Device, queries: int) -> License:
    """Issue a ``queries`` license, offer the metered bundle, run one cycle: both are installed."""
    lic = dev.server.issue(dev.device_id, "tiny", queries)
    dev.offer("m1")
    outcome = dev.cycle()
    assert dev.agent.state.active_bundle is not None
    assert outcome.installed == (lic.license_id,) and outcome.ok
    return lic
