"""Releases: create (scope ``release``), list and show (scope ``read``) — with every device's
assignment, its latest install report and the bundle the device reports running — and their staged
rollouts: ``GET /releases/{id}/rollout`` (scope ``read``) shows the state, the health of the stages
reached and every transition; ``POST /releases/{id}/rollout/{promote|pause|resume|rollback}``
(scope ``release``) acts by hand, recorded with the API key that did it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from tinymlops.devices.enrolment import MAX_TAGS, TAG
from tinymlops.release.rollout import STATUSES
from tinymlops.release.rollouts import RolloutStatus
from tinymlops.release.service import MAX_LIST, Assignment, Deployment, InstallReportRecord, ReleaseRecord
from tinymlops.server.deps import DEVICE_ID_PATTERN, ReadKey, ReleaseKey, ServicesDep
from tinymlops.server.error_responses import error_responses
from tinymlops.spec.install_report import INSTALL_STATUSES
from tinymlops.spec.rollout import (
    DEFAULT_MIN_CLASS_SAMPLES,
    MAX_CLASS_SAMPLES,
    MAX_LATENCY_RATIO,
    MAX_SOAK_S,
    MAX_STAGES,
)

router = APIRouter(prefix="/releases", tags=["releases"], responses=error_responses(400, 401, 403, 404, 413, 422))

ReleaseIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="16 lower-case hex digits")]
InstallStatus = Literal["installed", "refused", "failed", "deferred", "rolled_back", "unchanged"]
assert set(INSTALL_STATUSES) == set(InstallStatus.__args__)  # type: ignore[attr-defined]
MAX_RELEASE_DEVICES = 10_000
#: NAME[:VERSION|:latest][/VARIANT[/VARIANT…]] (tinymlops.registry.refs)
MODEL_REF = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(?::(?:latest|[1-9][0-9]{0,8}))?(?:/[a-z0-9][a-z0-9_.-]{0,62}){0,8}$"


class HealthCriteriaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_install_success_rate: float = Field(0.95, ge=0, le=1, allow_inf_nan=False)
    max_smoke_failure_rate: float = Field(0.0, ge=0, le=1, allow_inf_nan=False)
    max_error_rate: float = Field(0.05, ge=0, le=1, allow_inf_nan=False)
    max_latency_ratio: float = Field(1.5, gt=0, le=MAX_LATENCY_RATIO, allow_inf_nan=False)
    min_reports: int = Field(1, ge=1, le=1_000_000)
    min_predictions: int = Field(0, ge=0, le=10**12)
    min_soak_s: float = Field(0.0, ge=0, le=MAX_SOAK_S, allow_inf_nan=False)
    max_p95_latency_ratio: float | None = Field(
        None,
        gt=0,
        le=MAX_LATENCY_RATIO,
        allow_inf_nan=False,
        description="Per device class, from telemetry: p95 latency / the same devices' previous bundle (null: off).",
    )
    max_energy_ratio: float | None = Field(
        None,
        gt=0,
        le=MAX_LATENCY_RATIO,
        allow_inf_nan=False,
        description="Per device class, from telemetry: energy per inference / the previous bundle's (null: off).",
    )
    min_class_samples: int = Field(
        DEFAULT_MIN_CLASS_SAMPLES,
        ge=1,
        le=MAX_CLASS_SAMPLES,
        description="Telemetry samples a class needs on each bundle before a telemetry gate judges it (fewer: hold).",
    )


class RolloutStageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    fraction: float = Field(gt=0, le=1, allow_inf_nan=False)
    health: HealthCriteriaIn = Field(default_factory=HealthCriteriaIn)


class RolloutPlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec_version: str = Field("1.0", pattern=r"^1\.[0-9]{1,4}$")
    on_failure: Literal["rollback", "halt"] = "rollback"
    stages: list[RolloutStageIn] = Field(min_length=1, max_length=MAX_STAGES)


class TelemetryPrivacyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes_epsilon: float | None = Field(None, description="Randomized response on the class histogram (null: exact).")
    confidence_epsilon: float | None = Field(
        None, description="Discrete Laplace on the confidence histogram (null: exact)."
    )
    window_epsilon: float | None = Field(None, description="The device's cap per window (null: its default, 4).")
    day_epsilon: float | None = Field(None, description="The device's cap in any 24 hours (null: its default, 24).")


class TelemetryIn(BaseModel):
    """The telemetry policy the release's bundles carry (tinymlops.release.telemetry); values are
    checked as the device will check them (400 naming the key)."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool = Field(True, description="false: devices record no telemetry for these bundles.")
    inputs: StrictBool = Field(True, description="false: performance only (no input sketches or histograms).")
    privacy: TelemetryPrivacyIn | None = Field(None, description="Local differential privacy on the histograms.")


