"""Plain, typed views of the device tables handed to callers (no ORM object leaves a service)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

DEVICE_STATUSES = ("active", "revoked")


@dataclass(frozen=True)
class DeviceRecord:
    id: str
    signing_public: bytes
    wrapping_public: bytes
    wrapping_key_id: str
    profile_name: str
    profile: dict[str, Any]
    tags: tuple[str, ...]
    status: str
    enrolled_at: datetime
    last_seen: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class EnrolmentTokenRecord:
    id: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by: str | None
    profile_name: str | None
    tags: tuple[str, ...]
    note: str

    def status(self, now: datetime) -> str:
        """``used``, ``expired`` or ``unused``."""
        if self.used_at is not None:
            return "used"
        return "expired" if now >= self.expires_at else "unused"


@dataclass(frozen=True)
class IssuedSecret:
    """A secret shown exactly once (an enrolment token, a device bearer token): only its hash is kept."""

    id: str
    secret: str
    expires_at: datetime


__all__ = ["DEVICE_STATUSES", "DeviceRecord", "EnrolmentTokenRecord", "IssuedSecret"]
