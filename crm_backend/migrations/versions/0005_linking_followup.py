"""linking, notices, follow-up

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "link_code",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=6), nullable=False),
        sa.Column("citizen_id", sa.Integer(), nullable=False),
        sa.Column("identity_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by_identity_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["citizen_id"], ["citizen.id"], name=op.f("fk_link_code_citizen_id_citizen")),
        sa.ForeignKeyConstraint(
            ["identity_id"], ["channel_identity.id"], name=op.f("fk_link_code_identity_id_channel_identity")
        ),
        sa.ForeignKeyConstraint(
            ["used_by_identity_id"],
            ["channel_identity.id"],
            name=op.f("fk_link_code_used_by_identity_id_channel_identity"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link_code")),
    )
    with op.batch_alter_table("link_code", schema=None) as batch_op:
        batch_op.create_index("ix_link_code_code_expires_at", ["code", "expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_link_code_identity_id"), ["identity_id"], unique=False)

    op.create_table(
        "satisfaction",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["service_case.id"], name=op.f("fk_satisfaction_case_id_service_case")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_satisfaction")),
    )
    with op.batch_alter_table("satisfaction", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_satisfaction_case_id"), ["case_id"], unique=False)

    with op.batch_alter_table("citizen", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notices_enabled", sa.Boolean(), nullable=False, server_default=sa.true()))

    with op.batch_alter_table("service_case", schema=None) as batch_op:
        batch_op.add_column(sa.Column("followup_asked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("followup_reminded_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("service_case", schema=None) as batch_op:
        batch_op.drop_column("followup_reminded_at")
        batch_op.drop_column("followup_asked_at")

    with op.batch_alter_table("citizen", schema=None) as batch_op:
        batch_op.drop_column("notices_enabled")

    with op.batch_alter_table("satisfaction", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_satisfaction_case_id"))

    op.drop_table("satisfaction")
    with op.batch_alter_table("link_code", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_link_code_identity_id"))
        batch_op.drop_index("ix_link_code_code_expires_at")

    op.drop_table("link_code")
