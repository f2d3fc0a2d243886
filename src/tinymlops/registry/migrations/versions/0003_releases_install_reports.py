"""releases, per-device release assignments, install reports, device deployments

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("requested", sa.String(length=400), nullable=False),
        sa.Column("explicit", sa.Boolean(), nullable=False),
        sa.Column("device_filter", sa.JSON(), nullable=True),
        sa.Column("tag_filter", sa.JSON(), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("snapshot_version", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.create_index("ix_releases_created_at", ["created_at"], unique=False)

    op.create_table(
        "device_deployments",
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("bundle_id", sa.String(length=32), nullable=True),
        sa.Column("release_id", sa.String(length=16), nullable=True),
        sa.Column("last_status", sa.String(length=16), nullable=False),
        sa.Column("last_reason", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "install_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("release_id", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("bundle_id", sa.String(length=32), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("slot", sa.String(length=8), nullable=True),
        sa.Column("active_bundle_id", sa.String(length=32), nullable=True),
        sa.Column("error", sa.String(length=128), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("reported_at", sa.Float(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("install_reports", schema=None) as batch_op:
        batch_op.create_index("ix_install_reports_device_bundle", ["device_id", "bundle_id"], unique=False)
        batch_op.create_index("ix_install_reports_release", ["release_id"], unique=False)

    op.create_table(
        "release_assignments",
        sa.Column("release_id", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("profile_name", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ref", sa.String(length=400), nullable=True),
        sa.Column("bundle_id", sa.String(length=32), nullable=True),
        sa.Column("bundle_sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("target_path", sa.String(length=255), nullable=True),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("release_id", "device_id"),
    )
    with op.batch_alter_table("release_assignments", schema=None) as batch_op:
        batch_op.create_index("ix_release_assignments_device", ["device_id", "bundle_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("release_assignments", schema=None) as batch_op:
        batch_op.drop_index("ix_release_assignments_device")
    op.drop_table("release_assignments")
    with op.batch_alter_table("install_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_install_reports_release")
        batch_op.drop_index("ix_install_reports_device_bundle")
    op.drop_table("install_reports")
    op.drop_table("device_deployments")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index("ix_releases_created_at")
    op.drop_table("releases")
