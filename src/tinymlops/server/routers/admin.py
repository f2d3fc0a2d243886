"""Admin: API keys (create / list / revoke) and enrolment tokens (create / list); ``admin`` scope."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from tinymlops.access.service import NAME as KEY_NAME
from tinymlops.access.service import ApiKeyRecord
from tinymlops.devices.enrolment import DEFAULT_TOKEN_TTL_S, MAX_NOTE_CHARS, MAX_TAGS, MAX_TOKEN_TTL_S, TAG
from tinymlops.devices.records import EnrolmentTokenRecord
from tinymlops.server.deps import AdminKey, ServicesDep
from tinymlops.server.error_responses import error_responses
from tinymlops.server.routers.devices import PROFILE_NAME

router = APIRouter(prefix="/admin", tags=["admin"], responses=error_responses(400, 401, 403, 404, 413, 422))

KeyIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$", description="16 lower-case hex digits")]
ScopeName = Literal["read", "release", "admin"]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=KEY_NAME.pattern)
    scope: ScopeName


class ApiKeyOut(BaseModel):
    id: str
    name: str
    scope: ScopeName
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    status: Literal["active", "revoked"]

    @classmethod
    def of(cls, k: ApiKeyRecord) -> ApiKeyOut:
        return cls(
            id=k.id,
            name=k.name,
            scope=k.scope.value,
            created_by=k.created_by,
            created_at=k.created_at,
            last_used_at=k.last_used_at,
            revoked_at=k.revoked_at,
            status="active" if k.active else "revoked",
        )


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself, shown only this once.")


class EnrolmentTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: int = Field(DEFAULT_TOKEN_TTL_S, ge=1, le=MAX_TOKEN_TTL_S)
    profile: str | None = Field(None, pattern=PROFILE_NAME)
    tags: list[Annotated[str, Field(pattern=TAG.pattern)]] = Field(default_factory=list, max_length=MAX_TAGS)
    note: str = Field("", max_length=MAX_NOTE_CHARS)


class EnrolmentTokenOut(BaseModel):
    id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by: str | None
    profile: str | None
    tags: list[str]
    note: str
    status: Literal["unused", "used", "expired"]

    @classmethod
    def of(cls, t: EnrolmentTokenRecord, now: datetime) -> EnrolmentTokenOut:
        return cls(
            id=t.id,
            created_at=t.created_at,
            expires_at=t.expires_at,
            used_at=t.used_at,
            used_by=t.used_by,
            profile=t.profile_name,
            tags=list(t.tags),
            note=t.note,
            status=t.status(now),  # type: ignore[arg-type]
        )


class EnrolmentTokenCreated(EnrolmentTokenOut):
    token: str = Field(description="The token itself, shown only this once.")


@router.post("/api-keys", status_code=201, response_model=ApiKeyCreated)
def create_api_key(body: ApiKeyCreate, services: ServicesDep, key: AdminKey) -> ApiKeyCreated:
    record, secret = services.api_keys.create(body.name, body.scope, created_by=f"api-key:{key.id}")
    return ApiKeyCreated(**ApiKeyOut.of(record).model_dump(), key=secret)


@router.get("/api-keys", response_model=list[ApiKeyOut])
def list_api_keys(services: ServicesDep, _key: AdminKey) -> list[ApiKeyOut]:
    return [ApiKeyOut.of(k) for k in services.api_keys.list()]


@router.post("/api-keys/{key_id}/revoke", response_model=ApiKeyOut)
def revoke_api_key(key_id: KeyIdPath, services: ServicesDep, _key: AdminKey) -> ApiKeyOut:
    return ApiKeyOut.of(services.api_keys.revoke(key_id))


@router.post("/enrolment-tokens", status_code=201, response_model=EnrolmentTokenCreated)
def create_enrolment_token(body: EnrolmentTokenCreate, services: ServicesDep, _key: AdminKey) -> EnrolmentTokenCreated:
    record, secret = services.enrolment.create_token(
        ttl_s=body.ttl_s, profile=body.profile, tags=body.tags, note=body.note
    )
    return EnrolmentTokenCreated(**EnrolmentTokenOut.of(record, services.enrolment.now()).model_dump(), token=secret)


@router.get("/enrolment-tokens", response_model=list[EnrolmentTokenOut])
def list_enrolment_tokens(services: ServicesDep, _key: AdminKey) -> list[EnrolmentTokenOut]:
    now = services.enrolment.now()
    return [EnrolmentTokenOut.of(t, now) for t in services.enrolment.list_tokens()]
