"""Prepaid query licenses: operators issue, top up, revoke and audit them; devices fetch theirs and
send usage reports.

Operator endpoints (an API key; money needs ``admin``, reading needs ``read``):

``POST /licenses`` (admin)
    Issue the root license of a (device, model) chain: ``queries``, and the validity as
    ``valid_days`` (from ``valid_from``, default now) or ``valid_until`` (RFC 3339); optional
    ``valid_from`` and a base-version range. 201 with the license. A chain that already exists is a
    409 naming its latest license (top that one up); an unknown device a 404, a revoked one a 409.
``POST /licenses/{id}/top-up`` (admin)
    A top-up of the chain's latest license (a revoked one included: that reinstates the chain):
    more ``queries`` and optionally a new end (``valid_days`` from now, or ``valid_until``). 201.
    A top-up of an older license of a chain is a 409 naming the latest.
``POST /licenses/{id}/revoke`` (admin)
    Revoke the chain the license belongs to (its latest license is the one revoked); the device
    learns it at its next contact. 200 with the revoked license.
``GET /licenses`` (read), ``GET /licenses/{id}`` (read)
    Licenses newest first (filters ``device``, ``model``, ``status``; the newest ``limit``, 1,000 by
    default); one license with its chain's position and usage and the chain's flags.
``GET /licensing/audit`` (read), ``GET /licensing/chains`` (read)
    What reconciliation flagged (rollback, clone, tamper, revoked-use, replay …), newest first; and
    every chain's acknowledged position, usage and counts.

Device endpoints (authenticated exactly like ``/devices/me/telemetry``: a signed request or a
device bearer token):

``GET /devices/me/licenses``
    The calling device's licenses in chain order (revoked ones included), the signed revocations and
    per model the server's acknowledged ledger position (``next_seq``, ``head``). Serving a
    revocation records that the device was told (for ``revoked-use`` detection).
``POST /devices/me/usage``
    The exact bytes of a usage report (``Content-Type: application/json``) and the device key's
    signature over them in ``X-Tinymlops-Report-Signature``. 201 with the range stored, the next
    sequence number the server waits for, the flags this report raised and the device's revoked
    licenses; 409 ``DuplicateReportError`` (already counted: carry on from ``next_seq``) or
    ``ReportGapError`` (send again from ``next_seq``); 400 for a malformed report or a bad
    signature (a bad signature or a broken chain from an authenticated device is flagged as
    ``tamper``).

Times go in as ISO 8601 / RFC 3339 date-times (a date alone is midnight, no offset is UTC:
:mod:`tinymlops.metering.validity`, as the CLI reads them) and come out as seconds since the epoch.
Rules JSON Schema cannot state (a date that does not parse, exactly one of ``valid_days`` /
``valid_until``, an end after the start and in the future, ``min_version`` ≤ ``max_version``, a top-up
of a license that ran out without a new end) are a 400 ``SpecError`` naming the field (``field``).
A thin shell over :class:`~tinymlops.metering.licensing.LicenseService`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from tinymlops.errors import SpecError, UsageError
from tinymlops.metering.license_signing import REPORT_SIGNATURE_HEADER
from tinymlops.metering.licensing import (
    CHAIN_STATUSES,
    LICENSE_STATUSES,
)
from tinymlops.metering.reconcile import FLAG_KINDS
from tinymlops.metering.validity import MAX_VALID_DAYS, license_time, validity_end
from tinymlops.server.deps import (
    DEVICE_ID_PATTERN,
    AdminKey,
    CurrentDevice,
    ReadKey,
    ReceivedDep,
    ServicesDep,
)
from tinymlops.server.error_responses import error_responses
from tinymlops.spec.license import MAX_EPOCH, MAX_QUERIES, MAX_REASON_CHARS, MODEL_NAME

LICENSE_ID_PATTERN = r"^[0-9a-f]{32}$"
SIGNATURE_PATTERN = r"^[0-9a-f]{128}$"
LicenseStatus = Literal["active", "superseded", "revoked"]
ChainStatus = Literal["active", "revoked"]
FlagKind = Literal["rollback", "clone", "tamper", "overuse", "revoked-use", "replay"]
assert set(LicenseStatus.__args__) == set(LICENSE_STATUSES)  # type: ignore[attr-defined]
assert set(ChainStatus.__args__) == set(CHAIN_STATUSES)  # type: ignore[attr-defined]
assert set(FlagKind.__args__) == set(FLAG_KINDS)  # type: ignore[attr-defined]

router = APIRouter(tags=["licenses"], responses=error_responses(400, 401, 403, 422))

LicenseIdPath = Annotated[str, Path(pattern=LICENSE_ID_PATTERN, description="32 lower-case hex digits")]
DeviceQuery = Annotated[
    str | None, Query(pattern=DEVICE_ID_PATTERN, description="Only this device's (16 lower-case hex digits).")
]
ModelQuery = Annotated[str | None, Query(pattern=MODEL_NAME.pattern, description="Only this model's.")]
#: an ISO 8601 date-time (read by metering.validity, which names the field in a clear 400)
Instant = Annotated[str, Field(max_length=64, json_schema_extra={"format": "date-time"})]


# --- request models --------------------------------------------------------------------------------
class IssueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="The enrolled device (16 lower-case hex digits).")
    model: str = Field(pattern=MODEL_NAME.pattern, description="The model name the queries are for.")
    queries: int = Field(ge=1, le=MAX_QUERIES, description="Prepaid queries.")
    valid_days: int | None = Field(
        default=None, ge=1, le=MAX_VALID_DAYS, description="Valid for this many days from valid_from (or now)."
    )
    valid_until: Instant | None = Field(default=None, description="The end (exclusive); instead of valid_days.")
    valid_from: Instant | None = Field(default=None, description="The start (default: now).")
    min_version: int | None = Field(default=None, ge=0, le=MAX_EPOCH, description="Lowest base version covered.")
    max_version: int | None = Field(default=None, ge=0, le=MAX_EPOCH, description="Highest base version covered.")


class TopUpRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: int = Field(ge=1, le=MAX_QUERIES, description="Queries added to the chain.")
    valid_days: int | None = Field(
        default=None, ge=1, le=MAX_VALID_DAYS, description="The chain is valid this many days from now."
    )
    valid_until: Instant | None = Field(
        default=None, description="The new end (exclusive). Neither: the topped-up license's end."
    )


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(
        min_length=1,
        max_length=MAX_REASON_CHARS,
        pattern=r"\S",
        description="Why (recorded, and told to the device in the signed revocation).",
    )


# --- response models -------------------------------------------------------------------------------
class LicenseOut(BaseModel):
    license_id: str
    device_id: str
    model: str
    queries: int = Field(description="This license's queries (a top-up's: the queries it adds).")
    valid_from: int = Field(description="Seconds since the epoch, inclusive.")
    valid_until: int = Field(description="Seconds since the epoch, exclusive.")
    min_version: int | None
    max_version: int | None
    previous_license_id: str | None = Field(description="The license this one tops up (None: a chain's root).")
    issued_at: float
    issuer_key_id: str
    status: LicenseStatus = Field(description="superseded: a later top-up is the chain's latest.")
    revoked_at: float | None
    revoke_reason: str | None
    root_license_id: str
    chain_licensed: int = Field(description="Licensed: the queries of every license of the chain.")
    chain_used: int = Field(
        description="Used: the queries reserved as the device reported them, on every branch of its ledger "
        "(what is billed; more than licensed when copies of a restored or cloned ledger both served)."
    )
    chain_remaining: int = Field(
        description="Remaining: what the current branch (the copy that reported last) may still reserve — licensed "
        "minus the reservations and forfeits on it, >= 0. On a forked chain used + remaining can exceed licensed."
    )
    last_report_at: float | None
    alerts: int = Field(description="Alert flags on the chain.")
    data: str = Field(description="The exact signed license bytes, base64.")
    signature: str = Field(description="The issuer's Ed25519 signature (hex).")


class ChainOut(BaseModel):
    device_id: str
    model: str
    root_license_id: str
    latest_license_id: str
    status: ChainStatus
    licensed: int = Field(description="Licensed: the queries of every license of the chain.")
    reserved: int = Field(description="Used: the queries reserved on every branch (its licenses' chain_used).")
    next_seq: int = Field(description="The first ledger entry not received on the device's current branch.")
    head: str | None = Field(description="Hash of entry next_seq - 1 (None when next_seq is 0).")
    branches: int = Field(description="Branches of the chain the server has seen (more than 1: a fork).")
    reports: int
    last_report_at: float | None
    alerts: int


class FlagOut(BaseModel):
    id: int
    device_id: str
    model: str | None
    license_id: str | None
    kind: str = Field(description="rollback, clone, tamper, revoked-use, replay, …")
    severity: Literal["alert", "info"]
    seq: int | None
    detail: str = Field(description="What the first raising found.")
    report_id: int | None
    created_at: float = Field(description="The first raising (seconds since the epoch).")
    repeats: int = Field(
        description="Times raised: the same kind again from the same device on the same chain within an hour of "
        "the last raising is counted here, not listed again."
    )
    last_at: float = Field(description="The last raising (seconds since the epoch).")


class LicenseDetailOut(LicenseOut):
    chain: ChainOut = Field(description="The chain's position and usage.")
    flags: list[FlagOut] = Field(description="The chain's flags, newest first.")


class DeviceLicenseOut(BaseModel):
    license_id: str
    model: str
    previous_license_id: str | None
    data: str = Field(description="The exact signed license bytes (standard base64, padded).")
    signature: str = Field(description="The issuer's Ed25519 signature (128 hex).")


class DeviceRevocationOut(BaseModel):
    license_id: str
    model: str
    data: str = Field(description="The exact signed revocation bytes (standard base64, padded).")
    signature: str


class DeviceChainOut(BaseModel):
    model: str
    next_seq: int = Field(description="The first ledger entry the server has not received on the current branch.")
    head: str | None = Field(description="Hash of entry next_seq - 1 (None when next_seq is 0).")


class DeviceLicensesOut(BaseModel):
    device_id: str
    licenses: list[DeviceLicenseOut] = Field(description="In chain order: the root first, then each top-up.")
    revocations: list[DeviceRevocationOut]
    chains: list[DeviceChainOut]


class ReportFlagOut(BaseModel):
    kind: str
    severity: Literal["alert", "info"]
    seq: int | None
    detail: str


class ReportAcceptedOut(BaseModel):
    report_id: int
    digest: str = Field(description="SHA-256 (hex) of the report's bytes: its identity.")
    model: str
    first_seq: int
    last_seq: int
    next_seq: int = Field(description="The first ledger entry the server waits for next.")
    flags: list[ReportFlagOut] = Field(description="What this report raised.")
    revoked: list[str] = Field(description="This device's revoked licenses.")


# --- operator routes -------------------------------------------------------------------------------
@contextmanager
def _rules_across_fields() -> Iterator[None]:
    """A schema-valid body refused by a rule JSON Schema cannot state (metering.validity's, or the
    service's own checks: a plain UsageError naming the field) is a 400 ``SpecError`` naming that
    field, the API's answer for such rules; a missing device or license (404) and a conflict (409)
    pass as they are."""
    try:
        yield
    except UsageError as exc:
        if type(exc) is not UsageError:
            raise
        raise SpecError(exc.message, **exc.details) from None


@router.post("/licenses", status_code=201, response_model=LicenseOut, responses=error_responses(404, 409))
def issue_license(body: IssueRequest, services: ServicesDep, _key: AdminKey) -> LicenseOut:
    """Issue the root license of a device's chain for a model (a chain that exists: top it up)."""
    with _rules_across_fields():
        start = None if body.valid_from is None else license_time(body.valid_from, "valid_from")
        until = validity_end(
            days=body.valid_days, until=body.valid_until, start=start, now=services.clock(), required=True
        )
        assert until is not None
        view = services.licenses.issue(
            device_id=body.device_id,
            model=body.model,
            queries=body.queries,
            valid_until=until,
            valid_from=start,
            min_version=body.min_version,
            max_version=body.max_version,
        )
    return LicenseOut(**view.to_dict())


@router.post(
    "/licenses/{license_id}/top-up", status_code=201, response_model=LicenseOut, responses=error_responses(404, 409)
)
def top_up_license(license_id: LicenseIdPath, body: TopUpRequest, services: ServicesDep, _key: AdminKey) -> LicenseOut:
    """Add queries to a chain (and optionally move its end): a new license topping up the latest."""
    with _rules_across_fields():
        until = validity_end(
            days=body.valid_days, until=body.valid_until, start=None, now=services.clock(), required=False
        )
        view = services.licenses.top_up(license_id, queries=body.queries, valid_until=until)
    return LicenseOut(**view.to_dict())


@router.post("/licenses/{license_id}/revoke", response_model=LicenseOut, responses=error_responses(404, 409))
def revoke_license(license_id: LicenseIdPath, body: RevokeRequest, services: ServicesDep, _key: AdminKey) -> LicenseOut:
    """Revoke the license's chain; the device refuses metered calls once it has heard of it."""
    with _rules_across_fields():
        view = services.licenses.revoke(license_id, reason=body.reason.strip())
    return LicenseOut(**view.to_dict())


@router.get("/licenses", response_model=list[LicenseOut])
def list_licenses(
    services: ServicesDep,
    _key: ReadKey,
    device: DeviceQuery = None,
    model: ModelQuery = None,
    status: Annotated[LicenseStatus | None, Query(description="Only licenses in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Licenses to list, newest first.")] = 1000,
) -> list[LicenseOut]:
    """Licenses, newest first (the newest 1,000 unless ``limit`` says otherwise)."""
    views = services.licenses.list(device_id=device, model=model, status=status, limit=limit)
    return [LicenseOut(**v.to_dict()) for v in views]


#: the most flags a license's detail carries (the audit endpoint pages through more)
DETAIL_FLAGS = 200


@router.get("/licenses/{license_id}", response_model=LicenseDetailOut, responses=error_responses(404))
def show_license(license_id: LicenseIdPath, services: ServicesDep, _key: ReadKey) -> LicenseDetailOut:
    """One license, its chain's position and usage, and the chain's flags."""
    licenses = services.licenses
    return LicenseDetailOut(
        **licenses.get(license_id).to_dict(),
        chain=ChainOut(**licenses.chain(license_id).to_dict()),
        flags=[FlagOut(**f.to_dict()) for f in licenses.audit(license_id=license_id, limit=DETAIL_FLAGS)],
    )


@router.get("/licensing/audit", response_model=list[FlagOut], responses=error_responses(404))
def audit(
    services: ServicesDep,
    _key: ReadKey,
    device: DeviceQuery = None,
    kind: Annotated[FlagKind | None, Query(description="Only flags of this kind.")] = None,
    license: Annotated[
        str | None,
        Query(pattern=LICENSE_ID_PATTERN, description="Only the flags of this license's chain (404: none such)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Flags to list, newest first.")] = 100,
) -> list[FlagOut]:
    """What reconciliation of the usage reports flagged, newest first."""
    flags = services.licenses.audit(device_id=device, kind=kind, license_id=license, limit=limit)
    return [FlagOut(**f.to_dict()) for f in flags]


@router.get("/licensing/chains", response_model=list[ChainOut])
def chains(services: ServicesDep, _key: ReadKey, device: DeviceQuery = None) -> list[ChainOut]:
    """Every (device, model) chain: its latest license, usage, acknowledged position and flags."""
    return [ChainOut(**c.to_dict()) for c in services.licenses.chains(device_id=device)]


# --- device routes ---------------------------------------------------------------------------------
@router.get("/devices/me/licenses", response_model=DeviceLicensesOut)
def my_licenses(device: CurrentDevice, services: ServicesDep, model: ModelQuery = None) -> DeviceLicensesOut:
    """The calling device's licenses, revocations and acknowledged ledger positions."""
    return DeviceLicensesOut(**services.licenses.for_device(device.id, model=model).to_dict())


_USAGE_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "A usage report's exact bytes (tinymlops.spec.usage_report), as the device signed them.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "parameters": [
        {
            "name": REPORT_SIGNATURE_HEADER,
            "in": "header",
            "required": True,
            "description": "The device key's Ed25519 signature over the domain-separated report bytes, hex.",
            "schema": {"type": "string", "pattern": SIGNATURE_PATTERN},
        },
    ],
}


@router.post(
    "/devices/me/usage",
    status_code=201,
    response_model=ReportAcceptedOut,
    responses=error_responses(409, 413),
    openapi_extra=_USAGE_OPENAPI,
)
def report_usage(
    request: Request, received: ReceivedDep, device: CurrentDevice, services: ServicesDep
) -> ReportAcceptedOut:
    """Accept the calling device's signed usage report (all its entries, or none of them)."""
    result = services.licenses.ingest_report(device, received.body, request.headers.get(REPORT_SIGNATURE_HEADER))
    return ReportAcceptedOut(**result.to_dict())


__all__ = ["router"]
