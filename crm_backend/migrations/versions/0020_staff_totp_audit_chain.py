"""staff two-factor sign-in (TOTP, recovery codes, security settings) and the audit log's hash chain

Existing audit rows are hashed in id order (`crm_backend.audit_chain`), the chain head is
set, and triggers make ``audit_entry`` append-only on SQLite and PostgreSQL alike.

Revision ID: 0020_staff_totp_audit_chain
Revises: 0019
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

from crm_backend.audit_chain import GENESIS, HASHED_FIELDS, HEAD_ID, row_hash

revision = "0020_staff_totp_audit_chain"
down_revision = "0019"
branch_labels = None
depends_on = None

REFUSAL = "audit_entry is append-only: rows cannot be changed or deleted"
HASH_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("staff_user") as batch:
        batch.add_column(sa.Column("totp_secret", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("totp_enrolled_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("staff_session") as batch:
        batch.add_column(sa.Column("pending_step", sa.String(length=16), nullable=True))
    op.create_table(
        "staff_recovery_code",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=200), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["staff_user.id"], name=op.f("fk_staff_recovery_code_user_id_staff_user")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_staff_recovery_code")),
    )
    op.create_index("ix_staff_recovery_code_user_id", "staff_recovery_code", ["user_id"], unique=False)
    op.create_table(
        "security_setting",
        sa.Column("key", sa.String(length=48), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_security_setting")),
    )
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    with op.batch_alter_table("audit_entry") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=False, server_default=""))
        batch.add_column(sa.Column("row_hash", sa.String(length=64), nullable=False, server_default=""))
    last_id, last_hash = _hash_existing_rows(op.get_bind())
    head = sa.table("audit_chain_head", sa.column("id"), sa.column("last_id"), sa.column("last_hash"))
    op.execute(head.insert().values(id=HEAD_ID, last_id=last_id, last_hash=last_hash))
    _refuse_changes()


def _hash_existing_rows(connection: sa.Connection) -> tuple[int, str]:
    entry = sa.table(
        "audit_entry",
        sa.column("id", sa.Integer()),
        sa.column("actor_id", sa.Integer()),
        sa.column("actor", sa.String()),
        sa.column("action", sa.String()),
        sa.column("target", sa.String()),
        sa.column("detail", sa.Text()),
        sa.column("address", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("prev_hash", sa.String()),
        sa.column("row_hash", sa.String()),
    )
    last_id, last_hash = 0, GENESIS
    while True:
        rows = connection.execute(
            sa.select(*(entry.c[name] for name in HASHED_FIELDS))
            .where(entry.c.id > last_id)
            .order_by(entry.c.id)
            .limit(HASH_BATCH)
        ).all()
        for row in rows:
            fields = dict(zip(HASHED_FIELDS, row, strict=True))
            for name in ("target", "detail", "address"):
                fields[name] = fields[name] or ""
            digest = row_hash(last_hash, fields)
            connection.execute(
                entry.update()
                .where(entry.c.id == row.id)
                .values(
                    prev_hash=last_hash,
                    row_hash=digest,
                    target=fields["target"],
                    detail=fields["detail"],
                    address=fields["address"],
                )
            )
            last_id, last_hash = row.id, digest
        if len(rows) < HASH_BATCH:
            return last_id, last_hash


def _refuse_changes() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_entry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_entry_no_change BEFORE UPDATE OR DELETE ON audit_entry "
            "FOR EACH ROW EXECUTE FUNCTION audit_entry_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_entry_no_truncate BEFORE TRUNCATE ON audit_entry "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_entry_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_entry_no_{event.lower()} BEFORE {event} ON audit_entry "
                f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )


def _allow_changes() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_entry_no_truncate ON audit_entry")
        op.execute("DROP TRIGGER IF EXISTS audit_entry_no_change ON audit_entry")
        op.execute("DROP FUNCTION IF EXISTS audit_entry_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_entry_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_entry_no_delete")


def downgrade() -> None:
    _allow_changes()
    with op.batch_alter_table("audit_entry") as batch:
        batch.drop_column("row_hash")
        batch.drop_column("prev_hash")
    op.drop_table("audit_chain_head")
    op.drop_table("security_setting")
    op.drop_index("ix_staff_recovery_code_user_id", table_name="staff_recovery_code")
    op.drop_table("staff_recovery_code")
    with op.batch_alter_table("staff_session") as batch:
        batch.drop_column("pending_step")
    with op.batch_alter_table("staff_user") as batch:
        batch.drop_column("totp_last_step")
        batch.drop_column("totp_enrolled_at")
        batch.drop_column("totp_secret")
