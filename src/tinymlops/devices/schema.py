"""The device tables, on the one metadata shared with the registry (Alembic migration 0002).

``devices`` (identity, profile, tags, status), ``enrolment_tokens`` (hash only, single use,
expiry, optionally bound to a profile and tags), ``device_nonces`` (the replay cache: every
(device, nonce) accepted within the clock window) and ``device_tokens`` (short-lived bearer
tokens, hash only).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.registry.schema import Base, utcnow


class DeviceRow(Base):
    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_status", "status"),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # key id of signing_public
    signing_public: Mapped[str] = mapped_column(String(64), unique=True)  # hex, Ed25519
    wrapping_public: Mapped[str] = mapped_column(String(64))  # hex, X25519
    wrapping_key_id: Mapped[str] = mapped_column(String(16))
    profile_name: Mapped[str] = mapped_column(String(128))
    profile: Mapped[dict[str, Any]] = mapped_column()
    tags: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | revoked
    enrolment_token_id: Mapped[str] = mapped_column(String(16))
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EnrolmentTokenRow(Base):
    __tablename__ = "enrolment_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    used_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    profile_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    note: Mapped[str] = mapped_column(Text, default="")


class DeviceNonceRow(Base):
    """One accepted signed request. Rows older than the clock window are pruned: a request that
    old is refused as stale anyway."""

    __tablename__ = "device_nonces"
    __table_args__ = (Index("ix_device_nonces_timestamp", "timestamp"),)

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    timestamp: Mapped[int] = mapped_column(BigInteger)


class DeviceTokenRow(Base):
    __tablename__ = "device_tokens"
    __table_args__ = (Index("ix_device_tokens_device", "device_id"),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
