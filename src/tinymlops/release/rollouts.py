"""Staged rollouts with I/O: the pure state machine of :mod:`tinymlops.release.rollout`, persisted in
the database and acted out through the update repository.

Every release has a rollout row. A release created with a :class:`~tinymlops.spec.rollout.RolloutPlan`
starts at its first stage: only the devices whose cohort position falls in that stage are
published to; the others wait. A release created without a plan is published to every device at
once and its rollout is recorded as ``completed`` (so it can still be rolled back by hand).

**Automatic progress** — :meth:`Rollouts.advance` judges every running rollout against what the
devices of the stages reached so far reported (:meth:`Rollouts.snapshot`): install results and
smoke tests from install reports, prediction errors and latency from health reports, the latency
of the bundle each device ran before as the baseline, and — when a stage sets a telemetry gate —
per device class the p95 latency and energy per inference from telemetry windows against the same
devices' previous bundle (:func:`tinymlops.observe.performance.compare_members`). ``pass``
publishes the next stage's devices (or completes), ``fail`` halts and — with
``on_failure = "rollback"`` — withdraws the release: each device is offered its previous bundle
again through the repository (:func:`tinymlops.release.offers.withdraw`). A rolling-back rollout
becomes ``rolled_back`` once every device it reached reports running something else (or never
installed it). There is no background task: the server calls :meth:`advance` after every install or health report and,
throttled, when devices poll; so a server restarted mid-rollout simply carries on from the
database on the first request after it starts.

**By hand** — :meth:`promote`, :meth:`pause`, :meth:`resume`, :meth:`rollback` with the actor
recorded on the transition (``api-key:<id>``, ``cli:<user>``); ``auto`` is reserved for the
automatic ones.

**Races** — a process-wide lock serialises changes in one server; the row's ``version`` is a
compare-and-set for several processes on one database (the loser's transaction, TUF edit
included, is rolled back and it reads again).

Server side (SQLAlchemy).
"""

from __future__ import annotations

import getpass
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from tinymlops.errors import ConflictError, NotFoundError, UsageError
from tinymlops.observe.performance import compare_members, members_of
from tinymlops.release import offers
from tinymlops.release.rollout import (
    AUTO,
    ClassComparison,
    HealthSnapshot,
    RolloutState,
    Step,
    Transition,
    Verdict,
    cohort_position,
    evaluate,
    finish_rollback,
    new_rollout,
    pause,
    promote,
    resume,
    rollback,
)
from tinymlops.release.rollout import start as start_rollout
from tinymlops.release.schema import (
    DeviceDeploymentRow,
    InstallReportRow,
    ReleaseAssignmentRow,
    ReleaseRow,
    RolloutRow,
    RolloutTransitionRow,
)
from tinymlops.spec.rollout import RolloutPlan

if TYPE_CHECKING:
    from tinymlops.release.service import ReleaseService

#: rollouts that still move (and hold their devices: a new release to them is a conflict)
ACTIVE = ("pending", "running", "paused", "halted")
#: rollouts :meth:`Rollouts.advance` looks at
MOVING = ("running", "rolling_back")
#: install-report statuses that count as a failed install of the release's bundle
FAILED_INSTALLS = ("refused", "failed", "rolled_back")
#: rollout states in which the stages reached so far are offered
SERVING = ("running", "paused", "halted", "completed")
#: throttle of :meth:`Rollouts.tick` (the poll-driven trigger), seconds
TICK_INTERVAL_S = 1.0


