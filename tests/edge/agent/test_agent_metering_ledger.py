"""The agent when a model's usage ledger cannot be used — edited on disk (it no longer verifies), or held
by another meter.

The decision: a broken ledger is the device's state, not the bundle's fault. The metered bundle opens
and stays active; every metered call is refused on the device (fail closed) with a
:class:`~tinymlops.errors.LedgerUnusableError` naming what is wrong; the health watch does not count the
refusals, so the agent never rolls back — rolling back would land on whatever the other slot holds, a
bundle without the metering policy serving the model for free — and the bundle is never marked refused,
so the same release installs again once the device is re-licensed. The sync names the broken ledger
in its outcome at every contact."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from metering_testbed import (  # noqa: F401 (fixtures)
    Device,
    MeteredBundles,
    X,
    installed,
    metered_bundles_fixture,
    server_fixture,
)

from simulators.licensing_server import LicensingServer
from tinymlops.edge.agent.metering import METERING_DIR
from tinymlops.errors import LedgerUnusableError, MeteringRefusedError
from tinymlops.metering.meter import LEDGER_SUFFIX


def _sha(bundles: MeteredBundles, name: str) -> str:
    return hashlib.sha256(bundles.paths[name].read_bytes()).hexdigest()


def _tamper(root: Path) -> None:
    """Edit the count of the first reservation in place (the stored hash left as it was)."""
    conn = sqlite3.connect(root / "agent" / METERING_DIR / f"tiny{LEDGER_SUFFIX}")
    (body,) = conn.execute("SELECT body FROM entries WHERE seq = 1").fetchone()
    conn.execute("UPDATE entries SET body = ? WHERE seq = 1", (bytes(body).replace(b'"count":4', b'"count":3'),))
    conn.commit()
    conn.close()


def _assert_refused_for_the_ledger(dev: Device, calls: int = 10) -> LedgerUnusableError:
    errors = []
    for _ in range(calls):  # many more than the health threshold (3)
        with pytest.raises(LedgerUnusableError) as info:
            dev.agent.predict(X)
        errors.append(info.value)
    err = errors[-1]
    assert isinstance(err, MeteringRefusedError)
    assert err.details["reason"] == "ledger-tampered" and err.details["model"] == "tiny"
    assert "does not verify" in err.message and "row seq 1" in err.message and "re-licensed" in err.message
    return err


def test_a_tampered_ledger_keeps_the_metered_bundle_active_and_refuses_every_call(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    dev = Device(tmp_path, metered_bundles, server)
    dev.offer("free")
    dev.cycle()  # a bundle without the metering policy in the other slot
    installed(dev, 100)
    assert dev.agent.state.active_bundle.sha256 == _sha(metered_bundles, "m1")
    assert dev.serve(5)[0] == 5
    dev.close()
    _tamper(tmp_path)

    dev = Device(tmp_path, metered_bundles, server)  # restarts over the edited ledger
    try:
        state = dev.agent.state
        # before: the bundle failed to open, the agent rolled back to the free bundle and refused this one
        assert state.active_bundle.sha256 == _sha(metered_bundles, "m1")
        assert not state.is_refused(_sha(metered_bundles, "m1"))
        _assert_refused_for_the_ledger(dev)
        assert dev.agent.state.active_bundle.sha256 == _sha(metered_bundles, "m1")  # no rollback
        outcome = dev.cycle()
        assert any("the tiny ledger" in e and "LedgerTamperedError" in e for e in outcome.errors), outcome.errors
        assert "tiny" in dev.agent.metering.broken
        assert dev.agent.state.active_bundle.sha256 == _sha(metered_bundles, "m1")
    finally:
        dev.close()


def test_a_metered_bundle_arriving_over_a_tampered_ledger_installs_and_refuses(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    first = Device(tmp_path / "a", metered_bundles, server)
    installed(first, 100)
    first.serve(5)
    first.close()
    _tamper(tmp_path / "a")
    shutil.copytree(tmp_path / "a" / "agent" / METERING_DIR, tmp_path / "b" / "agent" / METERING_DIR)
    dev = Device(tmp_path / "b", metered_bundles, server)  # no bundle yet; the edited ledger is there
    try:
        dev.offer("m1")
        result = dev.agent.run_once().result
        # before: "failed" (the runtime did not open), and the bundle refused for good
        assert result is not None and result.status == "installed", result
        _assert_refused_for_the_ledger(dev)
        assert dev.agent.state.active_bundle.sha256 == _sha(metered_bundles, "m1")
    finally:
        dev.close()
