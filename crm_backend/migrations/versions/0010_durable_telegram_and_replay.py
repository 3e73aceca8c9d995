"""durable Telegram updates, and citizen messages waiting for the engine

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telegram_update",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("update_id", sa.BigInteger(), nullable=False),
        sa.Column("chat_id", sa.String(length=32), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telegram_update")),
        sa.UniqueConstraint("update_id", name=op.f("uq_telegram_update_update_id")),
    )
    with op.batch_alter_table("telegram_update", schema=None) as batch_op:
        batch_op.create_index("ix_telegram_update_processed_at", ["processed_at"], unique=False)

    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.add_column(sa.Column("engine_pending_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("engine_input", sa.Text(), nullable=True))
        batch_op.create_index("ix_message_engine_pending_since", ["engine_pending_since"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("message", schema=None) as batch_op:
        batch_op.drop_index("ix_message_engine_pending_since")
        batch_op.drop_column("engine_input")
        batch_op.drop_column("engine_pending_since")

    with op.batch_alter_table("telegram_update", schema=None) as batch_op:
        batch_op.drop_index("ix_telegram_update_processed_at")

    op.drop_table("telegram_update")
