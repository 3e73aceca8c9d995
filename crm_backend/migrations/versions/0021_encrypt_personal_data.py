"""Citizens' personal data encrypted at rest; blind indexes for what is still searched

Phone numbers, descriptions, locations, message text, shared coordinates, staff replies and the
other personal columns (`PERSONAL_COLUMNS`) become ``v1:<algorithm>:<key id>:<base64>`` text
under the current key of the ring the environment names (``DATA_KEYS``, ``DATA_KEY_CURRENT``,
``DATA_HMAC_KEY`` or ``DATA_KEYS_FILE``, as the app reads them): set the keys before
``python -m crm_backend migrate``. A database with nothing to encrypt migrates without them.
Rows are encrypted in batches of `BATCH` by id; a value already encrypted is left as it is,
so the step can be run again.

New columns: ``citizen.phone_index``, ``service_case.contact_phone_index``,
``contact_phone_last4_index`` and ``location_index`` (keyed HMAC blind indexes) and
``service_case.names_business`` (the 企业 segment's flag, which read the description with LIKE).

Revision ID: 0021_encrypt_personal_data
Revises: 0020_staff_totp_audit_chain
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

from crm_backend.crypto import KeyRing, is_encrypted

revision = "0021_encrypt_personal_data"
down_revision = "0020_staff_totp_audit_chain"
branch_labels = None
depends_on = None

BATCH = 500

# The personal columns as this revision encrypts them (table → columns); a later revision that
# encrypts more lists its own.
PERSONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "citizen": ("phone",),
    "service_case": ("description", "location", "contact_phone"),
    "message": ("text", "engine_input", "attachment"),
    "case_event": ("note",),
    "extension_request": ("reason",),
    "satisfaction": ("comment",),
    "telegram_outbox": ("text",),
    "telegram_update": ("payload",),
    "knowledge_feedback": ("question",),
    "knowledge_miss": ("question",),
    "hot_issue_snapshot": ("issues",),
    "staff_user": ("totp_secret",),  # a second factor's shared secret (revision 0020)
}
# Columns whose type becomes TEXT: short strings that now hold ciphertext, JSON now encrypted.
WIDENED = {
    "citizen": {"phone": sa.String(length=20)},
    "service_case": {"location": sa.String(length=200), "contact_phone": sa.String(length=20)},
    "message": {"attachment": sa.JSON()},
    "telegram_update": {"payload": sa.JSON()},
    "hot_issue_snapshot": {"issues": sa.JSON()},
}
# As crm_backend.models.BUSINESS_WORDS were when this revision was written.
BUSINESS_WORDS = ("企业", "公司", "个体户", "商户", "厂")
OLD_BUSINESS_PREDICATE = " OR ".join(f"description LIKE '%{word}%'" for word in BUSINESS_WORDS)


def upgrade() -> None:
    op.drop_index("ix_service_case_business_citizen_id", table_name="service_case")
    with op.batch_alter_table("service_case") as batch:
        batch.drop_index("ix_service_case_category_location_created_at")
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for column, old_type in columns.items():
                using = f"{column}::text" if isinstance(old_type, sa.JSON) else None
                batch.alter_column(column, existing_type=old_type, type_=sa.Text(), postgresql_using=using)
    with op.batch_alter_table("citizen") as batch:
        batch.add_column(sa.Column("phone_index", sa.String(length=32), nullable=True))
        batch.create_index("ix_citizen_phone_index", ["phone_index"])
    with op.batch_alter_table("service_case") as batch:
        batch.add_column(sa.Column("contact_phone_index", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("contact_phone_last4_index", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("location_index", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("names_business", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_index("ix_service_case_contact_phone_index", ["contact_phone_index"])
        batch.create_index("ix_service_case_contact_phone_last4_index", ["contact_phone_last4_index"])
        batch.create_index(
            "ix_service_case_category_location_index_created_at", ["category", "location_index", "created_at"]
        )
    op.create_index(
        "ix_service_case_business_citizen_id",
        "service_case",
        ["citizen_id"],
        sqlite_where=sa.text("names_business = 1"),
        postgresql_where=sa.text("names_business"),
    )
    keys = _LazyRing()
    derived = _derived_columns(keys)

    def encrypt(value: str, place: str) -> str:
        return _encrypt(keys(), value, place)

    def reveal(value: str, place: str) -> str:
        return _decrypt(keys(), value, place)

    for table, columns in PERSONAL_COLUMNS.items():
        _rewrite(table, columns, encrypt, derived.get(table, {}), reveal=reveal)


def downgrade() -> None:
    keys = _LazyRing()
    for table, columns in PERSONAL_COLUMNS.items():
        _rewrite(table, columns, lambda value, place: _decrypt(keys(), value, place), {})
    op.drop_index("ix_service_case_business_citizen_id", table_name="service_case")
    with op.batch_alter_table("service_case") as batch:
        batch.drop_index("ix_service_case_category_location_index_created_at")
        batch.drop_index("ix_service_case_contact_phone_last4_index")
        batch.drop_index("ix_service_case_contact_phone_index")
        batch.drop_column("names_business")
        batch.drop_column("location_index")
        batch.drop_column("contact_phone_last4_index")
        batch.drop_column("contact_phone_index")
    with op.batch_alter_table("citizen") as batch:
        batch.drop_index("ix_citizen_phone_index")
        batch.drop_column("phone_index")
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table) as batch:
            for column, old_type in columns.items():
                using = f"{column}::json" if isinstance(old_type, sa.JSON) else None
                batch.alter_column(column, existing_type=sa.Text(), type_=old_type, postgresql_using=using)
    with op.batch_alter_table("service_case") as batch:
        batch.create_index("ix_service_case_category_location_created_at", ["category", "location", "created_at"])
    op.create_index(
        "ix_service_case_business_citizen_id",
        "service_case",
        ["citizen_id"],
        sqlite_where=sa.text(OLD_BUSINESS_PREDICATE),
        postgresql_where=sa.text(OLD_BUSINESS_PREDICATE),
    )


class _LazyRing:
    """The key ring, read from the environment only when a row needs it."""

    def __init__(self) -> None:
        self._ring: KeyRing | None = None

    def __call__(self) -> KeyRing:
        if self._ring is None:
            self._ring = KeyRing.from_env()
        return self._ring


def _encrypt(ring: KeyRing, value: str, place: str) -> str:
    return value if is_encrypted(value) else ring.encrypt(value, place)


def _decrypt(ring: KeyRing, value: str, place: str) -> str:
    return ring.decrypt(value, place) if is_encrypted(value) else value


Derive = Callable[[dict[str, Any]], Any]


def _derived_columns(keys: _LazyRing) -> dict[str, dict[str, Derive]]:
    """The columns computed from a row's plain values, as the models' attribute events compute them."""

    def index(value: str | None, purpose: str) -> str | None:
        return keys().blind_index(value, purpose) if value else None

    return {
        "citizen": {"phone_index": lambda row: index(row["phone"], "phone")},
        "service_case": {
            "contact_phone_index": lambda row: index(row["contact_phone"], "phone"),
            "contact_phone_last4_index": lambda row: (
                index(row["contact_phone"][-4:], "phone_last4") if len(row["contact_phone"] or "") >= 4 else None
            ),
            "location_index": lambda row: index(row["location"], "location"),
            "names_business": lambda row: any(word in (row["description"] or "") for word in BUSINESS_WORDS),
        },
    }


def _rewrite(
    table_name: str,
    columns: tuple[str, ...],
    transform: Callable[[str, str], str],
    derived: dict[str, Derive],
    reveal: Callable[[str, str], Any] = lambda value, _place: value,
) -> None:
    """Pass every non-empty value of `columns` through `transform`, `BATCH` rows at a time by id;
    set the `derived` columns from the plain values (`reveal` gives them: a value may be
    encrypted already when the step runs again)."""
    connection = op.get_bind()
    table = sa.table(
        table_name,
        sa.column("id", sa.Integer),
        *(sa.column(name, sa.Boolean if name == "names_business" else sa.Text) for name in (*columns, *derived)),
    )
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(table.c.id, *(table.c[name] for name in columns))
            .where(table.c.id > last_id)
            .order_by(table.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            stored = row._mapping
            plain = (
                {name: reveal(stored[name], f"{table_name}.{name}") if stored[name] else None for name in columns}
                if derived
                else {}
            )
            values: dict[str, Any] = {name: rule(plain) for name, rule in derived.items()}
            for name in columns:
                value = stored[name]
                if value and (changed := transform(value, f"{table_name}.{name}")) != value:
                    values[name] = changed
            if values:
                connection.execute(sa.update(table).where(table.c.id == row.id).values(**values))
        last_id = rows[-1].id
