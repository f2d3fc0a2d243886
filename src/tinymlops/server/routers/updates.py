"""The device's side of updates: its bootstrap (trust anchors), the TUF repository, install reports.

``GET /v1/devices/me/bootstrap``
    What an agent needs right after enrolment: the repository's current ``root.json`` (base64 of
    the exact bytes — it becomes the device's TUF trust anchor), the release public keys bundles
    are signed with, the repository's path, and the device's cohorts (its tags). Fetched once;
    later roots reach the device through TUF itself, each signed by the previous one.
``GET /v1/tuf/metadata/{name}``, ``GET /v1/tuf/targets/{scope}/{name}/{file}``
    The update repository as python-tuf's client reads it. Every request is device-authenticated
    (signed or bearer). Metadata is the same for every device (it lists target paths and hashes,
    not bundles); a target file only for the device it was published to, or for a cohort the
    device belongs to — another device's bundle is a 403 (and could not be decrypted anyway).
    A missing file is a 404 (python-tuf relies on it to stop looking for newer roots); a name that
    is not one the repository serves (``..``, odd characters) a 400, before the file system is
    touched (the patterns are published in the OpenAPI document). Asking for ``timestamp.json`` re-signs it first
    when it is past half its life (:meth:`ReleaseService.keep_fresh
    <tinymlops.release.service.ReleaseService.keep_fresh>`).
``POST /v1/devices/me/installs``
    The agent's report of one install attempt (:mod:`tinymlops.spec.install_report`).
``POST /v1/devices/me/health``
    The agent's report of the predictions, errors and latency of the bundle it runs
    (:mod:`tinymlops.spec.health_report`): what rollout health gates and latency charts are made of.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from tinymlops.errors import InvalidInputError
from tinymlops.release.service import REPOSITORY_PATH
from tinymlops.server.deps import CurrentDevice, ServicesDep
from tinymlops.server.error_responses import error_responses
from tinymlops.server.routers.releases import InstallReportOut, InstallStatus
from tinymlops.spec.context import NETWORKS, PREFERENCES
from tinymlops.spec.health_report import MAX_LATENCY_MS, MAX_PREDICTIONS, HealthReport
from tinymlops.spec.install_report import MAX_REASON_CHARS, MAX_TIMINGS, InstallReport

router = APIRouter(tags=["updates"], responses=error_responses(400, 401, 403, 404, 413, 422))

HEX32 = r"^[0-9a-f]{32}$"
HEX64 = r"^[0-9a-f]{64}$"
#: what the repository serves (tinymlops.release.repository, tinymlops.spec.update); anything else is a
#: 400 naming the problem, checked before the file system is touched
METADATA_NAME = r"^(?:[1-9][0-9]{0,9}\.[a-z0-9-]{1,64}|timestamp)\.json$"
TARGET_SCOPE = r"^(?:devices|cohorts)$"
TARGET_OWNER = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TARGET_FILE = r"^[0-9a-f]{64}\.bundle\.tmlb$"


class BootstrapOut(BaseModel):
    device_id: str
    tuf_root: str = Field(description="The repository's current root.json: base64 of its exact bytes.")
    release_keys: list[str] = Field(description="Ed25519 release public keys (32 bytes each, base64).")
    repository: str = Field(description="Path of the update repository on this server.")
    cohorts: list[str] = Field(description="The device's tags: cohorts whose bundles it may also fetch.")


class InstallReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec_version: str = Field(pattern=r"^1\.[0-9]{1,4}$")
    status: InstallStatus
    reason: str = Field("", max_length=MAX_REASON_CHARS)
    bundle_id: Annotated[str, Field(pattern=HEX32)] | None = None
    sha256: Annotated[str, Field(pattern=HEX64)] | None = None
    slot: Annotated[str, Field(pattern=r"^[ab]$")] | None = None
    active_bundle_id: Annotated[str, Field(pattern=HEX32)] | None = None
    error: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")] | None = None
    timings: dict[
        Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], Annotated[float, Field(ge=0, allow_inf_nan=False)]
    ] = Field(
        default_factory=dict,
        max_length=MAX_TIMINGS,
        json_schema_extra={"additionalProperties": False},
        description="Step durations in seconds, by step name.",
    )
    at: float = Field(0.0, ge=0, allow_inf_nan=False, description="The device's clock, seconds since the epoch.")


class LatencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p50: float = Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    p95: float = Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    p99: float = Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    max: float = Field(ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)


class ContextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec_version: str = Field(pattern=r"^1\.[0-9]{1,4}$")
    battery: float = Field(1.0, ge=0, le=1, allow_inf_nan=False)
    charging: bool = False
    network: Literal[NETWORKS] = "wifi"  # type: ignore[valid-type]
    bandwidth_kbps: float | None = Field(None, gt=0, allow_inf_nan=False)
    prefer: Literal[PREFERENCES] = "balanced"  # type: ignore[valid-type]


class HealthReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec_version: str = Field(pattern=r"^1\.[0-9]{1,4}$")
    bundle_id: str = Field(pattern=HEX32)
    window_start: float = Field(ge=0, allow_inf_nan=False, description="The device's clock, seconds.")
    window_end: float = Field(ge=0, allow_inf_nan=False, description="The device's clock, seconds.")
    predictions: int = Field(ge=0, le=MAX_PREDICTIONS)
    errors: int = Field(0, ge=0, le=MAX_PREDICTIONS)
    latency_ms: LatencyIn | None = Field(None, description="Of the successful calls; null when there were none.")
    context: ContextIn | None = None
    at: float = Field(0.0, ge=0, allow_inf_nan=False)


class HealthReportOut(BaseModel):
    id: int
    device_id: str
    profile: str
    release_id: str | None
    ref: str | None
    received_at: datetime
    spec_version: str
    bundle_id: str
    window_start: float
    window_end: float
    predictions: int
    errors: int
    latency_ms: dict[str, float] | None
    context: dict[str, Any] | None
    at: float


@router.get("/devices/me/bootstrap", response_model=BootstrapOut)
def bootstrap(device: CurrentDevice, services: ServicesDep) -> BootstrapOut:
    """The calling device's trust anchors: TUF root, release keys, repository path, cohorts."""
    root, keys = services.releases.trust_anchor()
    return BootstrapOut(
        device_id=device.id,
        tuf_root=base64.b64encode(root).decode("ascii"),
        release_keys=[base64.b64encode(k).decode("ascii") for k in keys],
        repository=REPOSITORY_PATH,
        cohorts=list(device.tags),
    )


