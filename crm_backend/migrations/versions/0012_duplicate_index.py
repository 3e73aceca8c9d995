"""service_case.duplicate_of_id indexed: a case page lists the repeats filed beside it

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("service_case") as batch_op:
        batch_op.create_index(batch_op.f("ix_service_case_duplicate_of_id"), ["duplicate_of_id"])


def downgrade() -> None:
    with op.batch_alter_table("service_case") as batch_op:
        batch_op.drop_index(batch_op.f("ix_service_case_duplicate_of_id"))
