"""case proof locks

Failed digit proofs are counted per case number and per hour city-wide (an index for each
count), and a number with too many is closed to them for a while (one row per number ever locked).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "case_proof_lock",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_number", sa.String(length=20), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_proof_lock")),
        sa.UniqueConstraint("case_number", name=op.f("uq_case_proof_lock_case_number")),
    )
    with op.batch_alter_table("lookup_attempt", schema=None) as batch_op:
        batch_op.create_index("ix_lookup_attempt_case_created", ["case_number", "created_at"], unique=False)
        batch_op.create_index("ix_lookup_attempt_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("lookup_attempt", schema=None) as batch_op:
        batch_op.drop_index("ix_lookup_attempt_created_at")
        batch_op.drop_index("ix_lookup_attempt_case_created")

    op.drop_table("case_proof_lock")