class MeteringIn(BaseModel):
    """Make the release's bundles metered (tinymlops.release.metering): devices serve them only under a
    prepaid license for the release's model (``tinymlops license issue``)."""

    model_config = ConfigDict(extra="forbid")

    block: int = Field(
        64, ge=1, le=1 << 20, description="Calls per durable reservation on the device (a crash loses at most one)."
    )


class ReleaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        pattern=MODEL_REF,
        max_length=400,
        description="A model (NAME), a version (NAME:VERSION) — the variant is selected per device — "
        "or a full variant ref (NAME:VERSION/VARIANT), used as given.",
    )
    devices: list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]] | None = Field(
        None, min_length=1, max_length=MAX_RELEASE_DEVICES, description="Device ids (default: every active device)."
    )
    tags: list[Annotated[str, Field(pattern=TAG.pattern)]] = Field(
        default_factory=list, max_length=MAX_TAGS, description="Only devices carrying every one of these tags."
    )
    profiles: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]] = Field(
        default_factory=list, max_length=64, description="Only devices enrolled with one of these profiles."
    )
    urgent: StrictBool = Field(False, description="Devices may download it even on a metered network.")
    plan: RolloutPlanIn | None = Field(
        None,
        description="Roll out in stages (tinymlops.spec.rollout); without a plan every device gets it at once.",
    )
    telemetry: TelemetryIn | None = Field(
        None,
        description="The bundles' telemetry policy; null: the default (on, inputs profiled with the reference "
        "profile's settings, exact histograms).",
    )
    metering: MeteringIn | None = Field(
        None, description="Meter the bundles (pay per query, enforced offline by the device); null: free."
    )


class InstallReportOut(BaseModel):
    id: int
    device_id: str
    release_id: str | None
    received_at: datetime
    spec_version: str
    status: InstallStatus
    reason: str
    bundle_id: str | None
    sha256: str | None
    slot: Literal["a", "b"] | None
    active_bundle_id: str | None
    error: str | None
    timings: dict[str, float]
    at: float

    @classmethod
    def of(cls, r: InstallReportRecord) -> InstallReportOut:
        return cls(**r.to_dict())


class DeploymentOut(BaseModel):
    device_id: str
    bundle_id: str | None
    release_id: str | None
    last_status: InstallStatus
    last_reason: str
    updated_at: datetime

    @classmethod
    def of(cls, d: Deployment) -> DeploymentOut:
        return cls(**d.to_dict())


class AssignmentOut(BaseModel):
    device_id: str
    profile: str
    status: Literal["published", "skipped"]
    reason: str
    ref: str | None
    bundle_id: str | None
    bundle_sha256: str | None
    size_bytes: int | None
    target_path: str | None
    selection: dict[str, Any]
    stage: int | None
    published_at: datetime | None
    withdrawn_at: datetime | None
    latest_report: InstallReportOut | None
    deployment: DeploymentOut | None

    @classmethod
    def of(cls, a: Assignment) -> AssignmentOut:
        doc = a.to_dict()
        doc["latest_report"] = None if a.latest_report is None else InstallReportOut.of(a.latest_report)
        doc["deployment"] = None if a.deployment is None else DeploymentOut.of(a.deployment)
        return cls(**doc)


RolloutStatusName = Literal["pending", "running", "paused", "halted", "rolling_back", "rolled_back", "completed"]
assert set(STATUSES) == set(RolloutStatusName.__args__)  # type: ignore[attr-defined]


class RolloutSummaryOut(BaseModel):
    status: RolloutStatusName
    stage: int
    stage_name: str
    stages: int


class TransitionOut(BaseModel):
    release_id: str
    from_status: RolloutStatusName
    from_stage: int
    to_status: RolloutStatusName
    to_stage: int
    reason: str
    actor: str
    at: float


class StageProgressOut(BaseModel):
    index: int
    name: str
    fraction: float
    devices: int
    published: int
    installed: int
    failed: int
    reached: bool
    health: dict[str, float | int]


