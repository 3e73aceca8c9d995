"""service_case.filing_key: the engine's call that filed a case, so the same call made again files nothing

The engines reach the actions through nginx, which sends a call again to another app when the
first died mid-call; a second filing of the same confirmation returns the first case.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("service_case") as batch:
        batch.add_column(sa.Column("filing_key", sa.String(length=64), nullable=True))
    op.create_index("uq_service_case_filing_key", "service_case", ["filing_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_service_case_filing_key", table_name="service_case")
    with op.batch_alter_table("service_case") as batch:
        batch.drop_column("filing_key")
