"""knowledge misses

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "knowledge_miss",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("nearest_entry_id", sa.Integer(), nullable=True),
        sa.Column("evidence", sa.Float(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversation.id"], name=op.f("fk_knowledge_miss_conversation_id_conversation")
        ),
        sa.ForeignKeyConstraint(
            ["nearest_entry_id"],
            ["knowledge_entry.id"],
            name=op.f("fk_knowledge_miss_nearest_entry_id_knowledge_entry"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_miss")),
    )
    with op.batch_alter_table("knowledge_miss", schema=None) as batch_op:
        batch_op.create_index("ix_knowledge_miss_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("knowledge_miss", schema=None) as batch_op:
        batch_op.drop_index("ix_knowledge_miss_created_at")

    op.drop_table("knowledge_miss")