class RolloutOut(BaseModel):
    release_id: str
    status: RolloutStatusName
    stage: int
    stage_name: str
    stage_started_at: float | None
    updated_at: float | None
    version: int
    plan: dict[str, Any]
    health: dict[str, Any] | None = Field(description="What the devices of the stages reached reported.")
    verdict: dict[str, Any] | None = Field(description="The last automatic verdict, with every check.")
    stages: list[StageProgressOut]
    transitions: list[TransitionOut]
    devices_back: int | None
    devices_withdrawn: int | None

    @classmethod
    def of(cls, status: RolloutStatus) -> RolloutOut:
        return cls(**status.to_dict())


class RolloutActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, min_length=1, max_length=1000, description="Why (recorded with the transition).")


class ReleaseSummaryOut(BaseModel):
    id: str
    model: str
    requested: str
    explicit: bool
    devices: list[str] | None
    tags: list[str]
    profiles: list[str]
    urgent: bool
    status: Literal["published", "empty"]
    created_by: str
    created_at: datetime
    snapshot_version: int | None
    published: int
    skipped: int
    rollout: RolloutSummaryOut | None
    telemetry: dict[str, Any] | None = Field(
        None, description="The telemetry policy table its bundles carry (null: none recorded)."
    )
    metering: dict[str, Any] | None = Field(
        None, description="The metering policy table its bundles carry (null: not metered)."
    )

    @classmethod
    def of(cls, r: ReleaseRecord) -> ReleaseSummaryOut:
        return cls(**r.to_dict(assignments=False))


class ReleaseOut(ReleaseSummaryOut):
    assignments: list[AssignmentOut]

    @classmethod
    def of(cls, r: ReleaseRecord) -> ReleaseOut:
        return cls(**r.to_dict(assignments=False), assignments=[AssignmentOut.of(a) for a in r.assignments])


@router.post("", status_code=201, response_model=ReleaseOut)
def create_release(body: ReleaseCreate, services: ServicesDep, key: ReleaseKey) -> ReleaseOut:
    """Select a variant per device, build bundles encrypted to each, publish them in one TUF commit."""
    record = services.releases.create_release(
        body.model,
        devices=body.devices,
        tags=body.tags,
        profiles=body.profiles,
        urgent=body.urgent,
        created_by=f"api-key:{key.id}",
        plan=None if body.plan is None else body.plan.model_dump(),
        telemetry=None if body.telemetry is None else body.telemetry.model_dump(exclude_none=True),
        metering=None if body.metering is None else body.metering.model_dump(),
    )
    return ReleaseOut.of(record)


@router.get("", response_model=list[ReleaseSummaryOut])
def list_releases(
    services: ServicesDep, _key: ReadKey, limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 100
) -> list[ReleaseSummaryOut]:
    """The newest releases first."""
    return [ReleaseSummaryOut.of(r) for r in services.releases.list_releases(limit=limit)]


@router.get("/{release_id}", response_model=ReleaseOut)
def show_release(release_id: ReleaseIdPath, services: ServicesDep, _key: ReadKey) -> ReleaseOut:
    """A release with every device's assignment, latest install report and current deployment."""
    return ReleaseOut.of(services.releases.get_release(release_id))


@router.get("/{release_id}/rollout", response_model=RolloutOut)
def show_rollout(release_id: ReleaseIdPath, services: ServicesDep, _key: ReadKey) -> RolloutOut:
    """The release's rollout: state, health of the stages reached, progress per stage, every transition."""
    return RolloutOut.of(services.releases.rollouts.status(release_id))


@router.post("/{release_id}/rollout/{action}", response_model=RolloutOut, responses=error_responses(409))
def act_on_rollout(
    release_id: ReleaseIdPath,
    action: Annotated[Literal["promote", "pause", "resume", "rollback"], Path(description="What to do.")],
    services: ServicesDep,
    key: ReleaseKey,
    body: RolloutActionIn | None = None,
) -> RolloutOut:
    """Promote to the next stage, pause, resume (a paused or halted rollout) or roll back — by hand,
    recorded with the API key that did it. An action the rollout's state does not allow is a 409."""
    rollouts = services.releases.rollouts
    act = {
        "promote": rollouts.promote,
        "pause": rollouts.pause,
        "resume": rollouts.resume,
        "rollback": rollouts.rollback,
    }
    reason = None if body is None else body.reason
    return RolloutOut.of(act[action](release_id, actor=f"api-key:{key.id}", reason=reason))
