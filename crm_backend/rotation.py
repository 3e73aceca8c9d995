"""``rotate-key``: every encrypted value moved under the current data key, while the system runs.

The operator first adds the new key to ``DATA_KEYS``, names it in ``DATA_KEY_CURRENT`` and
restarts the app and the engines (from then on they write under it and still read the old
one); then runs ``python -m crm_backend rotate-key``, and removes the old key once it reports
nothing left under it.

Each table is walked by id in batches of `BATCH`, each batch its own short transaction. A value
is rewritten only if it is still the one read (``UPDATE ... WHERE id = :id AND col = :old``): a
row the app changed meanwhile was written under the current key already, and is left alone.
So no lock is held beyond a batch, no write of the app's is lost, and the command can be
stopped and run again. Values stored plain (the tracker store's rows from before encryption)
are encrypted on the way.

The blind-index HMAC key is not rotated here: every index value would change, and a lookup made
mid-way would miss the rows not yet redone. It protects only fingerprints, not the data; it is
changed, if ever, with the system stopped (see docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_backend.crypto import KeyRing, is_encrypted, key_id_of
from crm_backend.models import Base, EncryptedJSON, EncryptedText

BATCH = 200
TRACKER_EVENTS = "events"
TRACKER_PLACE = "events.data"  # as bot.engine_tracker_store binds it


@dataclass(frozen=True)
class EncryptedColumn:
    """One column of encrypted values: where it is and the associated data it is bound to."""

    table: str
    column: str
    place: str


def crm_columns() -> list[EncryptedColumn]:
    """Every encrypted column of the CRM's tables, as the models declare them."""
    found = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, EncryptedText | EncryptedJSON):
                found.append(EncryptedColumn(table.name, column.name, column.type.place))
    return found


TRACKER_COLUMNS = [EncryptedColumn(TRACKER_EVENTS, "data", TRACKER_PLACE)]


@dataclass
class RotationReport:
    """What a rotation did: values rewritten and values still not under the current key, per column."""

    rewritten: dict[str, int] = field(default_factory=dict)
    remaining: dict[str, int] = field(default_factory=dict)

    @property
    def total_rewritten(self) -> int:
        """Values rewritten in all columns."""
        return sum(self.rewritten.values())

    @property
    def total_remaining(self) -> int:
        """Values found afterwards still plain or under another key."""
        return sum(self.remaining.values())


async def rotate_everything(crm: AsyncEngine, tracker: AsyncEngine | None, ring: KeyRing) -> RotationReport:
    """`rotate` the CRM's encrypted columns, then the engine's events (when its table exists yet)."""
    report = await rotate(crm, ring, crm_columns())
    if tracker is not None:
        async with tracker.connect() as connection:
            has_events = await connection.run_sync(lambda sync: sa.inspect(sync).has_table(TRACKER_EVENTS))
        if has_events:
            await rotate(tracker, ring, TRACKER_COLUMNS, report)
    return report


async def rotate(
    engine: AsyncEngine, ring: KeyRing, columns: list[EncryptedColumn], report: RotationReport | None = None
) -> RotationReport:
    """Re-encrypt every value of `columns` under ``ring.current``, then count what is left.

    Args:
        engine: the database (the CRM's or the tracker store's).
        ring: holds the current key and every key values may be under.
        columns: what to rotate (`crm_columns()` or `TRACKER_COLUMNS`).
        report: added to (one report for both databases).

    Raises:
        KeyRingError: a value is under a key the ring lacks, or fails authentication.
    """
    report = report or RotationReport()
    for spec in columns:
        name = f"{spec.table}.{spec.column}"
        report.rewritten[name] = report.rewritten.get(name, 0) + await _rotate_column(engine, ring, spec)
        report.remaining[name] = report.remaining.get(name, 0) + await _count_stale(engine, ring, spec)
    return report


def _table(spec: EncryptedColumn) -> sa.TableClause:
    # Raw text: the ORM's column types would decrypt.
    return sa.table(spec.table, sa.column("id", sa.Integer), sa.column(spec.column, sa.Text))


async def _rotate_column(engine: AsyncEngine, ring: KeyRing, spec: EncryptedColumn) -> int:
    table = _table(spec)
    value = table.c[spec.column]
    last_id, rewritten = 0, 0
    while True:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(table.c.id, value)
                    .where(table.c.id > last_id, value.is_not(None), value != "")
                    .order_by(table.c.id)
                    .limit(BATCH)
                )
            ).all()
        if not rows:
            return rewritten
        # Written in a transaction of its own that begins with a write (SQLite cannot turn a read
        # transaction into a write once another writer committed); a value changed since the read
        # no longer matches and is left as the app wrote it.
        fresh = [
            (row_id, stored, ring.encrypt_bytes(_plain(ring, stored, spec.place), spec.place))
            for row_id, stored in _stale(ring, rows)
        ]
        if fresh:
            async with engine.begin() as connection:
                for row_id, stored, replacement in fresh:
                    done = await connection.execute(
                        sa.update(table).where(table.c.id == row_id, value == stored).values({spec.column: replacement})
                    )
                    rewritten += done.rowcount
        last_id = rows[-1][0]


def _plain(ring: KeyRing, stored: str, place: str) -> bytes:
    return ring.decrypt_bytes(stored, place) if is_encrypted(stored) else stored.encode()


def _stale(ring: KeyRing, rows: Sequence[sa.Row[Any]]) -> Iterator[tuple[int, str]]:
    for row_id, stored in rows:
        if key_id_of(stored) != ring.current:
            yield row_id, stored


async def _count_stale(engine: AsyncEngine, ring: KeyRing, spec: EncryptedColumn) -> int:
    """Values not under the current key: plain, or ``v1:<algorithm>:<another id>:...``."""
    table = _table(spec)
    value = table.c[spec.column]
    key_id = ring.current.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    current = [f"v1:{algorithm}:{key_id}:%" for algorithm in ("sm4", "aes")]
    async with engine.connect() as connection:
        return (
            await connection.scalar(
                sa.select(sa.func.count()).where(
                    value.is_not(None), value != "", *(value.not_like(prefix, escape="\\") for prefix in current)
                )
            )
        ) or 0
