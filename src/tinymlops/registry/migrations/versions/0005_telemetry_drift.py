"""observability: sealed telemetry batches, their windows, reference profiles, drift policies

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_policies",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )
    op.create_table(
        "reference_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=128), nullable=False),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("profile", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "version", name="uq_reference_profiles_model_version"),
    )
    op.create_table(
        "telemetry_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("spec_version", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("payload_bytes", sa.Integer(), nullable=False),
        sa.Column("body_bytes", sa.Integer(), nullable=False),
        sa.Column("store_status", sa.String(length=16), nullable=True),
        sa.Column("store_pending", sa.BigInteger(), nullable=True),
        sa.Column("store_merged", sa.BigInteger(), nullable=True),
        sa.Column("store_dropped", sa.BigInteger(), nullable=True),
        sa.Column("store_error", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "digest", name="uq_telemetry_batches_device_digest"),
    )
    with op.batch_alter_table("telemetry_batches", schema=None) as batch_op:
        batch_op.create_index("ix_telemetry_batches_received", ["received_at"], unique=False)

    op.create_table(
        "telemetry_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("profile_name", sa.String(length=128), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("bundle_id", sa.String(length=32), nullable=False),
        sa.Column("release_id", sa.String(length=16), nullable=True),
        sa.Column("ref", sa.String(length=400), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("window_end", sa.Float(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("energy_method", sa.String(length=16), nullable=True),
        sa.Column("energy_inferences", sa.BigInteger(), nullable=True),
        sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("performance", sa.JSON(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=True),
        sa.Column("privacy", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["batch_id"], ["telemetry_batches.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("telemetry_windows", schema=None) as batch_op:
        batch_op.create_index(
            "ix_telemetry_windows_device_bundle", ["device_id", "bundle_id", "window_start"], unique=False
        )
        batch_op.create_index("ix_telemetry_windows_model", ["model", "window_end"], unique=False)
        batch_op.create_index("ix_telemetry_windows_release", ["release_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("telemetry_windows", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetry_windows_release")
        batch_op.drop_index("ix_telemetry_windows_model")
        batch_op.drop_index("ix_telemetry_windows_device_bundle")

    op.drop_table("telemetry_windows")
    with op.batch_alter_table("telemetry_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetry_batches_received")

    op.drop_table("telemetry_batches")
    op.drop_table("reference_profiles")
    op.drop_table("drift_policies")
