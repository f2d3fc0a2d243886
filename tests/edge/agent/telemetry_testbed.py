"""Real bundles whose manifests enable the telemetry policy, for the agent's telemetry tests (a plain
module: ``from telemetry_testbed import telemetry_bundles_fixture``).

``t1``, ``t2``  tiny:1 and tiny:2 (a MatMul [batch, 4] x [4, 2]) for this device, each with
               ``[policies.telemetry]`` enabled: 2 classes, a 2-dimensional projection, and the class
               histogram released with randomized response (epsilon 1 per window)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tiny_models import tiny_onnx
from tinymlops.crypto.keys import DeviceKeys

TELEMETRY = {
    "enabled": True,
    "classes": 2,
    "projection_dims": 2,
    "latency_window": 1024,
    "privacy": {"classes_epsilon": 1.0, "window_epsilon": 2.0, "day_epsilon": 48.0},
}


@dataclass
class TelemetryBundles:
    device: DeviceKeys
    release_public: bytes
    paths: dict[str, Path]
    bundle_ids: dict[str, str]

    @property
    def trusted(self) -> list[bytes]:
        return [self.release_public]


_BUILT: list[TelemetryBundles] = []


@pytest.fixture(scope="session", name="telemetry_bundles")
def telemetry_bundles_fixture(tmp_path_factory: pytest.TempPathFactory) -> TelemetryBundles:
    if not _BUILT:
        _BUILT.append(_build(tmp_path_factory.mktemp("telemetry-bundles")))
    return _BUILT[0]


def _build(root: Path) -> TelemetryBundles:
    from tinymlops.bundle.builder import build_bundle
    from tinymlops.bundle.workspace_keys import release_public_key
    from tinymlops.workspace import Workspace

    ws = Workspace.init(root / "ws")
    device = DeviceKeys.generate()
    paths, ids = {}, {}
    try:
        for i in (1, 2):
            ws.registry.register("tiny", tiny_onnx(float(i)))
            out = root / f"t{i}.tmlb"
            built = build_bundle(
                ws,
                f"tiny:{i}",
                target="x86-edge-server",
                device_public_key=device.wrapping_public,
                policies={"telemetry": TELEMETRY},
                out=out,
            )
            paths[f"t{i}"] = out
            ids[f"t{i}"] = built.manifest.bundle_id
        public = release_public_key(ws)
    finally:
        ws.close()
    return TelemetryBundles(device, public, paths, ids)
