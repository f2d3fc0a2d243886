"""Telemetry: devices upload sealed batches; operators read performance back.

``POST /devices/me/telemetry`` (a device, signed request or bearer token, exactly like
``/devices/me/health``)
    The body is a sealed batch as :func:`tinymlops.observe.sealing.seal_batch` makes it: the
    canonical JSON compressed with gzip (``Content-Encoding: gzip`` is required), signed with the
    device's enrolled key (``X-Tinymlops-Batch-Signature``: 128 hex digits). 201 with the batch id,
    its digest, the windows stored and when. A batch already accepted (same digest) is a 409 whose
    body is exactly ``{"error": {"type": "DuplicateBatchError", "message": …, "digest": …}}`` — the
    device treats it as delivered; a window overlapping a stored one a 409 ``WindowOverlapError``
    naming both; a body over the server's limit (or one that inflates past a batch's limit) a 413;
    anything malformed, a bad signature, a sketch that does not parse, a bundle not published to
    the device a 400 naming what is wrong. Nothing of a refused batch is stored
    (:class:`~tinymlops.observe.ingest.TelemetryIngest`).
``GET /fleet/telemetry`` (scope ``read``)
    Per device class (profile) and variant ref: requests, errors, latency p50/p95/p99 from the
    windows' merged latency histograms, energy per inference per method, peak memory — over the
    windows intersecting ``since``..``until``, of one ``model`` and/or one ``release``.
``GET /devices/{id}/telemetry`` (scope ``read``)
    The device's newest batches, the upload-store status it last reported (``full`` or
    ``unwritable`` is flagged: predictions go on, telemetry may be merged or lost) and its numbers
    per bundle.
``GET /releases/{id}/performance`` (scope ``read``)
    Per device class: the release's bundles against the bundles they replaced on the same devices
    (p50/p95 latency, energy per inference and their ratios) — what the rollout's telemetry gates
    (``max_p95_latency_ratio``, ``max_energy_ratio``) judge.

A thin shell over :mod:`tinymlops.observe.ingest` and :mod:`tinymlops.observe.performance`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from tinymlops.errors import InvalidInputError
from tinymlops.observe.ingest import TelemetryIngest
from tinymlops.observe.performance import PerformanceViews
from tinymlops.observe.sealing import CONTENT_ENCODING, CONTENT_TYPE, SIGNATURE_HEADER
from tinymlops.registry.refs import NAME
from tinymlops.server.deps import CurrentDevice, DeviceIdPath, ReadKey, ReceivedDep, Services, ServicesDep
from tinymlops.server.error_responses import error_responses
from tinymlops.spec.telemetry import ENERGY_METHODS, STORE_STATUSES

router = APIRouter(tags=["telemetry"], responses=error_responses(400, 401, 403, 422))

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: a query parameter documented as an RFC 3339 date-time (parsed by the route: a clear 400 naming it)
_INSTANT: dict[str, Any] = {"max_length": 64, "json_schema_extra": {"format": "date-time"}}
SinceQuery = Annotated[str, Query(description="Windows ending at or after this instant (RFC 3339).", **_INSTANT)]
UntilQuery = Annotated[str, Query(description="Windows starting at or before this instant (RFC 3339).", **_INSTANT)]
ReleaseIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="16 lower-case hex digits")]
StoreStatusName = Literal["ok", "full", "unwritable"]
EnergyMethod = Literal["rapl", "model"]
assert set(STORE_STATUSES) == set(StoreStatusName.__args__)  # type: ignore[attr-defined]
assert set(ENERGY_METHODS) == set(EnergyMethod.__args__)  # type: ignore[attr-defined]


def _ingest(services: Services) -> TelemetryIngest:
    return TelemetryIngest(
        services.workspace.engine,
        targets=services.releases.repository.get,
        max_body_bytes=services.settings.max_body_bytes,
    )


def _views(services: Services) -> PerformanceViews:
    return PerformanceViews(services.workspace.engine)


# --- response models ---------------------------------------------------------------------------
class TelemetryAcceptedOut(BaseModel):
    batch_id: int
    digest: str = Field(description="SHA-256 of the canonical payload: the batch's identity.")
    windows: int = Field(description="Windows stored.")
    accepted_at: datetime


class EnergyOut(BaseModel):
    method: EnergyMethod = Field(description="rapl: measured; model: CPU time x the profile's power.")
    joules_per_inference: float
    inferences: int = Field(description="Inferences measured.")


class StatsOut(BaseModel):
    windows: int
    devices: int
    requests: int
    errors: int
    error_rate: float | None
    latency_samples: int = Field(description="Successful calls in the merged latency histogram.")
    p50_ms: float | None = Field(description="From the windows' latency buckets summed exactly (1% relative error).")
    p95_ms: float | None
    p99_ms: float | None
    energy_j_per_inference: float | None = Field(description="Inference-weighted over every method.")
    energy_method: Literal["rapl", "model", "mixed"] | None
    energy: list[EnergyOut] = Field(description="Per method.")
    peak_memory_bytes: int | None = Field(description="The largest peak of the windows.")


class ClassTelemetryOut(StatsOut):
    profile: str = Field(description="The device profile (device class) at ingestion.")
    ref: str | None = Field(description="The variant ref (None: a bundle no release published).")


class FleetTelemetryOut(BaseModel):
    since: str | None
    until: str | None
    model: str | None
    release: str | None
    classes: list[ClassTelemetryOut] = Field(description="Sorted by profile, then ref.")


class StoreStatusOut(BaseModel):
    status: StoreStatusName
    pending_windows: int
    merged_windows: int
    dropped_windows: int
    error: str | None


class LatestStoreOut(StoreStatusOut):
    batch_id: int = Field(description="The batch that carried it.")
    received_at: datetime


class BatchOut(BaseModel):
    id: int
    device_id: str
    digest: str
    signature: str = Field(description="The device's Ed25519 signature (hex), kept with the batch.")
    spec_version: str
    created_at: float = Field(description="The device's clock, seconds since the epoch.")
    received_at: datetime
    windows: int
    payload_bytes: int
    body_bytes: int
    store: StoreStatusOut | None


class BundleTelemetryOut(StatsOut):
    bundle_id: str
    ref: str | None


class DeviceTelemetryOut(BaseModel):
    device_id: str
    store: LatestStoreOut | None = Field(description="The upload-store status the device last reported.")
    store_flagged: bool = Field(description="The store was full or unwritable.")
    batches: list[BatchOut] = Field(description="Newest first.")
    bundles: list[BundleTelemetryOut]


class ClassComparisonOut(BaseModel):
    profile: str
    devices: int = Field(description="Devices of the class with a previous bundle.")
    latency_baseline: bool = Field(description="A device of the class has latency telemetry from the previous bundle.")
    new_latency_samples: int
    base_latency_samples: int
    new_p50_ms: float | None
    base_p50_ms: float | None
    new_p95_ms: float | None
    base_p95_ms: float | None
    energy_baseline: bool
    energy_method: EnergyMethod | None = Field(description="The one method both sides are compared on.")
    new_energy_samples: int
    base_energy_samples: int
    new_energy_j: float | None
    base_energy_j: float | None
    p50_ratio: float | None
    p95_ratio: float | None
    energy_ratio: float | None


class ReleasePerformanceOut(BaseModel):
    release_id: str
    classes: list[ClassComparisonOut] = Field(description="Per device class, sorted by profile.")


# --- routes --------------------------------------------------------------------------------------
_UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "A sealed telemetry batch: the canonical JSON (tinymlops.spec.telemetry), gzip-compressed.",
        "content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
    "parameters": [
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "enum": [CONTENT_ENCODING]},
        },
        {
            "name": SIGNATURE_HEADER,
            "in": "header",
            "required": True,
            "description": "The device's Ed25519 signature over the domain-separated payload, hex.",
            "schema": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
        },
    ],
}


@router.post(
    "/devices/me/telemetry",
    status_code=201,
    response_model=TelemetryAcceptedOut,
    responses=error_responses(409, 413),
    openapi_extra=_UPLOAD_OPENAPI,
)
def upload_telemetry(
    request: Request, received: ReceivedDep, device: CurrentDevice, services: ServicesDep
) -> TelemetryAcceptedOut:
    """Accept the calling device's sealed telemetry batch (all its windows, or none of them)."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding != CONTENT_ENCODING:
        shown = f"{encoding!r:.40}" if encoding else "none"
        raise InvalidInputError(
            f"a telemetry batch must be sent with Content-Encoding: {CONTENT_ENCODING} (got {shown})",
            content_encoding=encoding or None,
        )
    result = _ingest(services).ingest(device, received.body, request.headers.get(SIGNATURE_HEADER))
    for release_id in result.release_ids:  # telemetry gates judge on it: move the rollout along now
        services.releases.advance_quietly(release_id)
    return TelemetryAcceptedOut(**result.to_dict())


