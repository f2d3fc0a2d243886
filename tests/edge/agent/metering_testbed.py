"""Real metered bundles for the agent's metering tests, built once per session in a real workspace (a
plain module: ``from metering_testbed import metered_bundles_fixture``).

``m1``    tiny:1 for this device, its manifest enabling ``[policies.metering]`` (model ``tiny``, block 4)
``free``  tiny:1 for this device without the metering policy

``issuer`` is the workspace's release signing key: licenses are signed with it (the contract's issuer
key), so the device trusts them through the release keys it trusts for bundles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tiny_models import tiny_onnx
from tinymlops.crypto.keys import DeviceKeys

BLOCK = 4
METERING = {"enabled": True, "model": "tiny", "block": BLOCK}


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
