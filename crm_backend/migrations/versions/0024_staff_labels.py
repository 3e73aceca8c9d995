"""Staff category decisions kept as training data, and the category model's versions

staff_label: one row per category a person decided for a case (派单 from the manual queue, 改派,
a correction, a category chosen at filing), with the text the model saw (encrypted) and the
model's own answer beside it.
category_model_version: every trained category model with what it was trained on, its figures,
its status (candidate, current, retired, rejected) and the artifact itself, so every app process
loads the current model from the database. The bundled model is registered by the app at start
when the table is empty (a migration does not load model files).

Revision ID: 0024_staff_labels
Revises: 0023_open311
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0024_staff_labels"
down_revision = "0023_open311"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staff_label",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("service_case.id"), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("model_category", sa.String(length=32), nullable=True),
        sa.Column("model_confidence", sa.Float(), nullable=True),
        sa.Column("staff_category", sa.String(length=32), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("actor_id", sa.Integer(), sa.ForeignKey("staff_user.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_staff_label_case_id", "staff_label", ["case_id"])
    op.create_index("ix_staff_label_created_at", "staff_label", ["created_at"])
    op.create_table(
        "category_model_version",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("shipped_rows", sa.Integer(), nullable=False),
        sa.Column("staff_labels", sa.Integer(), nullable=False),
        sa.Column("last_label_id", sa.Integer(), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("artifact", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=64), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_category_model_version_status", "category_model_version", ["status"])


def downgrade() -> None:
    op.drop_index("ix_category_model_version_status", table_name="category_model_version")
    op.drop_table("category_model_version")
    op.drop_index("ix_staff_label_created_at", table_name="staff_label")
    op.drop_index("ix_staff_label_case_id", table_name="staff_label")
    op.drop_table("staff_label")
