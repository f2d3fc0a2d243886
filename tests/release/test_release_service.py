"""ReleaseService on a real workspace: a failure while publishing leaves nothing behind; device and
tag filters; install reports move the device's deployment; the timestamp is re-signed only when due."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import delivery_world
from delivery_world import World
from tinymlops.errors import StoreError
from tinymlops.release import ExpiryPolicy, UpdateRepository
from tinymlops.release.service import ReleaseService
from tinymlops.spec.install_report import InstallReport
from tinymlops.spec.update import TargetPath

delivery = delivery_world.delivery  # the live world (fixture)
delivery_any_db = delivery_world.delivery_any_db  # the same on SQLite and PostgreSQL


def _count(ws: Any, table: str) -> int:
    with ws.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def test_a_failure_while_publishing_publishes_and_records_nothing(delivery: World, tmp_path: Path) -> None:
    a = delivery.connect(tmp_path / "a")
    b = delivery.connect(tmp_path / "b")
    service = ReleaseService(delivery.ws)
    service.create_release("tiny:1", devices=[a.device_id])  # the repository and a first release exist
    timestamp = (delivery.tuf / "metadata" / "timestamp.json").read_bytes()
    # the second device's target directory cannot be created: the commit fails after a's file was written
    blocker = delivery.tuf / "targets" / "devices" / b.device_id
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"not a directory")
    with pytest.raises(StoreError, match="cannot write the target file"):
        service.create_release("tiny:2", devices=[a.device_id, b.device_id])
    assert (delivery.tuf / "metadata" / "timestamp.json").read_bytes() == timestamp  # nothing committed
    repo = UpdateRepository.open(delivery.ws.root)
    assert repo.get(TargetPath.device(b.device_id)) is None
    assert repo.get(TargetPath.device(a.device_id)).info.ref == "tiny:1"  # type: ignore[union-attr]
    assert (_count(delivery.ws, "releases"), _count(delivery.ws, "release_assignments")) == (1, 1)
    assert [p.name for p in (Path(delivery.ws.root) / "releases").iterdir()] == [service.list_releases()[0].id]
    with delivery.agent(a) as agent:  # the device still gets release one, and only that
        assert agent.run_once().action == "installed"
        assert agent.runtime is not None and agent.runtime.manifest.model.ref == "tiny:1"


def test_devices_and_tags_choose_who_gets_a_release(delivery: World, tmp_path: Path) -> None:
    eu = delivery.connect(tmp_path / "eu", tags=["eu", "canary"])
    eu2 = delivery.connect(tmp_path / "eu2", tags=["eu"])
    us = delivery.connect(tmp_path / "us", tags=["us"])
    service = ReleaseService(delivery.ws)
    assert {a.device_id for a in service.create_release("tiny:1", tags=["eu"]).assignments} == {
        eu.device_id,
        eu2.device_id,
    }
    assert [a.device_id for a in service.create_release("tiny:1", tags=["eu", "canary"]).assignments] == [eu.device_id]
    chosen = service.create_release("tiny:2", devices=[us.device_id, eu.device_id, us.device_id], tags=["us"])
    assert [a.device_id for a in chosen.assignments] == [us.device_id]
    everyone = service.create_release("tiny:3")
    assert {a.device_id for a in everyone.assignments} == {eu.device_id, eu2.device_id, us.device_id}
    assert everyone.devices is None and chosen.devices == (us.device_id, eu.device_id)


def test_install_reports_move_the_deployment(delivery_any_db: World, tmp_path: Path) -> None:
    delivery = delivery_any_db
    dev = delivery.connect(tmp_path / "dev")
    service = ReleaseService(delivery.ws)
    r1 = service.create_release("tiny:1", devices=[dev.device_id])
    r2 = service.create_release("tiny:2", devices=[dev.device_id])
    b1, b2 = r1.assignments[0].bundle_id, r2.assignments[0].bundle_id
    assert b1 and b2 and b1 != b2

    service.record_install(dev.device_id, InstallReport("installed", "ok", bundle_id=b1, active_bundle_id=b1))
    assert (service.deployment(dev.device_id).bundle_id, service.deployment(dev.device_id).release_id) == (b1, r1.id)  # type: ignore[union-attr]
    refused = service.record_install(
        dev.device_id, InstallReport("failed", "smoke test failed", bundle_id=b2, active_bundle_id=b1, error="X")
    )
    assert refused.release_id == r2.id
    d = service.deployment(dev.device_id)
    assert d is not None and (d.bundle_id, d.release_id, d.last_status) == (b1, r1.id, "failed")
    service.record_install(dev.device_id, InstallReport("installed", "ok", bundle_id=b2, active_bundle_id=b2))
    service.record_install(dev.device_id, InstallReport("rolled_back", "unhealthy", bundle_id=b2, active_bundle_id=b1))
    d = service.deployment(dev.device_id)
    assert d is not None and (d.bundle_id, d.release_id, d.last_status) == (b1, r1.id, "rolled_back")
    shown = service.get_release(r2.id).assignments[0]
    assert shown.latest_report is not None and shown.latest_report.report.status == "rolled_back"
    assert shown.deployment is not None and shown.deployment.bundle_id == b1


def test_keep_fresh_re_signs_only_past_half_the_timestamps_life(sqlite_workspace: Any) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]

    def clock() -> datetime:
        return now[0]

    UpdateRepository.init(sqlite_workspace.root, clock=clock, expiry=ExpiryPolicy(timestamp=timedelta(hours=2)))
    service = ReleaseService(sqlite_workspace, clock=clock)
    meta = Path(sqlite_workspace.root) / "tuf" / "metadata" / "timestamp.json"

    def version() -> int:
        return int(json.loads(meta.read_bytes())["signed"]["version"])

    assert service.keep_fresh() is None and version() == 1
    now[0] += timedelta(minutes=59)
    assert service.keep_fresh() is None and version() == 1
    now[0] += timedelta(minutes=2)  # 61 min into a 2 h timestamp: due
    result = service.keep_fresh()
    assert result is not None and "timestamp" in result.renewed and version() == 2
    assert service.keep_fresh() is None and version() == 2
    now[0] += timedelta(days=4)  # past half the snapshot's 7 days as well: it is renewed too
    result = service.keep_fresh()
    assert result is not None and "snapshot" in result.renewed and version() == 3
