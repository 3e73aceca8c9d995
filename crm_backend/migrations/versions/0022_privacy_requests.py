"""Citizens' privacy requests, and when personal data was removed from a citizen or a case

privacy_request: a copy or erasure a citizen asked for in the chat, for staff to carry out.
citizen.erased_at, service_case.pseudonymised_at: when the personal data went (erasure, or the
retention period of an archived case), so it is not done twice and the console can say so.

Revision ID: 0022
Revises: 0021_encrypt_personal_data
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021_encrypt_personal_data"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "privacy_request",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("citizen_id", sa.Integer(), sa.ForeignKey("citizen.id"), nullable=False),
        sa.Column("identity_id", sa.Integer(), sa.ForeignKey("channel_identity.id"), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("handled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("handled_by_id", sa.Integer(), sa.ForeignKey("staff_user.id"), nullable=True),
    )
    op.create_index("ix_privacy_request_citizen_id", "privacy_request", ["citizen_id"])
    op.create_index("ix_privacy_request_status", "privacy_request", ["status", "requested_at"])
    with op.batch_alter_table("citizen") as batch:
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("service_case") as batch:
        batch.add_column(sa.Column("pseudonymised_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("service_case") as batch:
        batch.drop_column("pseudonymised_at")
    with op.batch_alter_table("citizen") as batch:
        batch.drop_column("erased_at")
    op.drop_index("ix_privacy_request_status", table_name="privacy_request")
    op.drop_index("ix_privacy_request_citizen_id", table_name="privacy_request")
    op.drop_table("privacy_request")
