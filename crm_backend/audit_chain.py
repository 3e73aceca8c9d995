"""The audit log's hash chain: every row carries the hash of the row before it.

A row's ``row_hash`` is the SHA-256 of its ``prev_hash`` and a canonical serialisation of
its own fields (`canonical`); its ``prev_hash`` is the ``row_hash`` of the row before it (by
id), and the first row's is `GENESIS`. A row changed in place no longer matches its hash; a
row removed from the middle leaves the next row pointing at a hash that is not its
predecessor's; rows removed from the end leave `AuditChainHead` (the newest link) pointing
past the last row. ``python -m crm_backend audit verify`` walks the chain (`verify_chain`).

Appending: `AuditedSession` chains every new `AuditEntry` just before it is flushed. It
locks the one-row `AuditChainHead` first (``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite a
write to the row takes the database's write lock), gives the rows the next ids, hashes them
and moves the head, all in the caller's transaction: concurrent writers in any number of
processes wait for each other and form one chain, and a transaction that rolls back takes its
links with it. Audit rows are never deleted (database triggers refuse UPDATE and DELETE), so
the chain always starts at `GENESIS`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, UOWTransaction

from crm_backend.models import AuditChainHead, AuditEntry, utcnow

GENESIS = "0" * 64
RE_LINKED = "its prev_hash is not the hash of the row before it: a row before it was removed or rewritten"
CHANGED = "its fields do not match its hash: the row was changed"
CUT_SHORT = "rows were removed from the end"
HEAD_ID = 1
VERIFY_BATCH = 1000
# The fields a row's hash covers, in this order (the hashes themselves excepted).
HASHED_FIELDS = ("id", "actor_id", "actor", "action", "target", "detail", "address", "created_at")


def canonical(fields: dict[str, Any]) -> str:
    """The row's fields as one JSON text: fixed keys, sorted, UTC time to the microsecond."""
    values: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        value = fields[name]
        if isinstance(value, datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
            value = value.isoformat(timespec="microseconds")
        values[name] = value
    return json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def row_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    """The hash a row with these fields must carry after a row whose hash is ``prev_hash``."""
    return hashlib.sha256(f"{prev_hash}\n{canonical(fields)}".encode()).hexdigest()


def entry_fields(entry: AuditEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in HASHED_FIELDS}


def chain_new_entries(session: Session, _context: UOWTransaction | None, _instances: Iterable[object] | None) -> None:
    """``before_flush``: give the session's new audit rows their ids and hashes, in the order added."""
    pending = [item for item in session.new if isinstance(item, AuditEntry)]
    if not pending:
        return
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        # Take the write lock now (busy timeout applies) rather than fail to upgrade a read lock later.
        connection.execute(
            update(AuditChainHead).where(AuditChainHead.id == HEAD_ID).values(last_id=AuditChainHead.last_id)
        )
    last_id, last_hash = connection.execute(
        select(AuditChainHead.last_id, AuditChainHead.last_hash).where(AuditChainHead.id == HEAD_ID).with_for_update()
    ).one()
    for entry in pending:
        last_id += 1
        entry.id = last_id
        entry.created_at = entry.created_at or utcnow()
        entry.target = entry.target or ""
        entry.detail = entry.detail or ""
        entry.address = entry.address or ""
        entry.prev_hash = last_hash
        entry.row_hash = last_hash = row_hash(last_hash, entry_fields(entry))
    connection.execute(
        update(AuditChainHead).where(AuditChainHead.id == HEAD_ID).values(last_id=last_id, last_hash=last_hash)
    )


class AuditedSession(Session):
    """The CRM's session class: new audit rows are chained as they are flushed."""


def install(session_class: type[Session] = AuditedSession) -> None:
    """Listen for flushes on the session class (idempotent)."""
    from sqlalchemy import event

    if not event.contains(session_class, "before_flush", chain_new_entries):
        event.listen(session_class, "before_flush", chain_new_entries)


@dataclass(frozen=True)
class ChainReport:
    """What `verify_chain` found: the rows checked, and the first broken row with why (None if whole)."""

    checked: int
    broken_id: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_id is None and not self.reason


async def verify_chain(session: AsyncSession, *, batch: int = VERIFY_BATCH) -> ChainReport:
    """Walk the audit log by id, in batches, and check every link; stop at the first broken row."""
    prev_hash, checked, after = GENESIS, 0, 0
    columns = [getattr(AuditEntry, name) for name in HASHED_FIELDS]
    while True:
        rows = (
            await session.execute(
                select(*columns, AuditEntry.prev_hash, AuditEntry.row_hash)
                .where(AuditEntry.id > after)
                .order_by(AuditEntry.id)
                .limit(batch)
            )
        ).all()
        for row in rows:
            fields = dict(zip(HASHED_FIELDS, row[: len(HASHED_FIELDS)], strict=True))
            stored_prev, stored_hash = row[-2], row[-1]
            if stored_prev != prev_hash:
                return ChainReport(checked, row.id, RE_LINKED)
            if stored_hash != row_hash(prev_hash, fields):
                return ChainReport(checked, row.id, CHANGED)
            prev_hash, after, checked = stored_hash, row.id, checked + 1
        if len(rows) < batch:
            break
    head = (await session.execute(select(AuditChainHead.last_id, AuditChainHead.last_hash))).one_or_none()
    if head is None or (head.last_id, head.last_hash) != (after, prev_hash):
        named = head.last_id if head else "?"
        return ChainReport(checked, None, f"the chain head names row {named} but the last row is {after}: {CUT_SHORT}")
    return ChainReport(checked)
