"""What the release pages show, from the services the API uses (no HTML here).

* :func:`release_list` — the newest releases (``ReleaseService.list_releases``) with their rollout's
  status and stage and the assigned/skipped counts;
* :func:`release_detail` — one release (``get_release``) and its rollout
  (``rollouts.status``): progress per stage, the health of the stages reached and the last verdict,
  every transition, every device; and which manual actions the rollout's state allows
  (:func:`legal_actions`, asked of the pure state machine itself, so the page never offers a
  button the service would refuse).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tinymlops.errors import NotFoundError, RolloutTransitionError
from tinymlops.release import rollout as machine
from tinymlops.release.rollout import RolloutState
from tinymlops.release.rollouts import RolloutStatus
from tinymlops.release.service import ReleaseRecord, ReleaseService
from tinymlops.server.dashboard.views import NONE

#: the manual actions, in the order the page offers them
ACTIONS = ("promote", "pause", "resume", "rollback")
#: the releases the list shows (the service's default page)
LIST_LIMIT = 100


def _at(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class ReleaseRow:
    id: str
    model: str  # the model's name (its lineage page)
    requested: str  # what was asked for: NAME, NAME:VERSION or a full variant ref
    created_by: str
    created_at: datetime
    status: str  # published | empty
    rollout_status: str  # or NONE (an empty release has no rollout)
    stage: int | None
    stage_name: str
    stages: int
    assigned: int
    skipped: int


def _row(r: ReleaseRecord) -> ReleaseRow:
    ro = r.rollout or {}
    return ReleaseRow(
        id=r.id,
        model=r.model,
        requested=r.requested,
        created_by=r.created_by,
        created_at=r.created_at,
        status=r.status,
        rollout_status=str(ro.get("status", NONE)),
        stage=ro.get("stage"),
        stage_name=str(ro.get("stage_name", "")),
        stages=int(ro.get("stages", 0)),
        assigned=len(r.published),
        skipped=len(r.skipped),
    )


def release_list(releases: ReleaseService, *, limit: int = LIST_LIMIT) -> list[ReleaseRow]:
    """The newest ``limit`` releases, newest first."""
    return [_row(r) for r in releases.list_releases(limit=limit)]


@dataclass(frozen=True)
class StageRow:
    index: int
    name: str
    fraction: float
    devices: int
    published: int
    installed: int
    failed: int
    reached: bool
    current: bool
    criteria: dict[str, Any]


@dataclass(frozen=True)
class HealthPanel:
    """What the devices of the stages reached reported (the numbers the health gate judges)."""

    stage: int
    installs_ok: int
    installs_failed: int
    smoke_failures: int
    predictions: int
    prediction_errors: int
    latency_p50_ms: float | None
    baseline_p50_ms: float | None

    @property
    def reports(self) -> int:
        return self.installs_ok + self.installs_failed

    @property
    def install_success_rate(self) -> float | None:
        return _rate(self.installs_ok, self.reports)

    @property
    def smoke_failure_rate(self) -> float | None:
        return _rate(self.smoke_failures, self.reports)

    @property
    def error_rate(self) -> float | None:
        return _rate(self.prediction_errors, self.predictions)

    @property
    def latency_ratio(self) -> float | None:
        if self.latency_p50_ms is None or not self.baseline_p50_ms:
            return None
        return self.latency_p50_ms / self.baseline_p50_ms


@dataclass(frozen=True)
class CheckRow:
    criterion: str
    measured: float | None
    threshold: float | None
    ok: bool | None  # None: not measurable yet
    detail: str


@dataclass(frozen=True)
class VerdictView:
    decision: str
    reason: str
    at: datetime | None
    checks: tuple[CheckRow, ...]


@dataclass(frozen=True)
class TransitionRow:
    at: datetime
    from_status: str
    from_stage: int
    to_status: str
    to_stage: int
    stage_name: str  # of to_stage
    actor: str
    reason: str


@dataclass(frozen=True)
class ReleaseDeviceRow:
    device_id: str
    profile: str
    assignment: str  # published | skipped
    reason: str
    stage: int | None
    stage_name: str
    ref: str
    published_at: datetime | None
    withdrawn_at: datetime | None
    install_status: str  # the latest install report about this release's bundle, or NONE
    running: str  # "this release", "other" or NONE: what the device reports running


@dataclass(frozen=True)
class RolloutView:
    status: str
    stage: int
    stage_name: str
    stages: tuple[StageRow, ...]
    on_failure: str
    stage_started_at: datetime | None
    updated_at: datetime | None
    health: HealthPanel | None
    verdict: VerdictView | None
    transitions: tuple[TransitionRow, ...]
    devices_back: int | None
    devices_withdrawn: int | None
    actions: tuple[str, ...]  # the manual actions the state allows now


@dataclass(frozen=True)
class ReleaseDetail:
    release: ReleaseRow
    rollout: RolloutView | None  # None for an empty release (nothing was published)
    devices: tuple[ReleaseDeviceRow, ...]


def legal_actions(state: RolloutState) -> tuple[str, ...]:
    """The manual actions the state machine allows from ``state`` (tried on the pure functions)."""
    out = []
    now = state.updated_at if state.updated_at is not None else 0.0
    for action in ACTIONS:
        try:
            getattr(machine, action)(state, actor="dashboard", now=now)
        except RolloutTransitionError:
            continue
        out.append(action)
    return tuple(out)


def _verdict(doc: dict[str, Any] | None) -> VerdictView | None:
    if not doc:
        return None
    checks = tuple(
        CheckRow(
            criterion=str(c.get("criterion", "")),
            measured=c.get("measured"),
            threshold=c.get("threshold"),
            ok=c.get("ok"),
            detail=str(c.get("detail", "")),
        )
        for c in doc.get("checks", ())
    )
    return VerdictView(str(doc.get("decision", "")), str(doc.get("reason", "")), _at(doc.get("at")), checks)


def _rollout(status: RolloutStatus) -> RolloutView:
    s = status.state
    names = [st.name for st in s.plan.stages]
    stages = tuple(
        StageRow(
            index=p.index,
            name=p.name,
            fraction=p.fraction,
            devices=p.devices,
            published=p.published,
            installed=p.installed,
            failed=p.failed,
            reached=p.reached,
            current=p.index == s.stage and s.status != "pending",
            criteria=dict(p.health),
        )
        for p in status.stages
    )
    snap = status.snapshot
    health = None
    if snap is not None:
        health = HealthPanel(
            stage=snap.stage,
            installs_ok=snap.installs_ok,
            installs_failed=snap.installs_failed,
            smoke_failures=snap.smoke_failures,
            predictions=snap.predictions,
            prediction_errors=snap.prediction_errors,
            latency_p50_ms=snap.latency_p50_ms,
            baseline_p50_ms=snap.baseline_p50_ms,
        )
    transitions = tuple(
        TransitionRow(
            at=datetime.fromtimestamp(t.at, UTC),
            from_status=t.from_status,
            from_stage=t.from_stage,
            to_status=t.to_status,
            to_stage=t.to_stage,
            stage_name=names[t.to_stage] if 0 <= t.to_stage < len(names) else "?",
            actor=t.actor,
            reason=t.reason,
        )
        for t in status.transitions
    )
    return RolloutView(
        status=s.status,
        stage=s.stage,
        stage_name=s.current_stage,
        stages=stages,
        on_failure=s.plan.on_failure,
        stage_started_at=_at(s.stage_started_at),
        updated_at=_at(s.updated_at),
        health=health,
        verdict=_verdict(status.verdict),
        transitions=transitions,
        devices_back=status.devices_back,
        devices_withdrawn=status.devices_withdrawn,
        actions=legal_actions(s),
    )


def release_detail(releases: ReleaseService, release_id: str) -> ReleaseDetail:
    """Release ``release_id`` with its rollout and devices; :class:`NotFoundError` for an unknown id."""
    record = releases.get_release(release_id)
    rollout = None
    if record.rollout is not None:
        try:
            rollout = _rollout(releases.rollouts.status(release_id))
        except NotFoundError:
            rollout = None
    names = [] if rollout is None else [st.name for st in rollout.stages]
    devices = tuple(
        ReleaseDeviceRow(
            device_id=a.device_id,
            profile=a.profile_name,
            assignment=a.status,
            reason=a.reason,
            stage=a.stage,
            stage_name=names[a.stage] if a.stage is not None and 0 <= a.stage < len(names) else "",
            ref=a.ref or NONE,
            published_at=a.published_at,
            withdrawn_at=a.withdrawn_at,
            install_status=a.latest_report.report.status if a.latest_report is not None else NONE,
            running=(
                NONE
                if a.deployment is None or a.deployment.bundle_id is None
                else ("this release" if a.bundle_id and a.deployment.bundle_id == a.bundle_id else "other")
            ),
        )
        for a in record.assignments
    )
    return ReleaseDetail(_row(record), rollout, devices)


__all__ = [
    "ACTIONS",
    "CheckRow",
    "HealthPanel",
    "ReleaseDetail",
    "ReleaseDeviceRow",
    "ReleaseRow",
    "RolloutView",
    "StageRow",
    "TransitionRow",
    "VerdictView",
    "legal_actions",
    "release_detail",
    "release_list",
]