@router.get("/fleet/telemetry", response_model=FleetTelemetryOut)
def fleet_telemetry(
    services: ServicesDep,
    _key: ReadKey,
    since: SinceQuery = None,  # type: ignore[assignment]  # a plain date-time string, parsed below
    until: UntilQuery = None,  # type: ignore[assignment]
    model: Annotated[str | None, Query(pattern=NAME.pattern, description="Only this model's windows.")] = None,
    release: Annotated[
        str | None, Query(pattern=r"^[0-9a-f]{16}$", description="Only the windows of this release's bundles.")
    ] = None,
) -> FleetTelemetryOut:
    """Requests, errors, latency, energy and memory per device class and variant, from telemetry."""
    classes = _views(services).fleet(
        since=_epoch("since", since),
        until=_epoch("until", until),
        model=model,
        release_id=release,
    )
    return FleetTelemetryOut(
        since=since,
        until=until,
        model=model,
        release=release,
        classes=[ClassTelemetryOut(**c.to_dict()) for c in classes],
    )


def _epoch(name: str, text: str | None) -> float | None:
    """An RFC 3339 date-time as seconds since the epoch (any year: no platform ``timestamp()`` limits)."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"query parameter '{name}' must be an RFC 3339 date-time such as 2025-01-31T12:00:00Z, got {text!r:.60}"
        ) from None
    if at.tzinfo is None:
        raise InvalidInputError(f"query parameter '{name}' needs a time zone ({text!r:.60}; e.g. a trailing Z for UTC)")
    return (at - _EPOCH).total_seconds()


@router.get("/devices/{device_id}/telemetry", response_model=DeviceTelemetryOut, responses=error_responses(404))
def device_telemetry(
    device_id: DeviceIdPath,
    services: ServicesDep,
    _key: ReadKey,
    limit: Annotated[int, Query(ge=1, le=1000, description="Batches to list, newest first.")] = 20,
) -> DeviceTelemetryOut:
    """A device's recent batches, the upload-store status it last reported, its numbers per bundle."""
    return DeviceTelemetryOut(**_views(services).device(device_id, limit=limit).to_dict())


@router.get("/releases/{release_id}/performance", response_model=ReleasePerformanceOut, responses=error_responses(404))
def release_performance(release_id: ReleaseIdPath, services: ServicesDep, _key: ReadKey) -> ReleasePerformanceOut:
    """Per device class: the release's bundles against the bundles they replaced, from telemetry."""
    return ReleasePerformanceOut(**_views(services).release(release_id).to_dict())


__all__ = ["router"]
