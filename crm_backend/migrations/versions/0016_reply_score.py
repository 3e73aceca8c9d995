"""reply_score: 答复质量 of every staff reply and 办结 result, for the case page and department averages

Existing replies get their scores from ``python -m crm_backend score-replies``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reply_score",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("department_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("relevance", sa.Integer(), nullable=False),
        sa.Column("completeness", sa.Integer(), nullable=False),
        sa.Column("interpretability", sa.Integer(), nullable=False),
        sa.Column("timeliness", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("scorer_version", sa.String(length=16), nullable=False),
        sa.Column("replied_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["case_event.id"], name=op.f("fk_reply_score_event_id_case_event")),
        sa.ForeignKeyConstraint(["case_id"], ["service_case.id"], name=op.f("fk_reply_score_case_id_service_case")),
        sa.ForeignKeyConstraint(
            ["department_id"], ["department.id"], name=op.f("fk_reply_score_department_id_department")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reply_score")),
        sa.UniqueConstraint("event_id", name=op.f("uq_reply_score_event_id")),
    )
    op.create_index("ix_reply_score_case_id", "reply_score", ["case_id"])
    op.create_index("ix_reply_score_department_id_replied_at", "reply_score", ["department_id", "replied_at"])
    op.create_index("ix_reply_score_replied_at", "reply_score", ["replied_at"])


def downgrade() -> None:
    op.drop_index("ix_reply_score_replied_at", table_name="reply_score")
    op.drop_index("ix_reply_score_department_id_replied_at", table_name="reply_score")
    op.drop_index("ix_reply_score_case_id", table_name="reply_score")
    op.drop_table("reply_score")
