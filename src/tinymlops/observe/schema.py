"""The observability tables (server half), on the one metadata shared with the registry (migration 0005).

``telemetry_batches``   every sealed batch accepted (:mod:`tinymlops.observe.sealing`): who sent it,
                        its digest (unique per device: a replayed or retried batch is merged once),
                        its signature (kept, so where a batch came from can be shown later), sizes,
                        and the device's upload-store status it carried
``telemetry_windows``   one row per window of an accepted batch: what the device ran (bundle, and —
                        resolved at ingestion — the release, variant ref, model name and base
                        version), the device's profile and tags at ingestion (its cohorts then: a
                        device re-tagged later does not rewrite history), the window's span on the
                        device's clock, the performance numbers queries filter and chart on, and the
                        window's input profile and privacy section as the spec's JSON
``reference_profiles``  per model base version, the reference profile computed from its eval (or
                        training) data at registration (:mod:`tinymlops.observe.reference`)
``drift_policies``      per model, the drift policy a user set (thresholds, tests, correction)

Server side (SQLAlchemy): the edge closure never imports this module.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.registry.schema import Base, utcnow


class TelemetryBatchRow(Base):
    __tablename__ = "telemetry_batches"
    __table_args__ = (
        UniqueConstraint("device_id", "digest", name="uq_telemetry_batches_device_digest"),
        Index("ix_telemetry_batches_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of the canonical payload
    signature: Mapped[str] = mapped_column(String(128))  # hex Ed25519 over DOMAIN + payload
    spec_version: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)  # the device's clock, seconds
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    windows: Mapped[int] = mapped_column(Integer)
    payload_bytes: Mapped[int] = mapped_column(Integer)
    body_bytes: Mapped[int] = mapped_column(Integer)
    store_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    store_pending: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    store_merged: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    store_dropped: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    store_error: Mapped[str | None] = mapped_column(String(200), nullable=True)


class TelemetryWindowRow(Base):
    __tablename__ = "telemetry_windows"
    __table_args__ = (
        Index("ix_telemetry_windows_model", "model", "window_end"),
        Index("ix_telemetry_windows_device_bundle", "device_id", "bundle_id", "window_start"),
        Index("ix_telemetry_windows_release", "release_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("telemetry_batches.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    profile_name: Mapped[str] = mapped_column(String(128), default="")
    tags: Mapped[list[Any]] = mapped_column(default=list)
    bundle_id: Mapped[str] = mapped_column(String(32))
    release_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ref: Mapped[str | None] = mapped_column(String(400), nullable=True)  # the variant ref the bundle carries
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the model name
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the base version
    window_start: Mapped[float] = mapped_column(Float)  # the device's clock, seconds since the epoch
    window_end: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)  # joules per inference
    energy_method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    energy_inferences: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    rows: Mapped[int] = mapped_column(BigInteger, default=0)  # input rows profiled (0: no profile)
    performance: Mapped[dict[str, Any]] = mapped_column()  # the spec's performance section
    inputs: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)  # the spec's inputs section
    privacy: Mapped[dict[str, Any]] = mapped_column()  # the spec's privacy section
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReferenceProfileRow(Base):
    __tablename__ = "reference_profiles"
    __table_args__ = (UniqueConstraint("model", "version", name="uq_reference_profiles_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(String(128))  # the registered dataset it was computed from
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column()  # k, max_features, projection seed/dims, classes
    profile: Mapped[dict[str, Any]] = mapped_column()  # ReferenceProfile.to_dict()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DriftPolicyRow(Base):
    __tablename__ = "drift_policies"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    policy: Mapped[dict[str, Any]] = mapped_column()
    updated_by: Mapped[str] = mapped_column(String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


__all__ = ["DriftPolicyRow", "ReferenceProfileRow", "TelemetryBatchRow", "TelemetryWindowRow"]
