"""Releases: create (scope ``release``), list and show (scope ``read``) — with every device's
assignment, its latest install report and the bundle the device reports running."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from tinymlops.devices.enrolment import MAX_TAGS, TAG
from tinymlops.release.service import MAX_LIST, Assignment, Deployment, InstallReportRecord, ReleaseRecord
from tinymlops.server.deps import DEVICE_ID_PATTERN, ReadKey, ReleaseKey, ServicesDep
from tinymlops.server.error_responses import error_responses
from tinymlops.spec.install_report import INSTALL_STATUSES

router = APIRouter(prefix="/releases", tags=["releases"], responses=error_responses(400, 401, 403, 404, 413, 422))

ReleaseIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="16 lower-case hex digits")]
InstallStatus = Literal["installed", "refused", "failed", "deferred", "rolled_back", "unchanged"]
assert set(INSTALL_STATUSES) == set(InstallStatus.__args__)  # type: ignore[attr-defined]
MAX_RELEASE_DEVICES = 10_000
#: NAME[:VERSION|:latest][/VARIANT[/VARIANT…]] (tinymlops.registry.refs)
MODEL_REF = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(?::(?:latest|[1-9][0-9]{0,8}))?(?:/[a-z0-9][a-z0-9_.-]{0,62}){0,8}$"


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
    urgent: StrictBool = Field(False, description="Devices may download it even on a metered network.")


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
    latest_report: InstallReportOut | None
    deployment: DeploymentOut | None

    @classmethod
    def of(cls, a: Assignment) -> AssignmentOut:
        doc = a.to_dict()
        doc["latest_report"] = None if a.latest_report is None else InstallReportOut.of(a.latest_report)
        doc["deployment"] = None if a.deployment is None else DeploymentOut.of(a.deployment)
        return cls(**doc)


class ReleaseSummaryOut(BaseModel):
    id: str
    model: str
    requested: str
    explicit: bool
    devices: list[str] | None
    tags: list[str]
    urgent: bool
    status: Literal["published", "empty"]
    created_by: str
    created_at: datetime
    snapshot_version: int | None
    published: int
    skipped: int

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
        body.model, devices=body.devices, tags=body.tags, urgent=body.urgent, created_by=f"api-key:{key.id}"
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