def cli_actor() -> str:
    """``cli:<login name>`` — who ran a CLI command."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        user = "unknown"
    return f"cli:{user}"[:128]


def assign_stages(plan: RolloutPlan, release_id: str, device_ids: Iterable[str]) -> dict[str, int]:
    """The stage each device joins at: devices ranked by their stable cohort position
    (:func:`~tinymlops.release.rollout.cohort_position`); stage ``k`` covers the first
    ``max(1, ceil(fraction_k * N))`` of them, so no stage is empty and a 5% canary of a 10-device
    fleet is one device, not none. Deterministic: a restart (or anyone recomputing) gets the same."""
    ranked = sorted(set(device_ids), key=lambda d: (cohort_position(release_id, d), d))
    n = len(ranked)
    sizes = [min(n, max(1, math.ceil(stage.fraction * n - 1e-9))) for stage in plan.stages]
    out: dict[str, int] = {}
    for rank, device_id in enumerate(ranked):
        out[device_id] = next(k for k, size in enumerate(sizes) if rank < size)
    return out


# --- records -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageProgress:
    """One stage of a rollout as the status page shows it."""

    index: int
    name: str
    fraction: float
    devices: int  # devices whose first stage this is
    published: int  # of those, published to so far
    installed: int
    failed: int
    reached: bool  # the rollout has reached this stage
    health: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout: its state, the current stage's health, each stage's progress and the history."""

    state: RolloutState
    version: int
    snapshot: HealthSnapshot | None
    verdict: dict[str, Any] | None
    stages: tuple[StageProgress, ...]
    transitions: tuple[Transition, ...]
    devices_back: int | None = None  # while rolling back: devices off the release so far
    devices_withdrawn: int | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "release_id": s.release_id,
            "status": s.status,
            "stage": s.stage,
            "stage_name": s.current_stage,
            "stage_started_at": s.stage_started_at,
            "updated_at": s.updated_at,
            "version": self.version,
            "plan": s.plan.to_dict(),
            "health": None if self.snapshot is None else _snapshot_dict(self.snapshot),
            "verdict": self.verdict,
            "stages": [p.to_dict() for p in self.stages],
            "transitions": [t.to_dict() for t in self.transitions],
            "devices_back": self.devices_back,
            "devices_withdrawn": self.devices_withdrawn,
        }


def _snapshot_dict(s: HealthSnapshot) -> dict[str, Any]:
    return {
        "stage": s.stage,
        "installs_ok": s.installs_ok,
        "installs_failed": s.installs_failed,
        "smoke_failures": s.smoke_failures,
        "predictions": s.predictions,
        "prediction_errors": s.prediction_errors,
        "latency_p50_ms": s.latency_p50_ms,
        "baseline_p50_ms": s.baseline_p50_ms,
        "classes": [c.to_dict() for c in s.classes],
    }


def _state(row: RolloutRow) -> RolloutState:
    return RolloutState(
        release_id=row.release_id,
        plan=RolloutPlan.from_dict(row.plan),
        status=row.status,
        stage=row.stage,
        stage_started_at=row.stage_started_at,
        updated_at=row.updated_at,
    )


def _transition(row: RolloutTransitionRow) -> Transition:
    return Transition(
        row.release_id, row.from_status, row.from_stage, row.to_status, row.to_stage, row.reason, row.actor, row.at
    )


def _transition_row(t: Transition, verdict: Verdict | None = None) -> RolloutTransitionRow:
    """The row a transition is stored as (an automatic one with the verdict behind it)."""
    return RolloutTransitionRow(
        release_id=t.release_id,
        from_status=t.from_status,
        from_stage=t.from_stage,
        to_status=t.to_status,
        to_stage=t.to_stage,
        reason=t.reason[:4000],
        actor=t.actor,
        at=t.at,
        verdict=None if verdict is None or t.actor != AUTO else verdict.to_dict(),
    )


def _is_smoke_failure(report: InstallReportRow) -> bool:
    return report.status == "failed" and "smoke test" in (report.reason or "").lower()


