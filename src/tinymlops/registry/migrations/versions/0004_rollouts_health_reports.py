"""staged rollouts (state, transitions, per-device offers, assignment stages) and health reports

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ASSIGNMENT_COLUMNS = (
    ("stage", sa.Integer()),
    ("published_at", sa.DateTime(timezone=True)),
    ("prev_release_id", sa.String(length=16)),
    ("prev_bundle_id", sa.String(length=32)),
    ("prev_sha256", sa.String(length=64)),
    ("prev_file", sa.String(length=400)),
    ("withdrawn_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("profile_filter", sa.JSON(), nullable=True))
    with op.batch_alter_table("release_assignments", schema=None) as batch_op:
        for name, type_ in _ASSIGNMENT_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
    # releases published before staged rollouts went to every device at once, when they were created
    op.execute(
        "UPDATE release_assignments SET published_at = "
        "(SELECT created_at FROM releases WHERE releases.id = release_assignments.release_id) "
        "WHERE status = 'published'"
    )

    op.create_table(
        "rollouts",
        sa.Column("release_id", sa.String(length=16), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("stage_started_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_verdict", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("release_id"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index("ix_rollouts_status", ["status"], unique=False)

    op.create_table(
        "rollout_transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.String(length=16), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=False),
        sa.Column("from_stage", sa.Integer(), nullable=False),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("to_stage", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollout_transitions", schema=None) as batch_op:
        batch_op.create_index("ix_rollout_transitions_release", ["release_id", "id"], unique=False)

    op.create_table(
        "device_offers",
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("release_id", sa.String(length=16), nullable=True),
        sa.Column("bundle_id", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("file", sa.String(length=400), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )

    op.create_table(
        "health_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("profile_name", sa.String(length=128), nullable=False),
        sa.Column("release_id", sa.String(length=16), nullable=True),
        sa.Column("ref", sa.String(length=400), nullable=True),
        sa.Column("bundle_id", sa.String(length=32), nullable=False),
        sa.Column("window_start", sa.Float(), nullable=False),
        sa.Column("window_end", sa.Float(), nullable=False),
        sa.Column("predictions", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p95_ms", sa.Float(), nullable=True),
        sa.Column("p99_ms", sa.Float(), nullable=True),
        sa.Column("max_ms", sa.Float(), nullable=True),
        sa.Column("context", sa.JSON(), nullable=True),
        sa.Column("reported_at", sa.Float(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("health_reports", schema=None) as batch_op:
        batch_op.create_index("ix_health_reports_bundle", ["bundle_id", "device_id"], unique=False)
        batch_op.create_index("ix_health_reports_release", ["release_id"], unique=False)
        batch_op.create_index("ix_health_reports_received", ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("health_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_health_reports_received")
        batch_op.drop_index("ix_health_reports_release")
        batch_op.drop_index("ix_health_reports_bundle")
    op.drop_table("health_reports")
    op.drop_table("device_offers")
    with op.batch_alter_table("rollout_transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_rollout_transitions_release")
    op.drop_table("rollout_transitions")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index("ix_rollouts_status")
    op.drop_table("rollouts")
    with op.batch_alter_table("release_assignments", schema=None) as batch_op:
        for name, _ in reversed(_ASSIGNMENT_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("profile_filter")