@router.post("/devices/me/installs", status_code=201, response_model=InstallReportOut)
def report_install(body: InstallReportIn, device: CurrentDevice, services: ServicesDep) -> InstallReportOut:
    """Record the calling device's report of one install attempt."""
    report = InstallReport.from_dict(body.model_dump())
    return InstallReportOut.of(services.releases.record_install(device.id, report))


@router.post("/devices/me/health", status_code=201, response_model=HealthReportOut)
def report_health(body: HealthReportIn, device: CurrentDevice, services: ServicesDep) -> HealthReportOut:
    """Record the calling device's report of the predictions, errors and latency of the bundle it runs."""
    report = HealthReport.from_dict(body.model_dump(exclude_none=False))  # SpecError (400): cross-field rules
    record = services.releases.record_health(device.id, report)
    return HealthReportOut(**record.to_dict())


@router.get(
    "/tuf/metadata/{name}",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}, "description": "A TUF metadata file, as signed."}},
)
def tuf_metadata(
    name: Annotated[str, Path(max_length=128, json_schema_extra={"pattern": METADATA_NAME})],
    device: CurrentDevice,
    services: ServicesDep,
) -> Response:
    """A metadata file of the update repository (``timestamp.json``, ``N.snapshot.json``, …)."""
    if not re.fullmatch(METADATA_NAME, name):
        raise InvalidInputError(f"not a metadata file name this repository serves: {name!r:.80}")
    releases = services.releases
    if name == "timestamp.json":
        if services.settings.tuf_refresh:
            releases.keep_fresh()
        releases.tick()  # rollouts move along as devices poll (throttled)
    path = releases.repository.resolve(f"metadata/{name}")
    return Response(path.read_bytes(), media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get(
    "/tuf/targets/{scope}/{name}/{file}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "A bundle, as published."}},
)
def tuf_target(
    scope: Annotated[str, Path(max_length=16, json_schema_extra={"pattern": TARGET_SCOPE})],
    name: Annotated[str, Path(max_length=64, json_schema_extra={"pattern": TARGET_OWNER})],
    file: Annotated[str, Path(max_length=128, json_schema_extra={"pattern": TARGET_FILE})],
    device: CurrentDevice,
    services: ServicesDep,
) -> FileResponse:
    """A target file (a bundle) published for the calling device (``devices/<its id>/…``) or for one of
    its cohorts (``cohorts/<tag>/…``); python-tuf asks for ``<sha256>.bundle.tmlb`` (consistent snapshots)."""
    for value, pattern, what in (
        (scope, TARGET_SCOPE, "'devices' or 'cohorts'"),
        (name, TARGET_OWNER, "a device id or cohort name"),
        (file, TARGET_FILE, "<sha256>.bundle.tmlb"),
    ):
        if not re.fullmatch(pattern, value):
            raise InvalidInputError(f"not a target this repository serves: {value!r:.80} is not {what}")
    releases = services.releases
    served = f"{scope}/{name}/{file}"
    releases.check_target_access(device, served)
    target = releases.repository.resolve(f"targets/{served}")
    return FileResponse(target, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})
