"""imported_message: message-board history imported as cases, one row per board message

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "imported_message",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("msg_id", sa.String(length=64), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("likes", sa.Integer(), nullable=True),
        sa.Column("dislikes", sa.Integer(), nullable=True),
        sa.Column("source_file", sa.String(length=200), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["service_case.id"], name=op.f("fk_imported_message_case_id_service_case")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imported_message")),
        sa.UniqueConstraint("case_id", name=op.f("uq_imported_message_case_id")),
        sa.UniqueConstraint("source", "msg_id", name=op.f("uq_imported_message_source")),
    )


def downgrade() -> None:
    op.drop_table("imported_message")