class Rollouts:
    """The rollouts of one :class:`~tinymlops.release.service.ReleaseService` (see the module docstring)."""

    def __init__(self, releases: ReleaseService) -> None:
        self._releases = releases
        self._lock = threading.RLock()
        self._next_tick = 0.0

    # --- helpers -------------------------------------------------------------------------------
    def _now(self) -> datetime:
        return self._releases._now()

    def _load(self, session: Any, release_id: str, *, lock: bool = False) -> RolloutRow:
        row = session.get(RolloutRow, release_id, with_for_update=lock)
        if row is None:
            if session.get(ReleaseRow, release_id) is None:
                raise NotFoundError(f"no release with id {release_id!r}", release_id=release_id)
            raise NotFoundError(f"release {release_id} has no rollout", release_id=release_id)
        return row

    @staticmethod
    def _assignments(session: Any, release_id: str) -> list[ReleaseAssignmentRow]:
        return list(
            session.scalars(
                select(ReleaseAssignmentRow)
                .where(ReleaseAssignmentRow.release_id == release_id, ReleaseAssignmentRow.status == "published")
                .order_by(ReleaseAssignmentRow.device_id)
            ).all()
        )

    @staticmethod
    def _latest_reports(session: Any, rows: list[ReleaseAssignmentRow]) -> dict[str, InstallReportRow]:
        """Per device: its newest install report about this release's bundle since it was published."""
        out: dict[str, InstallReportRow] = {}
        by_device = {r.device_id: r for r in rows if r.bundle_id and r.published_at is not None}
        ids = sorted(by_device)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for rep in session.scalars(
                select(InstallReportRow)
                .where(InstallReportRow.device_id.in_(chunk))
                .where(InstallReportRow.bundle_id.in_(sorted({by_device[d].bundle_id for d in chunk})))
                .order_by(InstallReportRow.id)
            ).all():
                row = by_device[rep.device_id]
                if rep.bundle_id == row.bundle_id and rep.status != "unchanged":
                    out[rep.device_id] = rep
        return out

    def _snapshot(
        self,
        session: Any,
        state: RolloutState,
        rows: list[ReleaseAssignmentRow],
        reports: dict[str, InstallReportRow] | None = None,
    ) -> HealthSnapshot:
        """``reports``: :meth:`_latest_reports` of ``rows`` when the caller already has them."""
        reached = [r for r in rows if r.published_at is not None]
        if reports is None:
            reports = self._latest_reports(session, reached)
        ok = failed = smoke = 0
        for rep in reports.values():
            if rep.status == "installed":
                ok += 1
            elif rep.status in FAILED_INSTALLS:
                failed += 1
                smoke += _is_smoke_failure(rep)
        health = self._releases.health
        now_stats = health.bundle_stats([(r.device_id, r.bundle_id) for r in reached if r.bundle_id], session=session)
        base_stats = health.bundle_stats(
            [(r.device_id, r.prev_bundle_id) for r in reached if r.prev_bundle_id], session=session
        )
        # the telemetry gates' per-class comparison, read only when the stage has one
        classes: tuple[ClassComparison, ...] = ()
        if state.plan.stages[state.stage].health.telemetry_gated:
            classes = compare_members(session, members_of(reached))
        return HealthSnapshot(
            stage=state.stage,
            installs_ok=ok,
            installs_failed=failed,
            smoke_failures=smoke,
            predictions=now_stats.predictions,
            prediction_errors=now_stats.errors,
            latency_p50_ms=now_stats.p50_ms,
            baseline_p50_ms=base_stats.p50_ms,
            classes=classes,
        )

    def _publish_stage(self, session: Any, edit: Any, state: RolloutState, rows: list[ReleaseAssignmentRow]) -> int:
        release = session.get(ReleaseRow, state.release_id)
        now = self._now()
        count = 0
        for row in rows:
            due = row.stage is not None and row.stage <= state.stage and state.status in SERVING
            if due and row.published_at is None and row.withdrawn_at is None:
                offers.publish(session, edit, self._releases.workspace.root, row, urgent=release.urgent, now=now)
                count += 1
        return count

    def _withdraw_all(self, session: Any, edit: Any, rows: list[ReleaseAssignmentRow]) -> None:
        now = self._now()
        for row in rows:
            if row.published_at is not None and row.withdrawn_at is None:
                offers.withdraw(session, edit, self._releases.workspace.root, row, now=now)

    @staticmethod
    def _devices_back(session: Any, rows: list[ReleaseAssignmentRow]) -> tuple[int, int]:
        """(devices off this release's bundle, devices it was withdrawn from)."""
        withdrawn = [r for r in rows if r.withdrawn_at is not None]
        if not withdrawn:
            return 0, 0
        deployments = {
            d.device_id: d.bundle_id
            for d in session.scalars(
                select(DeviceDeploymentRow).where(DeviceDeploymentRow.device_id.in_([r.device_id for r in withdrawn]))
            ).all()
        }
        back = sum(1 for r in withdrawn if deployments.get(r.device_id) != r.bundle_id)
        return back, len(withdrawn)

    def _apply(
        self,
        session: Any,
        row: RolloutRow,
        steps: Iterable[tuple[RolloutState, Transition]],
        rows: list[ReleaseAssignmentRow],
        *,
        verdict: Verdict | None = None,
    ) -> RolloutState:
        """Persist transitions, act them out in one repository edit, compare-and-set the row."""
        steps = list(steps)
        final = steps[-1][0]
        # compare-and-set first: a writer that lost the race touches neither the row nor the repository
        values: dict[str, Any] = {
            "status": final.status,
            "stage": final.stage,
            "stage_started_at": final.stage_started_at,
            "updated_at": final.updated_at,
            "version": row.version + 1,
        }
        if verdict is not None:  # a manual step keeps the last automatic verdict on show
            values["last_verdict"] = {**verdict.to_dict(), "at": final.updated_at}
        done = session.execute(
            update(RolloutRow)
            .where(RolloutRow.release_id == row.release_id, RolloutRow.version == row.version)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if done.rowcount != 1:
            raise ConflictError(
                f"rollout {row.release_id} was changed by someone else at the same time; read it again",
                release_id=row.release_id,
            )
        repo = self._releases.repository
        changed_repo = False
        with repo.edit() as edit:
            for new_state, transition in steps:
                advancing = transition.from_status in ("pending", "running")
                if advancing and transition.to_status in ("running", "completed"):
                    changed_repo |= self._publish_stage(session, edit, new_state, rows) > 0
                if transition.to_status == "rolling_back":
                    self._withdraw_all(session, edit, rows)
                    changed_repo = True
                session.add(_transition_row(transition, verdict))
            changed_repo = changed_repo and edit.changed
        if changed_repo:
            self._releases._fresh_until = None
        return final

    # --- creation (called by ReleaseService.create_release inside its transaction) ------------
    def create(self, session: Any, edit: Any, release_id: str, plan: RolloutPlan | None, *, actor: str) -> None:
        """Record the rollout of a new release and publish its first stage (every device with no plan)."""
        staged = plan is not None
        plan = plan or RolloutPlan.from_dict(
            {"spec_version": "1.0", "stages": [{"name": "all", "fraction": 1.0}], "on_failure": "rollback"}
        )
        now = self._now().timestamp()
        state = new_rollout(release_id, plan)
        steps: list[Step] = [start_rollout(state, actor=actor, now=now, reason="release created")]
        if not staged:
            steps.append(
                promote(steps[-1].state, actor=actor, now=now, reason="published to every device at once (no plan)")
            )
        rows = self._assignments(session, release_id)
        stages = assign_stages(plan, release_id, [r.device_id for r in rows])
        for r in rows:
            r.stage = stages[r.device_id]
        published = self._publish_stage(session, edit, steps[-1].state, rows)
        final = steps[-1].state
        session.add(
            RolloutRow(
                release_id=release_id,
                plan=plan.to_dict(),
                status=final.status,
                stage=final.stage,
                stage_started_at=final.stage_started_at,
                updated_at=final.updated_at,
                version=1,
                last_verdict=None,
            )
        )
        started = replace(steps[0].transition, reason=f"release created; {published} device(s) published")
        for t in (started, *(step.transition for step in steps[1:])):
            session.add(_transition_row(t))

    def busy_devices(self, session: Any, device_ids: Iterable[str]) -> dict[str, str]:
        """Which of these devices an active rollout holds (device id -> release id)."""
        ids = sorted(set(device_ids))
        out: dict[str, str] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for device_id, release_id in session.execute(
                select(ReleaseAssignmentRow.device_id, ReleaseAssignmentRow.release_id)
                .join(RolloutRow, RolloutRow.release_id == ReleaseAssignmentRow.release_id)
                .where(
                    RolloutRow.status.in_(ACTIVE),
                    ReleaseAssignmentRow.status == "published",
                    ReleaseAssignmentRow.device_id.in_(chunk),
                )
            ).all():
                out[device_id] = release_id
        return out

    # --- reading -------------------------------------------------------------------------------
    def status(self, release_id: str) -> RolloutStatus:
        """The rollout of a release: state, current health, per-stage progress, every transition."""
        with self._releases._sessions() as session:
            row = self._load(session, release_id)
            state = _state(row)
            rows = self._assignments(session, release_id)
            reports = self._latest_reports(session, rows)  # only published rows can have reports
            snapshot = self._snapshot(session, state, rows, reports) if state.status != "pending" else None
            stages = []
            for index, stage in enumerate(state.plan.stages):
                members = [r for r in rows if r.stage == index]
                stages.append(
                    StageProgress(
                        index=index,
                        name=stage.name,
                        fraction=stage.fraction,
                        devices=len(members),
                        published=sum(1 for r in members if r.published_at is not None),
                        installed=sum(
                            1 for r in members if r.device_id in reports and reports[r.device_id].status == "installed"
                        ),
                        failed=sum(
                            1
                            for r in members
                            if r.device_id in reports and reports[r.device_id].status in FAILED_INSTALLS
                        ),
                        reached=state.status != "pending" and index <= state.stage,
                        health=stage.health.to_dict(),
                    )
                )
            transitions = tuple(
                _transition(t)
                for t in session.scalars(
                    select(RolloutTransitionRow)
                    .where(RolloutTransitionRow.release_id == release_id)
                    .order_by(RolloutTransitionRow.id)
                ).all()
            )
            back = withdrawn = None
            if state.status in ("rolling_back", "rolled_back"):
                back, withdrawn = self._devices_back(session, rows)
            return RolloutStatus(
                state, row.version, snapshot, row.last_verdict, tuple(stages), transitions, back, withdrawn
            )

    def state(self, release_id: str) -> RolloutState:
        with self._releases._sessions() as session:
            return _state(self._load(session, release_id))

    def list(self, *, statuses: Iterable[str] | None = None) -> list[RolloutState]:
        query = select(RolloutRow)
        if statuses is not None:
            query = query.where(RolloutRow.status.in_(list(statuses)))
        with self._releases._sessions() as session:
            return [_state(r) for r in session.scalars(query).all()]

    # --- by hand -------------------------------------------------------------------------------
    def _manual(self, release_id: str, action: str, actor: str, reason: str | None) -> RolloutStatus:
        if not isinstance(actor, str) or not actor.strip():
            raise UsageError("a rollout action needs the actor who takes it")
        if actor == AUTO:
            raise UsageError(f"actor '{AUTO}' is reserved for automatic transitions")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise UsageError("reason must be a string of at most 1000 characters")
        fn = {"promote": promote, "pause": pause, "resume": resume, "rollback": rollback}[action]
        with self._lock, self._releases._sessions() as session:
            row = self._load(session, release_id, lock=True)
            state = _state(row)
            kwargs: dict[str, Any] = {"actor": actor, "now": self._now().timestamp()}
            if reason:
                kwargs["reason"] = reason
            step: Step = fn(state, **kwargs)  # RolloutTransitionError (409) when the state does not allow it
            rows = self._assignments(session, release_id)
            self._apply(session, row, [(step.state, step.transition)], rows)
            session.commit()
        self._repo_refresh()
        if action == "rollback":
            self.advance(release_id)  # devices that never installed it are back already
        return self.status(release_id)

    def promote(self, release_id: str, *, actor: str, reason: str | None = None) -> RolloutStatus:
        """Move to the next stage (or complete) without waiting for a verdict."""
        return self._manual(release_id, "promote", actor, reason)

    def pause(self, release_id: str, *, actor: str, reason: str | None = None) -> RolloutStatus:
        """Hold the stage reached: no promotion and no automatic verdicts until resumed."""
        return self._manual(release_id, "pause", actor, reason)

    def resume(self, release_id: str, *, actor: str, reason: str | None = None) -> RolloutStatus:
        """Continue a paused or halted rollout (the stage's soak starts again)."""
        return self._manual(release_id, "resume", actor, reason)

    def rollback(self, release_id: str, *, actor: str, reason: str | None = None) -> RolloutStatus:
        """Withdraw the release: every device it reached is offered its previous bundle again."""
        return self._manual(release_id, "rollback", actor, reason)

    def _repo_refresh(self) -> None:
        self._releases.repository.refresh()
        self._releases._fresh_until = None

    # --- automatic -----------------------------------------------------------------------------
    def advance(self, release_id: str | None = None, *, wait: bool = True) -> list[Transition]:
        """Judge every moving rollout (or just ``release_id``'s) and take the automatic transitions;
        returns the transitions taken. Safe to call often and from many threads: finding nothing
        moving takes no lock, and with ``wait=False`` (a device's report) a call that finds another
        one advancing returns at once — that one, or the next poll's :meth:`tick`, sees the report."""
        taken: list[Transition] = []
        with self._releases._sessions() as session:
            query = select(RolloutRow.release_id).where(RolloutRow.status.in_(MOVING))
            if release_id is not None:
                query = query.where(RolloutRow.release_id == release_id)
            ids = list(session.scalars(query).all())
        if not ids:
            return taken
        if not self._lock.acquire(blocking=wait):
            return taken
        try:
            for rid in ids:
                taken.extend(self._advance_one(rid))
        finally:
            self._lock.release()
        if any(t.to_status in ("running", "completed", "rolling_back") for t in taken):
            self._repo_refresh()
        return taken

    def _advance_one(self, release_id: str) -> list[Transition]:
        with self._releases._sessions() as session:
            row = self._load(session, release_id, lock=True)
            state = _state(row)
            rows = self._assignments(session, release_id)
            now = self._now().timestamp()
            if state.status == "rolling_back":
                back, withdrawn = self._devices_back(session, rows)
                if back < withdrawn:
                    return []
                step = finish_rollback(
                    state, actor=AUTO, now=now, reason=f"all {withdrawn} device(s) are off the release"
                )
                self._apply(session, row, [(step.state, step.transition)], rows)
                session.commit()
                return [step.transition]
            if state.status != "running":
                return []
            snapshot = self._snapshot(session, state, rows)
            result = evaluate(state, snapshot, now)
            if not result.transitions:
                verdict = result.verdict.to_dict() if result.verdict is not None else None
                previous = row.last_verdict or {}
                if verdict is not None and (
                    previous.get("decision"),
                    previous.get("reason"),
                ) != (verdict["decision"], verdict["reason"]):
                    session.execute(
                        update(RolloutRow)
                        .where(RolloutRow.release_id == release_id, RolloutRow.version == row.version)
                        .values(last_verdict={**verdict, "at": now})
                        .execution_options(synchronize_session=False)
                    )
                    session.commit()
                return []
            steps = [(result.state, t) for t in result.transitions]
            self._apply(session, row, steps, rows, verdict=result.verdict)
            session.commit()
            taken = list(result.transitions)
        if taken[-1].to_status == "rolling_back":
            taken.extend(self._advance_one(release_id))  # devices that never installed it are back already
        return taken

    def tick(self) -> None:
        """The poll-driven trigger: :meth:`advance` at most once per :data:`TICK_INTERVAL_S`."""
        now = self._now().timestamp()
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_INTERVAL_S
        self.advance()


__all__ = ["ACTIVE", "RolloutStatus", "Rollouts", "StageProgress", "cli_actor"]
