"""When the agent syncs licenses and usage reports: at its first online cycle, then at most every
``AgentConfig.metering_interval`` seconds (the agent's injectable monotonic timer) — but at the next
online cycle whatever the interval after a metered call was refused (a device out of queries wants its
top-up now) or when an open ledger holds more unacknowledged entries than one report carries. Never
offline; ``metering_interval=0`` syncs at every online cycle."""

from __future__ import annotations

from pathlib import Path

import pytest
from metering_testbed import (  # noqa: F401 (fixtures)
    OFFLINE,
    ONLINE,
    Device,
    MeteredBundles,
    metered_bundles_fixture,
    server_fixture,
)

from metering_world import Clock
from simulators.licensing_server import LICENSES_PATH, LicensingServer
from tinymlops.edge.agent import AgentConfig
from tinymlops.errors import UsageError

INTERVAL = 300.0


def _device(root: Path, bundles: MeteredBundles, server: LicensingServer, **sync_kw) -> tuple[Device, Clock]:
    timer = Clock(1000.0)
    config = AgentConfig(poll_interval=0.2, backoff_base=0.05, backoff_cap=0.4, metering_interval=INTERVAL)
    return Device(root, bundles, server, agent_kw={"config": config, "timer": timer}, **sync_kw), timer


def _syncs(dev: Device) -> int:
    return len(dev.server.statuses(LICENSES_PATH))


def test_the_interval_holds_between_syncs_and_offline_cycles_never_sync(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    dev, timer = _device(tmp_path, metered_bundles, server)
    try:
        assert dev.agent.metering_due() == "first"
        dev.agent.run_once()
        assert _syncs(dev) == 1 and dev.agent.metering_due() is None
        for _ in range(3):  # a device with nothing metered: one GET per interval, not one per cycle
            timer.now += 60
            dev.agent.run_once()
        assert _syncs(dev) == 1
        timer.now += INTERVAL - 180 - 0.001
        dev.agent.run_once()
        assert _syncs(dev) == 1
        timer.now += 0.001
        assert dev.agent.metering_due() == "interval"
        dev.context = OFFLINE
        dev.agent.run_once()
        assert _syncs(dev) == 1  # due, but offline
        dev.context = ONLINE
        dev.agent.run_once()
        assert _syncs(dev) == 2
    finally:
        dev.close()


def test_a_refused_call_brings_the_next_sync_forward_and_the_top_up_with_it(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    dev, timer = _device(tmp_path, metered_bundles, server)
    try:
        lic = server.issue(dev.device_id, "tiny", 4)
        dev.offer("m1")
        dev.agent.run_once()  # first sync: the license
        served, refusals = dev.serve(6)
        assert served == 4 and len(refusals) == 2  # out of queries, on the device
        top = server.top_up(lic.license_id, 10)
        timer.now += 10
        assert dev.agent.metering_due() == "refused"
        outcome = dev.cycle()  # well inside the interval
        assert outcome.installed == (top.license_id,) and _syncs(dev) == 2
        served, refusals = dev.serve(3)
        assert served == 3 and refusals == []
        timer.now += 10
        dev.agent.run_once()
        assert _syncs(dev) == 2  # nothing refused since: the interval holds again
    finally:
        dev.close()


def test_a_backlog_beyond_one_report_brings_the_next_sync_forward(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    dev, timer = _device(tmp_path, metered_bundles, server, max_report_entries=3)
    try:
        server.issue(dev.device_id, "tiny", 1000)
        dev.offer("m1")
        dev.agent.run_once()
        acked = dev.meter.next_seq  # the license entry, acknowledged
        dev.serve(4 * 3)  # three reservations: one report's worth, not more
        timer.now += 10
        assert dev.meter.next_seq - acked == 3 and dev.agent.metering_due() is None
        dev.serve(4)  # a fourth
        assert dev.sync.backlogged() == ["tiny"] and dev.agent.metering_due() == "backlog"
        outcome = dev.cycle()
        assert outcome.ok and outcome.reported == 4 and _syncs(dev) == 2
        assert dev.sync.backlogged() == [] and dev.agent.metering_due() is None
        dev.assert_server_has_the_whole_chain()
    finally:
        dev.close()


def test_every_online_cycle_with_interval_zero(
    tmp_path: Path, metered_bundles: MeteredBundles, server: LicensingServer
) -> None:
    config = AgentConfig(poll_interval=0.2, metering_interval=0)
    dev = Device(tmp_path, metered_bundles, server, agent_kw={"config": config, "timer": Clock(0.0)})
    try:
        for _ in range(3):
            dev.agent.run_once()
        assert _syncs(dev) == 3
    finally:
        dev.close()


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), True, "300"])
def test_a_bad_interval_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(UsageError, match="metering_interval must be a finite number of seconds >= 0"):
        AgentConfig(metering_interval=bad)  # type: ignore[arg-type]
