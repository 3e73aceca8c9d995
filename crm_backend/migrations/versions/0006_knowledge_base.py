"""knowledge base

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "knowledge_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=80), nullable=False),
        sa.Column("title", sa.String(length=100), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("department", sa.String(length=100), nullable=False),
        sa.Column("questions", sa.JSON(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("follow_ups", sa.JSON(), nullable=False),
        sa.Column("last_reviewed", sa.Date(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["updated_by_id"], ["staff_user.id"], name=op.f("fk_knowledge_entry_updated_by_id_staff_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_entry")),
        sa.UniqueConstraint("slug", name=op.f("uq_knowledge_entry_slug")),
    )
    op.create_table(
        "knowledge_entry_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("changed_fields", sa.JSON(), nullable=False),
        sa.Column("changed_by_id", sa.Integer(), nullable=True),
        sa.Column("changed_by", sa.String(length=64), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["changed_by_id"], ["staff_user.id"], name=op.f("fk_knowledge_entry_version_changed_by_id_staff_user")
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["knowledge_entry.id"], name=op.f("fk_knowledge_entry_version_entry_id_knowledge_entry")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_entry_version")),
        sa.UniqueConstraint("entry_id", "version", name=op.f("uq_knowledge_entry_version_entry_id")),
    )
    with op.batch_alter_table("knowledge_entry_version", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_knowledge_entry_version_entry_id"), ["entry_id"], unique=False)

    op.create_table(
        "knowledge_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("helpful", sa.Boolean(), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"], ["conversation.id"], name=op.f("fk_knowledge_feedback_conversation_id_conversation")
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"], ["knowledge_entry.id"], name=op.f("fk_knowledge_feedback_entry_id_knowledge_entry")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_feedback")),
    )
    with op.batch_alter_table("knowledge_feedback", schema=None) as batch_op:
        batch_op.create_index("ix_knowledge_feedback_entry_id_helpful", ["entry_id", "helpful"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("knowledge_feedback", schema=None) as batch_op:
        batch_op.drop_index("ix_knowledge_feedback_entry_id_helpful")

    op.drop_table("knowledge_feedback")
    with op.batch_alter_table("knowledge_entry_version", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_knowledge_entry_version_entry_id"))

    op.drop_table("knowledge_entry_version")
    op.drop_table("knowledge_entry")
