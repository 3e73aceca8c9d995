"""Indexes for the dashboard: the period's cases, conversations and messages by time

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("service_case") as batch_op:
        batch_op.create_index("ix_service_case_created_at", ["created_at"])
        # 重复投诉: an earlier case at the same place in the same category.
        batch_op.create_index("ix_service_case_category_location_created_at", ["category", "location", "created_at"])
        batch_op.create_index("ix_service_case_citizen_id_created_at", ["citizen_id", "created_at"])
        # The bot's figures: did a conversation lead to a case, was an answer in it marked helpful.
        batch_op.create_index("ix_service_case_conversation_id", ["conversation_id"])
    with op.batch_alter_table("knowledge_feedback") as batch_op:
        batch_op.create_index("ix_knowledge_feedback_conversation_id", ["conversation_id"])
    with op.batch_alter_table("conversation") as batch_op:
        batch_op.create_index("ix_conversation_started_at", ["started_at"])
    with op.batch_alter_table("message") as batch_op:
        batch_op.create_index("ix_message_created_at", ["created_at"])


def downgrade() -> None:
    with op.batch_alter_table("message") as batch_op:
        batch_op.drop_index("ix_message_created_at")
    with op.batch_alter_table("conversation") as batch_op:
        batch_op.drop_index("ix_conversation_started_at")
    with op.batch_alter_table("knowledge_feedback") as batch_op:
        batch_op.drop_index("ix_knowledge_feedback_conversation_id")
    with op.batch_alter_table("service_case") as batch_op:
        batch_op.drop_index("ix_service_case_conversation_id")
        batch_op.drop_index("ix_service_case_citizen_id_created_at")
        batch_op.drop_index("ix_service_case_category_location_created_at")
        batch_op.drop_index("ix_service_case_created_at")
