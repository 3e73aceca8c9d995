"""Requests filed through Open311 GeoReport v2: who filed them, where, and the reporter's contact

open311_request: one row per case filed through ``POST /open311/v2/requests``: the API client,
the service code, the coordinates and address id the partner gave (published, as the standard
publishes them), and the reporter's optional contact details (email, names, device and account
ids), encrypted at rest like every other personal column and never published.

Revision ID: 0023_open311
Revises: 0022
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0023_open311"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "open311_request",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("service_case.id"), nullable=False),
        sa.Column("api_client_id", sa.Integer(), sa.ForeignKey("api_client.id"), nullable=False),
        sa.Column("service_code", sa.String(length=64), nullable=False),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("long", sa.Float(), nullable=True),
        sa.Column("address_id", sa.String(length=64), nullable=True),
        sa.Column("address_given", sa.Boolean(), nullable=False),
        sa.Column("contact", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("case_id", name="uq_open311_request_case_id"),
    )
    op.create_index("ix_open311_request_api_client_id", "open311_request", ["api_client_id"])


def downgrade() -> None:
    op.drop_index("ix_open311_request_api_client_id", table_name="open311_request")
    op.drop_table("open311_request")
