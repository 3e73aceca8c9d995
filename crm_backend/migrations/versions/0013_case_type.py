"""service_case.case_type: the 12345 type of every case, indexed for the case list's filter

Existing cases keep NULL, which the console shows as 未分类.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("service_case") as batch_op:
        batch_op.add_column(sa.Column("case_type", sa.String(length=8), nullable=True))
        batch_op.create_index("ix_service_case_case_type_id", ["case_type", "id"])


def downgrade() -> None:
    with op.batch_alter_table("service_case") as batch_op:
        batch_op.drop_index("ix_service_case_case_type_id")
        batch_op.drop_column("case_type")
