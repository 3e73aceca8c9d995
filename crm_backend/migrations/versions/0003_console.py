"""console: staff users, sessions, audit log, extensions, 督办

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_failure",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failure")),
    )
    with op.batch_alter_table("login_failure", schema=None) as batch_op:
        batch_op.create_index("ix_login_failure_address_created_at", ["address", "created_at"], unique=False)
        batch_op.create_index("ix_login_failure_username_created_at", ["username", "created_at"], unique=False)

    op.create_table(
        "staff_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=32), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("department_id", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["department_id"], ["department.id"], name=op.f("fk_staff_user_department_id_department")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_user")),
        sa.UniqueConstraint("username", name=op.f("uq_staff_user_username")),
    )
    op.create_table(
        "audit_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=48), nullable=False),
        sa.Column("target", sa.String(length=80), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["actor_id"], ["staff_user.id"], name=op.f("fk_audit_entry_actor_id_staff_user")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entry")),
    )
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.create_index("ix_audit_entry_created_at", ["created_at"], unique=False)

    op.create_table(
        "staff_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["staff_user.id"], name=op.f("fk_staff_session_user_id_staff_user")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_session")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_staff_session_token_hash")),
    )
    with op.batch_alter_table("staff_session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_staff_session_user_id"), ["user_id"], unique=False)

    op.create_table(
        "extension_request",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("working_days", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=False),
        sa.Column("decided_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["service_case.id"], name=op.f("fk_extension_request_case_id_service_case")
        ),
        sa.ForeignKeyConstraint(
            ["decided_by_id"], ["staff_user.id"], name=op.f("fk_extension_request_decided_by_id_staff_user")
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_id"], ["staff_user.id"], name=op.f("fk_extension_request_requested_by_id_staff_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extension_request")),
    )
    with op.batch_alter_table("extension_request", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_extension_request_case_id"), ["case_id"], unique=False)

    with op.batch_alter_table("case_event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="status"))
        batch_op.add_column(sa.Column("actor_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_case_event_actor_id_staff_user"), "staff_user", ["actor_id"], ["id"])

    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("handoff_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("assigned_staff_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("department_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_conversation_department_id_department"), "department", ["department_id"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_conversation_assigned_staff_id_staff_user"), "staff_user", ["assigned_staff_id"], ["id"]
        )

    with op.batch_alter_table("service_case", schema=None) as batch_op:
        batch_op.add_column(sa.Column("supervised", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index(
            "ix_service_case_department_supervised_id", ["department_id", "supervised", "id"], unique=False
        )
        batch_op.create_index("ix_service_case_supervised_id", ["supervised", "id"], unique=False)
        batch_op.create_index("ix_service_case_status_supervised_id", ["status", "supervised", "id"], unique=False)

    # Escalated conversations with no case yet wait in the hotline's own inbox. A database
    # seeded before this department existed gets it here (an empty one gets it from the
    # routing data on first start).
    bind = op.get_bind()
    seeded = bind.execute(sa.text("SELECT COUNT(*) FROM department")).scalar()
    has_hotline = bind.execute(sa.text("SELECT COUNT(*) FROM department WHERE code = 'A-hotline'")).scalar()
    if seeded and not has_hotline:
        bind.execute(
            sa.text("INSERT INTO department (code, name, district, active) VALUES (:code, :name, NULL, :active)"),
            {"code": "A-hotline", "name": "A市12345政务服务便民热线", "active": True},
        )


def downgrade() -> None:
    with op.batch_alter_table("service_case", schema=None) as batch_op:
        batch_op.drop_index("ix_service_case_status_supervised_id")
        batch_op.drop_index("ix_service_case_supervised_id")
        batch_op.drop_index("ix_service_case_department_supervised_id")
        batch_op.drop_column("supervised")

    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_conversation_assigned_staff_id_staff_user"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_conversation_department_id_department"), type_="foreignkey")
        batch_op.drop_column("department_id")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("assigned_staff_id")
        batch_op.drop_column("handoff_reason")

    with op.batch_alter_table("case_event", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_case_event_actor_id_staff_user"), type_="foreignkey")
        batch_op.drop_column("actor_id")
        batch_op.drop_column("kind")

    with op.batch_alter_table("extension_request", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_extension_request_case_id"))

    op.drop_table("extension_request")
    with op.batch_alter_table("staff_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_staff_session_user_id"))

    op.drop_table("staff_session")
    with op.batch_alter_table("audit_entry", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_entry_created_at")

    op.drop_table("audit_entry")
    op.drop_table("staff_user")
    with op.batch_alter_table("login_failure", schema=None) as batch_op:
        batch_op.drop_index("ix_login_failure_username_created_at")
        batch_op.drop_index("ix_login_failure_address_created_at")

    op.drop_table("login_failure")
