"""The release tables, on the one metadata shared with the registry (Alembic migration 0003).

``releases``             one row per ``create_release``: what was asked for (model or ref, device
                         and tag filters, urgency), by whom, and the TUF snapshot it was committed in
``release_assignments``  one row per (release, device): the variant chosen for it and why, the bundle
                         built (id, file SHA-256, size, target path), or why the device was skipped
``install_reports``      every install report an agent sent (append-only)
``device_deployments``   per device: the bundle it last reported running and its last status

Added by migration 0004 (staged rollouts and device health):

``rollouts``             one row per staged release: its plan and the state machine's state
                         (:mod:`tinymlops.release.rollout`), with a version for compare-and-set
``rollout_transitions``  every transition of a rollout (who or what, why, when; the verdict behind it)
``device_offers``        per device: what the update repository offers it now (release, bundle, file)
``health_reports``       every health report an agent sent about the bundle it runs (append-only)

``release_assignments`` gained the stage a device joins at, when its bundle was published, what the
repository offered the device just before (the bundle a rollback offers again) and when it was
withdrawn.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.registry.schema import Base, utcnow


class ReleaseRow(Base):
    __tablename__ = "releases"
    __table_args__ = (Index("ix_releases_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    requested: Mapped[str] = mapped_column(String(400))  # the model or ref as given
    explicit: Mapped[bool] = mapped_column(Boolean)  # a full variant ref (no selection)
    device_filter: Mapped[list[Any] | None] = mapped_column(nullable=True)
    tag_filter: Mapped[list[Any]] = mapped_column(default=list)
    profile_filter: Mapped[list[Any] | None] = mapped_column(nullable=True)  # 0004
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # published | empty
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    snapshot_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ReleaseAssignmentRow(Base):
    __tablename__ = "release_assignments"
    __table_args__ = (Index("ix_release_assignments_device", "device_id", "bundle_id"),)

    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    profile_name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # published | skipped
    reason: Mapped[str] = mapped_column(Text, default="")
    ref: Mapped[str | None] = mapped_column(String(400), nullable=True)
    bundle_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    target_path: Mapped[str | None] = mapped_column(String(255), nullable=True)
    selection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # 0004: staged rollouts
    stage: Mapped[int | None] = mapped_column(Integer, nullable=True)  # first stage including the device
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    prev_release_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    prev_bundle_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prev_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prev_file: Mapped[str | None] = mapped_column(String(400), nullable=True)  # workspace-relative bundle file
    withdrawn_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class InstallReportRow(Base):
    __tablename__ = "install_reports"
    __table_args__ = (
        Index("ix_install_reports_device_bundle", "device_id", "bundle_id"),
        Index("ix_install_reports_release", "release_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    release_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    bundle_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    slot: Mapped[str | None] = mapped_column(String(8), nullable=True)
    active_bundle_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(String(128), nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reported_at: Mapped[float] = mapped_column(Float, default=0.0)  # the device's clock, seconds
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeviceDeploymentRow(Base):
    __tablename__ = "device_deployments"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    bundle_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    release_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    last_status: Mapped[str] = mapped_column(String(16))
    last_reason: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RolloutRow(Base):
    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_status", "status"),)

    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True)
    plan: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16))
    stage: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: bumped by every change: a writer that read an older version lost a race and starts again
    version: Mapped[int] = mapped_column(Integer, default=1)
    #: the last verdict (decision, reason, checks) and when it was judged, for status pages
    last_verdict: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)


class RolloutTransitionRow(Base):
    __tablename__ = "rollout_transitions"
    __table_args__ = (Index("ix_rollout_transitions_release", "release_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"))
    from_status: Mapped[str] = mapped_column(String(16))
    from_stage: Mapped[int] = mapped_column(Integer)
    to_status: Mapped[str] = mapped_column(String(16))
    to_stage: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[float] = mapped_column(Float)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)


class DeviceOfferRow(Base):
    __tablename__ = "device_offers"

    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True)
    release_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    bundle_id: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    file: Mapped[str] = mapped_column(String(400))  # workspace-relative path of the bundle file
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HealthReportRow(Base):
    __tablename__ = "health_reports"
    __table_args__ = (
        Index("ix_health_reports_bundle", "bundle_id", "device_id"),
        Index("ix_health_reports_release", "release_id"),
        Index("ix_health_reports_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    profile_name: Mapped[str] = mapped_column(String(128), default="")
    release_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ref: Mapped[str | None] = mapped_column(String(400), nullable=True)
    bundle_id: Mapped[str] = mapped_column(String(32))
    window_start: Mapped[float] = mapped_column(Float)
    window_end: Mapped[float] = mapped_column(Float)
    predictions: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    context: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    reported_at: Mapped[float] = mapped_column(Float, default=0.0)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
