"""dispatch: departments, routing rules, routing decisions, case deadlines

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 00:57:18.836548
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "department",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("district", sa.String(length=32), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_department")),
        sa.UniqueConstraint("code", name=op.f("uq_department_code")),
    )
    op.create_table(
        "category_policy",
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("deadline_working_days", sa.Integer(), nullable=False),
        sa.Column("default_department_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["default_department_id"],
            ["department.id"],
            name=op.f("fk_category_policy_default_department_id_department"),
        ),
        sa.PrimaryKeyConstraint("category", name=op.f("pk_category_policy")),
    )
    op.create_table(
        "routing_rule",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("district", sa.String(length=32), nullable=False),
        sa.Column("department_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["department_id"], ["department.id"], name=op.f("fk_routing_rule_department_id_department")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_rule")),
        sa.UniqueConstraint("category", "district", name=op.f("uq_routing_rule_category")),
    )
    op.create_table(
        "routing_decision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("suggestions", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=200), nullable=False),
        sa.Column("department_id", sa.Integer(), nullable=True),
        sa.Column("district", sa.String(length=32), nullable=True),
        sa.Column("queued", sa.Boolean(), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["service_case.id"], name=op.f("fk_routing_decision_case_id_service_case")
        ),
        sa.ForeignKeyConstraint(
            ["department_id"], ["department.id"], name=op.f("fk_routing_decision_department_id_department")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routing_decision")),
    )
    with op.batch_alter_table("routing_decision", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routing_decision_case_id"), ["case_id"], unique=False)

    with op.batch_alter_table("service_case", schema=None) as batch_op:
        batch_op.add_column(sa.Column("department_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("duplicate_of_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_service_case_department_id"), ["department_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_service_case_duplicate_of_id_service_case"), "service_case", ["duplicate_of_id"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_service_case_department_id_department"), "department", ["department_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("service_case", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_service_case_department_id_department"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_service_case_duplicate_of_id_service_case"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_service_case_department_id"))
        batch_op.drop_column("duplicate_of_id")
        batch_op.drop_column("due_at")
        batch_op.drop_column("urgent")
        batch_op.drop_column("department_id")

    with op.batch_alter_table("routing_decision", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routing_decision_case_id"))

    op.drop_table("routing_decision")
    op.drop_table("routing_rule")
    op.drop_table("category_policy")
    op.drop_table("department")
