"""hot_issue_decision and hot_issue_snapshot: supervisors' corrections of hot issues, and the cached ranking

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hot_issue_decision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("message_key", sa.String(length=64), nullable=False),
        sa.Column("other_key", sa.String(length=64), nullable=True),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["actor_id"], ["staff_user.id"], name=op.f("fk_hot_issue_decision_actor_id_staff_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hot_issue_decision")),
    )
    op.create_table(
        "hot_issue_snapshot",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("since", sa.Date(), nullable=False),
        sa.Column("until", sa.Date(), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("issues", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hot_issue_snapshot")),
    )
    op.create_index("ix_hot_issue_snapshot_since_until_id", "hot_issue_snapshot", ["since", "until", "id"])


def downgrade() -> None:
    op.drop_index("ix_hot_issue_snapshot_since_until_id", table_name="hot_issue_snapshot")
    op.drop_table("hot_issue_snapshot")
    op.drop_table("hot_issue_decision")
