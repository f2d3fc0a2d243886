"""The licensing tables (server half), on the one metadata shared with the registry (migration 0006).

``license_chains``       one per (device, model): the root and latest license, the queries issued,
                         and the server's position in the device's usage ledger — the current
                         branch's head and totals, the number of branches, every reservation
                         reported (all branches), the pairs of branches already flagged as clones
``licenses``             every license issued (root or top-up): its fields, its place in the chain,
                         the exact signed bytes, the issuer's signature and their digest
``license_revocations``  the signed revocation of a chain's latest license, when it was last sent to
                         the device, and when it was delivered (the last sending before a usage
                         report of the chain came in: ``revoked-use`` is judged from then)
``usage_reports``        every usage report accepted: its range, heads, counts, the device's
                         signature and the exact bytes it covers — empty for a report that brought
                         no new entry (a replay: the entries' signed words are in the reports that
                         brought them) — (unique digest per device: a replayed report is counted once)
``usage_entries``        every distinct ledger entry reported, by (chain, seq, hash) — both branches
                         of a fork — with the branch number and the branch's totals up to it
``licensing_flags``      what reconciliation raised (kind, severity, seq, detail, the report); a
                         flag raised again by the same device on the same chain within the
                         coalescing window is counted on its row (``repeats``, ``last_at``), not
                         added: a device repeating a refused or replayed report cannot fill the table

Times the server sets are epoch seconds (floats, the service's clock); times from licenses and
ledger entries are the integers they carry. Server side (SQLAlchemy): the edge closure never imports
this module.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from tinymlops.registry.schema import Base


class LicenseChainRow(Base):
    __tablename__ = "license_chains"
    __table_args__ = (UniqueConstraint("device_id", "model", name="uq_license_chains_device_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(128))
    root_license_id: Mapped[str] = mapped_column(String(32))
    latest_license_id: Mapped[str] = mapped_column(String(32))
    licensed: Mapped[int] = mapped_column(BigInteger)  # queries of every license issued on the chain
    created_at: Mapped[float] = mapped_column(Float)
    # the usage ledger as reported: the current branch's head (None: nothing reported) and totals
    head_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    head_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    current_branch: Mapped[int] = mapped_column(Integer, default=0)
    branches: Mapped[int] = mapped_column(Integer, default=0)
    branch_licensed: Mapped[int] = mapped_column(BigInteger, default=0)
    branch_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    branch_forfeited: Mapped[int] = mapped_column(BigInteger, default=0)
    used: Mapped[int] = mapped_column(BigInteger, default=0)  # reservations reported, every branch
    reports: Mapped[int] = mapped_column(Integer, default=0)
    last_report_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    clone_pairs: Mapped[list[Any]] = mapped_column(default=list)  # [[branch, branch], ...] flagged


class LicenseRow(Base):
    __tablename__ = "licenses"
    __table_args__ = (
        UniqueConstraint("chain_id", "position", name="uq_licenses_chain_position"),
        Index("ix_licenses_device_model", "device_id", "model"),
        Index("ix_licenses_created", "created_at"),
    )

    license_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("license_chains.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(Integer)  # 0: the root; n: the n-th top-up
    queries: Mapped[int] = mapped_column(BigInteger)
    valid_from: Mapped[int] = mapped_column(BigInteger)
    valid_until: Mapped[int] = mapped_column(BigInteger)
    min_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    previous_license_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    issued_at: Mapped[int] = mapped_column(BigInteger)
    issuer_key_id: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of data: what the ledger's entry commits to
    data: Mapped[bytes] = mapped_column(LargeBinary)  # the exact signed bytes
    signature: Mapped[str] = mapped_column(String(128))  # hex Ed25519 over LICENSE_DOMAIN + data
    created_at: Mapped[float] = mapped_column(Float)


class LicenseRevocationRow(Base):
    __tablename__ = "license_revocations"
    __table_args__ = (Index("ix_license_revocations_chain", "chain_id"),)

    license_id: Mapped[str] = mapped_column(ForeignKey("licenses.license_id", ondelete="CASCADE"), primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("license_chains.id", ondelete="CASCADE"))
    revoked_at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(200))
    digest: Mapped[str] = mapped_column(String(64))  # what the ledger's revoke entry commits to
    data: Mapped[bytes] = mapped_column(LargeBinary)
    signature: Mapped[str] = mapped_column(String(128))  # hex Ed25519 over REVOCATION_DOMAIN + data
    served_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # last sent, while not delivered
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # confirmed by a report


class UsageReportRow(Base):
    __tablename__ = "usage_reports"
    __table_args__ = (
        UniqueConstraint("device_id", "digest", name="uq_usage_reports_device_digest"),
        Index("ix_usage_reports_chain", "chain_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("license_chains.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of body
    license_id: Mapped[str] = mapped_column(String(32))  # the license in force at its last entry
    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    head_before: Mapped[str] = mapped_column(String(64))
    head_after: Mapped[str] = mapped_column(String(64))
    licensed: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger)
    block_remaining: Mapped[int] = mapped_column(BigInteger)
    new_entries: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)  # the device's clock
    received_at: Mapped[float] = mapped_column(Float)
    signature: Mapped[str] = mapped_column(String(128))  # hex Ed25519 over USAGE_REPORT_DOMAIN + body
    body: Mapped[bytes] = mapped_column(LargeBinary)  # b"": no new entry (a replay)


class UsageEntryRow(Base):
    __tablename__ = "usage_entries"
    __table_args__ = (UniqueConstraint("chain_id", "seq", "hash", name="uq_usage_entries_chain_seq_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(ForeignKey("license_chains.id", ondelete="CASCADE"))
    report_id: Mapped[int] = mapped_column(ForeignKey("usage_reports.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # license | reserve | revoke
    license_id: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[int] = mapped_column(BigInteger)  # the device's clock
    ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nonce: Mapped[str] = mapped_column(String(16))
    branch: Mapped[int] = mapped_column(Integer)
    # the branch's totals up to and including this entry (reconcile.Totals)
    licensed: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger)
    forfeited: Mapped[int] = mapped_column(BigInteger)
    in_force: Mapped[str | None] = mapped_column(String(32), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean)


class LicensingFlagRow(Base):
    __tablename__ = "licensing_flags"
    __table_args__ = (
        Index("ix_licensing_flags_device", "device_id", "created_at"),
        Index("ix_licensing_flags_chain", "chain_id", "created_at"),
        Index("ix_licensing_flags_kind", "kind", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int | None] = mapped_column(ForeignKey("license_chains.id", ondelete="CASCADE"), nullable=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    license_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(8))  # alert | info
    seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    detail: Mapped[str] = mapped_column(Text)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("usage_reports.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)  # the first time it was raised
    repeats: Mapped[int] = mapped_column(Integer, default=1)  # times raised (coalesced into this row)
    last_at: Mapped[float] = mapped_column(Float)  # the last time it was raised


__all__ = [
    "LicenseChainRow",
    "LicenseRevocationRow",
    "LicenseRow",
    "LicensingFlagRow",
    "UsageEntryRow",
    "UsageReportRow",
]
