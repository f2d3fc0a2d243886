"""End to end on the device: a real signed, encrypted ONNX bundle whose manifest enables metering,
opened by the real Runtime with a bound MeteringHost (real SQLite ledger, real Ed25519 licenses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from metering_world import Clock, Issuer
from tiny_models import tiny_onnx
from tinymlops.bundle.builder import build_bundle
from tinymlops.bundle.workspace_keys import release_public_key
from tinymlops.crypto.keys import DeviceKeys, public_bytes
from tinymlops.edge.runtime import Runtime
from tinymlops.errors import LicenseScopeError, QuotaExceededError, UsageError
from tinymlops.metering import MeteringHost, metering_bound, verify_usage_report

X = np.ones((1, 4), np.float32)


@pytest.fixture
def bundles(sqlite_workspace, tmp_path: Path):
    ws = sqlite_workspace
    ws.registry.register("tiny", tiny_onnx(1.0))
    ws.registry.register("tiny", tiny_onnx(2.0))
    device = DeviceKeys.generate()
    out = {}
    for version in (1, 2):
        out[version] = tmp_path / f"tiny{version}.tmlb"
        build_bundle(
            ws,
            f"tiny:{version}",
            target="x86-edge-server",
            device_public_key=device.wrapping_public,
            out=out[version],
            policies={"metering": {"enabled": True, "model": "tiny", "block": 4}},
        )
    return device, out, [release_public_key(ws)]


def test_a_metered_bundle_serves_its_prepaid_queries_then_refuses_offline(bundles, tmp_path: Path) -> None:
    device, paths, release_keys = bundles
    issuer, clock = Issuer(), Clock()
    with pytest.raises(UsageError, match="MeteringHost"):
        Runtime.open(paths[1], device, release_keys)  # no ledger bound: the bundle does not open
    host = MeteringHost(
        tmp_path / "ledgers", device_key=device.signing, trusted_issuer_keys=[issuer.public], clock=clock
    )
    with metering_bound(host):
        runtime = Runtime.open(paths[1], device, release_keys)
        with pytest.raises(QuotaExceededError, match="no license"):
            runtime.predict(X)
        meter = host.meter("tiny")
        meter.install(issuer.signed(device.signing, queries=6, max_version=1))
        outputs = [runtime.predict(X).outputs for _ in range(6)]
        assert all(np.allclose(next(iter(o.values())), X @ np.linspace(-1, 1, 8).reshape(4, 2)) for o in outputs)
        with pytest.raises(QuotaExceededError) as info:
            runtime.predict(X)
        assert info.value.details["remaining"] == 0 and info.value.details["limit"] == 6
        # the version-2 bundle shares the same ledger, but the license covers version 1 only
        v2 = Runtime.open(paths[2], device, release_keys)
        with pytest.raises(LicenseScopeError):
            v2.predict(X)
        report = verify_usage_report(meter.usage_report(0), public_bytes(device.signing))
        assert (report.licensed, report.reserved) == (6, 6)
    host.close()


def test_a_bundle_without_metering_opens_without_a_host(bundles, sqlite_workspace, tmp_path: Path) -> None:
    device, _, release_keys = bundles
    out = tmp_path / "free.tmlb"
    build_bundle(
        sqlite_workspace, "tiny:1", target="x86-edge-server", device_public_key=device.wrapping_public, out=out
    )
    assert Runtime.open(out, device, release_keys).predict(X).outputs
