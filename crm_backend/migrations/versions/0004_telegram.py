"""telegram: outbox, long callback payloads, message attachments

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telegram_callback_payload",
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_telegram_callback_payload")),
    )
    op.create_table(
        "telegram_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chat_id", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("keyboard", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telegram_outbox")),
    )
    with op.batch_alter_table("telegram_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_telegram_outbox_chat_id_status", ["chat_id", "status"], unique=False)
        batch_op.create_index("ix_telegram_outbox_status_next_attempt_at", ["status", "next_attempt_at"], unique=False)

    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attachment", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_column("attachment")

    with op.batch_alter_table("telegram_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_telegram_outbox_status_next_attempt_at")
        batch_op.drop_index("ix_telegram_outbox_chat_id_status")

    op.drop_table("telegram_outbox")
    op.drop_table("telegram_callback_payload")
