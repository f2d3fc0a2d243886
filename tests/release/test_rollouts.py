"""Staged rollouts on a real workspace and repository, driven by simulated device reports: stages are
published in order and only to their devices; health gates promote, halt and roll back on their own;
a rollback offers each reached device its previous bundle again and finishes when they are back;
manual actions are recorded with their actor; a fresh service (a restarted server) carries on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import delivery_world
from delivery_world import World
from tinymlops.errors import ConflictError, NotFoundError, RolloutTransitionError, SpecError, UsageError
from tinymlops.release import UpdateRepository
from tinymlops.release.rollout import promote
from tinymlops.release.rollouts import _state as rollout_state
from tinymlops.release.rollouts import assign_stages
from tinymlops.release.schema import RolloutRow
from tinymlops.release.service import ReleaseRecord, ReleaseService
from tinymlops.spec.health_report import HealthReport
from tinymlops.spec.install_report import InstallReport
from tinymlops.spec.update import TargetPath

delivery = delivery_world.delivery  # the live world (fixture)
delivery_any_db = delivery_world.delivery_any_db


def plan(*stages: tuple[str, float, dict[str, Any]], on_failure: str = "rollback") -> dict[str, Any]:
    return {
        "spec_version": "1.0",
        "on_failure": on_failure,
        "stages": [{"name": n, "fraction": f, "health": h} for n, f, h in stages],
    }


THREE_STAGES = plan(("canary", 0.1, {"min_reports": 1}), ("half", 0.5, {"min_reports": 3}), ("all", 1.0, {}))


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def fleet(world: World, tmp_path: Path, n: int) -> list[str]:
    return [world.connect(tmp_path / f"d{i}").device_id for i in range(n)]


def offered(world: World, device_id: str) -> tuple[str | None, str | None, bool]:
    """(release id, sha256, urgent) of what the repository offers the device now."""
    target = UpdateRepository.open(world.ws.root).get(TargetPath.device(device_id))
    if target is None:
        return None, None, False
    return target.info.release_id, target.sha256, target.info.urgent


def installed(service: ReleaseService, release: ReleaseRecord, device_id: str, *, previous: str | None = None) -> None:
    bundle = release.assignment(device_id).bundle_id
    service.record_install(device_id, InstallReport("installed", "ok", bundle_id=bundle, active_bundle_id=bundle))


def failed_smoke(service: ReleaseService, release: ReleaseRecord, device_id: str, running: str | None) -> None:
    bundle = release.assignment(device_id).bundle_id
    service.record_install(
        device_id,
        InstallReport(
            "failed",
            "smoke test failed: output 'y' differs by up to 3.2",
            bundle_id=bundle,
            active_bundle_id=running,
            error="IntegrityError",
        ),
    )


def stage_of(release: ReleaseRecord) -> dict[str, int]:
    return {a.device_id: a.stage for a in release.assignments if a.stage is not None}


def everyone_on(service: ReleaseService, world: World, devices: list[str], model: str) -> ReleaseRecord:
    """An immediate release every device has installed: the baseline the rollouts go back to."""
    release = service.create_release(model)
    for d in devices:
        installed(service, release, d)
    assert service.rollouts.state(release.id).status == "completed"
    return release


def test_stages_are_published_in_order_and_promoted_by_their_health(delivery_any_db: World, tmp_path: Path) -> None:
    world = delivery_any_db
    devices = fleet(world, tmp_path, 10)
    service = ReleaseService(world.ws)
    base = everyone_on(service, world, devices, "tiny:1")

    release = service.create_release("tiny:2", plan=THREE_STAGES, created_by="api-key:abc")
    stages = stage_of(release)
    assert sorted(stages.values()) == [0] + [1] * 4 + [2] * 5  # ceil(0.1*10)=1, ceil(0.5*10)=5, 10
    assert stages == assign_stages(release_plan(service, release.id), release.id, devices)  # reproducible
    canary = [d for d, s in stages.items() if s == 0]
    for d in devices:  # only the canary is offered the new release; the rest keep the old one
        assert offered(world, d)[0] == (release.id if d in canary else base.id)
    assert release.rollout == {"status": "running", "stage": 0, "stage_name": "canary", "stages": 3}

    installed(service, release, canary[0])  # the report itself moves the rollout on
    status = service.rollouts.status(release.id)
    assert (status.state.status, status.state.stage) == ("running", 1)
    half = [d for d, s in stages.items() if s <= 1]
    assert {d for d in devices if offered(world, d)[0] == release.id} == set(half)

    for d in [d for d in half if d not in canary][:2]:  # 3 reports of 5 reached: enough for the 'half' gate
        installed(service, release, d)
    assert service.rollouts.state(release.id).stage == 2
    assert all(offered(world, d)[0] == release.id for d in devices)
    service.rollouts.advance()
    status = service.rollouts.status(release.id)
    assert status.state.status == "completed"
    moves = [(t.from_status, t.to_status, t.to_stage, t.actor) for t in status.transitions]
    assert moves == [
        ("pending", "running", 0, "api-key:abc"),
        ("running", "running", 1, "auto"),
        ("running", "running", 2, "auto"),
        ("running", "completed", 2, "auto"),
    ]
    assert "install success rate 1" in status.transitions[1].reason
    assert [(p.devices, p.published) for p in status.stages] == [(1, 1), (4, 4), (5, 5)]
    assert status.stages[1].installed == 2


def release_plan(service: ReleaseService, release_id: str) -> Any:
    return service.rollouts.state(release_id).plan


def test_a_failing_canary_halts_and_rolls_back_on_its_own(delivery: World, tmp_path: Path) -> None:
    devices = fleet(delivery, tmp_path, 6)
    service = ReleaseService(delivery.ws)
    base = everyone_on(service, delivery, devices, "tiny:1")
    before = {d: offered(delivery, d) for d in devices}

    release = service.create_release("tiny:2", plan=THREE_STAGES)
    canary = [a.device_id for a in release.assignments if a.stage == 0]
    assert offered(delivery, canary[0])[0] == release.id
    failed_smoke(service, release, canary[0], running=base.assignment(canary[0]).bundle_id)

    status = service.rollouts.status(release.id)
    assert status.state.status == "rolled_back"  # the device never left the old bundle: back already
    assert [(t.to_status, t.actor) for t in status.transitions] == [
        ("running", "unknown"),
        ("halted", "auto"),
        ("rolling_back", "auto"),
        ("rolled_back", "auto"),
    ]
    assert "smoke-test failure rate 1" in status.transitions[1].reason
    assert status.snapshot is not None and status.snapshot.smoke_failures == 1
    assert status.verdict is not None and status.verdict["decision"] == "fail"
    # the canary is offered the old bundle again (urgent); nobody else was ever offered the new one
    release_id, sha, urgent = offered(delivery, canary[0])
    assert (release_id, sha, urgent) == (base.id, before[canary[0]][1], True)
    for d in devices:
        if d not in canary:
            assert offered(delivery, d) == before[d]
    shown = service.get_release(release.id)
    assert shown.assignment(canary[0]).withdrawn_at is not None
    assert all(a.published_at is None for a in shown.assignments if a.device_id not in canary)
    service.create_release("tiny:3", devices=devices[:2])  # the devices are free again


def test_a_rollback_waits_until_every_reached_device_is_back(delivery: World, tmp_path: Path) -> None:
    devices = fleet(delivery, tmp_path, 10)
    service = ReleaseService(delivery.ws)
    base = everyone_on(service, delivery, devices, "tiny:1")
    release = service.create_release(
        "tiny:2", plan=plan(("canary", 0.1, {}), ("half", 0.5, {"min_reports": 5}), ("all", 1.0, {}))
    )
    reached = sorted(
        (a.device_id for a in release.assignments if a.stage is not None and a.stage <= 1),
        key=lambda d: release.assignment(d).stage or 0,
    )  # the canary reports first
    unreached = [d for d in devices if d not in reached]
    for d in reached:
        installed(service, release, d)
    state = service.rollouts.state(release.id)
    assert state.stage == 2  # it had moved on; now a human pulls it back
    for d in unreached:
        installed(service, release, d)

    status = service.rollouts.rollback(release.id, actor="cli:alice", reason="customer complaints")
    assert status.state.status == "rolling_back"
    assert (status.devices_back, status.devices_withdrawn) == (0, 10)
    assert status.transitions[-1].actor == "cli:alice" and status.transitions[-1].reason == "customer complaints"
    for d in devices:
        assert offered(delivery, d)[:2] == (base.id, base.assignment(d).bundle_sha256)
    for i, d in enumerate(devices):  # the agents switch back to their other slot and say so
        b1, b2 = base.assignment(d).bundle_id, release.assignment(d).bundle_id
        service.record_install(
            d,
            InstallReport(
                "rolled_back", "the control plane offers the previous bundle again", bundle_id=b2, active_bundle_id=b1
            ),
        )
        expected = "rolled_back" if i == len(devices) - 1 else "rolling_back"
        assert service.rollouts.state(release.id).status == expected
    assert service.rollouts.status(release.id).devices_back == 10


def test_manual_actions_are_checked_and_recorded(delivery: World, tmp_path: Path) -> None:
    devices = fleet(delivery, tmp_path, 4)
    service = ReleaseService(delivery.ws)
    release = service.create_release("tiny:1", plan=THREE_STAGES)
    canary = next(a.device_id for a in release.assignments if a.stage == 0)

    service.rollouts.pause(release.id, actor="api-key:k1")
    installed(service, release, canary)  # healthy, but a paused rollout is not judged
    assert (service.rollouts.state(release.id).status, service.rollouts.state(release.id).stage) == ("paused", 0)
    with pytest.raises(RolloutTransitionError, match="cannot promote a paused rollout"):
        service.rollouts.promote(release.id, actor="api-key:k1")
    with pytest.raises(UsageError, match="reserved"):
        service.rollouts.resume(release.id, actor="auto")
    service.rollouts.resume(release.id, actor="api-key:k1", reason="checked the canary by hand")
    service.rollouts.advance()
    assert service.rollouts.state(release.id).stage == 1
    status = service.rollouts.promote(release.id, actor="cli:bob")
    assert status.state.stage == 2 and all(offered(delivery, d)[0] == release.id for d in devices)
    actors = [(t.to_status, t.actor) for t in status.transitions]
    assert actors[-4:] == [
        ("paused", "api-key:k1"),
        ("running", "api-key:k1"),
        ("running", "auto"),
        ("running", "cli:bob"),
    ]
    assert status.transitions[-3].reason == "checked the canary by hand"


def test_health_reports_fail_a_stage_on_errors_or_slower_predictions(delivery: World, tmp_path: Path) -> None:
    devices = fleet(delivery, tmp_path, 4)
    service = ReleaseService(delivery.ws)
    base = everyone_on(service, delivery, devices, "tiny:1")

    def health(d: str, bundle: str | None, *, n: int, errors: int, p50: float) -> None:
        assert bundle is not None
        lat = {"p50": p50, "p95": p50 * 2, "p99": p50 * 3, "max": p50 * 4}
        service.record_health(d, HealthReport(bundle, 0.0, 60.0, n, errors, lat))

    for d in devices:  # the old release ran at 1 ms
        health(d, base.assignment(d).bundle_id, n=100, errors=0, p50=1.0)
    gate = {"min_reports": 1, "max_error_rate": 0.05, "max_latency_ratio": 1.5, "min_soak_s": 0}
    slow = service.create_release("tiny:2", plan=plan(("canary", 0.25, gate), ("all", 1.0, {})))
    canary = next(a.device_id for a in slow.assignments if a.stage == 0)
    health(canary, slow.assignment(canary).bundle_id, n=50, errors=0, p50=3.0)  # before the install report
    installed(service, slow, canary)
    status = service.rollouts.status(slow.id)
    assert status.state.status in ("rolling_back", "rolled_back")
    assert "p50 latency / previous release 3" in status.transitions[1].reason

    service.record_install(  # the canary went back
        canary,
        InstallReport(
            "rolled_back",
            "back",
            bundle_id=slow.assignment(canary).bundle_id,
            active_bundle_id=base.assignment(canary).bundle_id,
        ),
    )
    assert service.rollouts.state(slow.id).status == "rolled_back"
    erring = service.create_release("tiny:3", plan=plan(("canary", 0.25, gate), ("all", 1.0, {})))
    canary = next(a.device_id for a in erring.assignments if a.stage == 0)
    health(canary, erring.assignment(canary).bundle_id, n=100, errors=10, p50=1.0)
    installed(service, erring, canary)
    reason = service.rollouts.status(erring.id).transitions[1].reason
    assert "prediction error rate 0.1" in reason and "latency" not in reason


def test_a_stage_soaks_and_a_restarted_server_carries_on(delivery: World, tmp_path: Path) -> None:
    devices = fleet(delivery, tmp_path, 4)
    clock = Clock()
    service = ReleaseService(delivery.ws, clock=clock)
    release = service.create_release(
        "tiny:1", plan=plan(("canary", 0.25, {"min_soak_s": 600}), ("all", 1.0, {"min_soak_s": 600}))
    )
    canary = next(a.device_id for a in release.assignments if a.stage == 0)
    installed(service, release, canary)
    status = service.rollouts.status(release.id)
    assert status.state.stage == 0 and status.verdict is not None and status.verdict["decision"] == "wait"
    assert "soak" in status.verdict["reason"]

    clock.now += timedelta(seconds=601)
    restarted = ReleaseService(delivery.ws, clock=clock)  # a new server process over the same database
    restarted.tick()
    assert restarted.rollouts.state(release.id).stage == 1
    assert all(offered(delivery, d)[0] == release.id for d in devices)
    restarted.tick()  # throttled: nothing more within the second, and nothing due anyway
    clock.now += timedelta(seconds=601)
    restarted.tick()
    assert restarted.rollouts.state(release.id).status == "completed"


def test_devices_in_a_running_rollout_cannot_be_given_another_release(delivery: World, tmp_path: Path) -> None:
    devices = fleet(delivery, tmp_path, 3)
    service = ReleaseService(delivery.ws)
    release = service.create_release("tiny:1", devices=devices[:2], plan=THREE_STAGES)
    with pytest.raises(ConflictError, match=f"release {release.id}"):
        service.create_release("tiny:2")
    service.create_release("tiny:2", devices=devices[2:])  # a device outside it is free
    with pytest.raises(SpecError, match="strictly increasing"):
        service.create_release("tiny:2", devices=devices[2:], plan=plan(("a", 0.5, {}), ("b", 0.5, {})))
    service.rollouts.rollback(release.id, actor="cli:alice")
    service.create_release("tiny:2", devices=devices[:2])


def test_rolling_back_a_first_release_withdraws_it(delivery: World, tmp_path: Path) -> None:
    devices = fleet(delivery, tmp_path, 2)
    service = ReleaseService(delivery.ws)
    release = service.create_release("tiny:1")
    assert all(offered(delivery, d)[0] == release.id for d in devices)
    status = service.rollouts.rollback(release.id, actor="cli:alice")
    assert status.state.status == "rolled_back"  # nobody had installed it
    assert all(offered(delivery, d) == (None, None, False) for d in devices)
    with pytest.raises(RolloutTransitionError):
        service.rollouts.rollback(release.id, actor="cli:alice")


def test_a_release_can_target_device_profiles(delivery: World, tmp_path: Path) -> None:
    pi = delivery.connect(tmp_path / "pi", profile="rpi-4").device_id
    phone = delivery.connect(tmp_path / "phone", profile="android-nnapi-phone").device_id
    service = ReleaseService(delivery.ws)
    release = service.create_release("tiny:1", profiles=["android-nnapi-phone"], plan=THREE_STAGES)
    assert [a.device_id for a in release.assignments] == [phone] and release.profiles == ("android-nnapi-phone",)
    assert offered(delivery, pi) == (None, None, False)
    with pytest.raises(NotFoundError, match="of profile\\(s\\) jetson-orin-nano"):
        service.create_release("tiny:1", profiles=["jetson-orin-nano"])


def test_a_writer_that_lost_the_race_changes_neither_the_rollout_nor_the_repository(
    delivery: World, tmp_path: Path
) -> None:
    devices = fleet(delivery, tmp_path, 4)
    one, two = ReleaseService(delivery.ws), ReleaseService(delivery.ws)  # two server processes
    release = one.create_release("tiny:1", plan=THREE_STAGES)
    with one._sessions() as session:  # process one reads the running rollout …
        stale = session.get(RolloutRow, release.id)
        session.expunge(stale)
    two.rollouts.pause(release.id, actor="cli:bob")  # … process two pauses it first
    timestamp = (delivery.tuf / "metadata" / "timestamp.json").read_bytes()
    step = promote(rollout_state(stale), actor="cli:alice", now=0.0)  # legal from what one read: publishes stage 1
    with one._sessions() as session, pytest.raises(ConflictError, match="changed by someone else"):
        rows = one.rollouts._assignments(session, release.id)
        one.rollouts._apply(session, stale, [(step.state, step.transition)], rows)
    assert (delivery.tuf / "metadata" / "timestamp.json").read_bytes() == timestamp  # nothing published
    status = one.rollouts.status(release.id)
    assert (status.state.status, status.state.stage) == ("paused", 0)
    assert status.transitions[-1].actor == "cli:bob"
    assert sum(offered(delivery, d)[0] == release.id for d in devices) == 1  # still only the canary


def test_a_rollback_whose_previous_bundle_file_is_gone_withdraws_the_target(delivery: World, tmp_path: Path) -> None:
    devices = fleet(delivery, tmp_path, 2)
    service = ReleaseService(delivery.ws)
    base = everyone_on(service, delivery, devices, "tiny:1")
    release = service.create_release("tiny:2")
    (Path(delivery.ws.root) / "releases" / base.id / f"{devices[0]}.tmlb").unlink()  # someone cleaned up
    service.rollouts.rollback(release.id, actor="cli:alice")
    assert offered(delivery, devices[0]) == (None, None, False)  # never a target pointing at nothing
    assert offered(delivery, devices[1])[:2] == (base.id, base.assignment(devices[1]).bundle_sha256)
