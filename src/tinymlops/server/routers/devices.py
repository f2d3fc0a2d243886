"""Devices: enrol (with a one-time token), the calling device's own record and bearer token, and
the admin views (list, show, revoke)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from tinymlops.devices.records import DeviceRecord
from tinymlops.server.deps import (
    AdminKey,
    CurrentDevice,
    DeviceIdPath,
    ReadKey,
    ReceivedDep,
    ServicesDep,
    SignatureDep,
    SignedDevice,
    device_or_reader,
)
from tinymlops.server.error_responses import error_responses

#: 32 bytes in canonical base64: 42 free characters, one whose low two bits are zero, one '='
PUBLIC_KEY_B64 = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
ENROLMENT_TOKEN_PATTERN = r"^tme_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$"
PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"

router = APIRouter(prefix="/devices", tags=["devices"], responses=error_responses(400, 401, 403, 404, 413, 422))


class EnrolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(pattern=ENROLMENT_TOKEN_PATTERN, description="One-time enrolment token (tme_…).")
    signing_public: str = Field(pattern=PUBLIC_KEY_B64, description="Ed25519 public key: 32 bytes, canonical base64.")
    wrapping_public: str = Field(pattern=PUBLIC_KEY_B64, description="X25519 public key: 32 bytes, canonical base64.")
    profile: Annotated[str, Field(pattern=PROFILE_NAME)] | dict[str, Any] = Field(
        description="A profile name the server knows, or a whole device-profile document."
    )


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceOut(BaseModel):
    id: str
    signing_public: str
    wrapping_public: str
    wrapping_key_id: str
    profile_name: str
    profile: dict[str, Any]
    tags: list[str]
    status: Literal["active", "revoked"]
    enrolled_at: datetime
    last_seen: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, d: DeviceRecord) -> DeviceOut:
        return cls(
            id=d.id,
            signing_public=base64.b64encode(d.signing_public).decode("ascii"),
            wrapping_public=base64.b64encode(d.wrapping_public).decode("ascii"),
            wrapping_key_id=d.wrapping_key_id,
            profile_name=d.profile_name,
            profile=d.profile,
            tags=list(d.tags),
            status="active" if d.active else "revoked",
            enrolled_at=d.enrolled_at,
            last_seen=d.last_seen,
            revoked_at=d.revoked_at,
        )


class DeviceTokenOut(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime
    expires_in: int


@router.post("/enrol", status_code=201, response_model=DeviceOut, responses=error_responses(409))
def enrol(body: EnrolRequest, received: ReceivedDep, services: ServicesDep, _signature: SignatureDep) -> DeviceOut:
    """Enrol a device: a request signed by the key being enrolled, carrying a one-time token."""
    record = services.enrolment.enrol(
        token=body.token,
        signing_public=body.signing_public,
        wrapping_public=body.wrapping_public,
        profile=body.profile,
        request=received,
    )
    return DeviceOut.of(record)


@router.get("/me", response_model=DeviceOut)
def me(device: CurrentDevice) -> DeviceOut:
    """The calling device's own record."""
    return DeviceOut.of(device)


@router.post("/me/token", response_model=DeviceTokenOut)
def device_token(device: SignedDevice, services: ServicesDep, body: TokenRequest | None = None) -> DeviceTokenOut:
    """A short-lived bearer token for the calling device (needs a signed request)."""
    issued = services.devices.issue_token(device)
    return DeviceTokenOut(token=issued.secret, expires_at=issued.expires_at, expires_in=services.devices.token_ttl_s)


@router.get("", response_model=list[DeviceOut])
def list_devices(
    services: ServicesDep,
    _key: ReadKey,
    status: Annotated[Literal["active", "revoked"] | None, Query()] = None,
) -> list[DeviceOut]:
    return [DeviceOut.of(d) for d in services.devices.list(status=status)]


@router.get("/{device_id}", response_model=DeviceOut)
def show_device(
    device_id: DeviceIdPath, services: ServicesDep, _caller: Annotated[object, Depends(device_or_reader)]
) -> DeviceOut:
    """A device's record: for an API key with ``read`` scope, or for the device itself."""
    return DeviceOut.of(services.devices.get(device_id))


@router.post("/{device_id}/revoke", response_model=DeviceOut)
def revoke_device(device_id: DeviceIdPath, services: ServicesDep, _key: AdminKey) -> DeviceOut:
    """Revoke a device: its signatures and bearer tokens are refused from now on."""
    return DeviceOut.of(services.devices.revoke(device_id))
