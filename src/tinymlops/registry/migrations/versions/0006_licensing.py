"""licensing: license chains, licenses, revocations, usage reports, usage ledger entries, flags

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "license_chains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("root_license_id", sa.String(length=32), nullable=False),
        sa.Column("latest_license_id", sa.String(length=32), nullable=False),
        sa.Column("licensed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=True),
        sa.Column("head_hash", sa.String(length=64), nullable=True),
        sa.Column("current_branch", sa.Integer(), nullable=False),
        sa.Column("branches", sa.Integer(), nullable=False),
        sa.Column("branch_licensed", sa.BigInteger(), nullable=False),
        sa.Column("branch_reserved", sa.BigInteger(), nullable=False),
        sa.Column("branch_forfeited", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("last_report_at", sa.Float(), nullable=True),
        sa.Column("clone_pairs", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "model", name="uq_license_chains_device_model"),
    )
    op.create_table(
        "licenses",
        sa.Column("license_id", sa.String(length=32), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("queries", sa.BigInteger(), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=False),
        sa.Column("min_version", sa.BigInteger(), nullable=True),
        sa.Column("max_version", sa.BigInteger(), nullable=True),
        sa.Column("previous_license_id", sa.String(length=32), nullable=True),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("issuer_key_id", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["chain_id"], ["license_chains.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("license_id"),
        sa.UniqueConstraint("chain_id", "position", name="uq_licenses_chain_position"),
    )
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.create_index("ix_licenses_created", ["created_at"], unique=False)
        batch_op.create_index("ix_licenses_device_model", ["device_id", "model"], unique=False)

    op.create_table(
        "usage_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("license_id", sa.String(length=32), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_before", sa.String(length=64), nullable=False),
        sa.Column("head_after", sa.String(length=64), nullable=False),
        sa.Column("licensed", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("block_remaining", sa.BigInteger(), nullable=False),
        sa.Column("new_entries", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["chain_id"], ["license_chains.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "digest", name="uq_usage_reports_device_digest"),
    )
    with op.batch_alter_table("usage_reports", schema=None) as batch_op:
        batch_op.create_index("ix_usage_reports_chain", ["chain_id", "received_at"], unique=False)

    op.create_table(
        "license_revocations",
        sa.Column("license_id", sa.String(length=32), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("served_at", sa.Float(), nullable=True),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["chain_id"], ["license_chains.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["license_id"], ["licenses.license_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("license_id"),
    )
    with op.batch_alter_table("license_revocations", schema=None) as batch_op:
        batch_op.create_index("ix_license_revocations_chain", ["chain_id"], unique=False)

    op.create_table(
        "licensing_flags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=True),
        sa.Column("device_id", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("license_id", sa.String(length=32), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=8), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["chain_id"], ["license_chains.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["report_id"], ["usage_reports.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("licensing_flags", schema=None) as batch_op:
        batch_op.create_index("ix_licensing_flags_chain", ["chain_id", "created_at"], unique=False)
        batch_op.create_index("ix_licensing_flags_device", ["device_id", "created_at"], unique=False)
        batch_op.create_index("ix_licensing_flags_kind", ["kind", "created_at"], unique=False)

    op.create_table(
        "usage_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("license_id", sa.String(length=32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("ref", sa.String(length=64), nullable=True),
        sa.Column("nonce", sa.String(length=16), nullable=False),
        sa.Column("branch", sa.Integer(), nullable=False),
        sa.Column("licensed", sa.BigInteger(), nullable=False),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("forfeited", sa.BigInteger(), nullable=False),
        sa.Column("in_force", sa.String(length=32), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["chain_id"], ["license_chains.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["report_id"], ["usage_reports.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("chain_id", "seq", "hash", name="uq_usage_entries_chain_seq_hash"),
    )


def downgrade() -> None:
    op.drop_table("usage_entries")
    with op.batch_alter_table("licensing_flags", schema=None) as batch_op:
        batch_op.drop_index("ix_licensing_flags_kind")
        batch_op.drop_index("ix_licensing_flags_device")
        batch_op.drop_index("ix_licensing_flags_chain")

    op.drop_table("licensing_flags")
    with op.batch_alter_table("license_revocations", schema=None) as batch_op:
        batch_op.drop_index("ix_license_revocations_chain")

    op.drop_table("license_revocations")
    with op.batch_alter_table("usage_reports", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_reports_chain")

    op.drop_table("usage_reports")
    with op.batch_alter_table("licenses", schema=None) as batch_op:
        batch_op.drop_index("ix_licenses_device_model")
        batch_op.drop_index("ix_licenses_created")

    op.drop_table("licenses")
    op.drop_table("license_chains")
