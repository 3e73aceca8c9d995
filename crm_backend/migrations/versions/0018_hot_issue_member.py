"""hot_issue_member: the cases in each stored hot-issue ranking, as rows (the 热点问题相关 segment);
a partial index of the cases that name a business (the 企业 segment), so the dashboard's segment
counts do not read every description

Snapshots stored before this revision have no members until the job or ``hot-issues``
computes their window again.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


# As crm_backend.models.BUSINESS_PREDICATE was when this revision was written.
BUSINESS_PREDICATE = " OR ".join(f"description LIKE '%{word}%'" for word in ("企业", "公司", "个体户", "商户", "厂"))


def upgrade() -> None:
    op.create_table(
        "hot_issue_member",
        sa.Column("snapshot_id", sa.Integer(), nullable=False),
        sa.Column("case_number", sa.String(length=64), nullable=False),
        sa.Column("issue_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["snapshot_id"], ["hot_issue_snapshot.id"], name=op.f("fk_hot_issue_member_snapshot_id_hot_issue_snapshot")
        ),
        sa.PrimaryKeyConstraint("snapshot_id", "case_number", name=op.f("pk_hot_issue_member")),
    )
    op.create_index(
        "ix_service_case_business_citizen_id",
        "service_case",
        ["citizen_id"],
        sqlite_where=sa.text(BUSINESS_PREDICATE),
        postgresql_where=sa.text(BUSINESS_PREDICATE),
    )


def downgrade() -> None:
    op.drop_index("ix_service_case_business_citizen_id", table_name="service_case")
    op.drop_table("hot_issue_member")
