"""What the backup tests share: a load of citizens filing cases, a tracker store, table dumps.

The tracker store is made here with the shape of Rasa 3.6's ``SQLTrackerStore`` table
``events`` (``rasa/core/tracker_store.py``), not by a running engine: the backup treats it as
any other database, and this keeps the SQLite tests free of an engine.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, insert, inspect, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from crm_backend.models import ChannelIdentity, Citizen
from crm_backend.services.intake import Report, file_case

tracker_metadata = MetaData()
events = Table(
    "events",
    tracker_metadata,
    Column("id", Integer, primary_key=True),
    Column("sender_id", String(255), nullable=False, index=True),
    Column("type_name", String(255), nullable=False),
    Column("timestamp", Float),
    Column("intent_name", String(255)),
    Column("action_name", String(255)),
    Column("data", Text),
)

Rows = dict[str, set[str]]


async def create_tracker_store(engine: AsyncEngine, conversations: int, padding: int = 0) -> None:
    """The ``events`` table with a user and a bot event for each of `conversations` senders.

    `padding` characters of text in each event's data make the store as large as a test needs
    (several encrypted chunks).
    """
    async with engine.begin() as conn:
        await conn.run_sync(tracker_metadata.create_all)
        await conn.execute(insert(events), [tracker_event(n, padding) for n in range(conversations)])


def tracker_event(n: int, padding: int = 0) -> dict[str, Any]:
    """One user event of sender `n`, as the engine writes it."""
    data = {"event": "user", "text": f"第{n}条消息" + "路灯不亮" * (padding // 4), "timestamp": 1764900000.0 + n}
    return {
        "sender_id": f"rest:load-{n:05d}",
        "type_name": "user",
        "timestamp": 1764900000.0 + n,
        "intent_name": "report_issue",
        "action_name": None,
        "data": json.dumps(data, ensure_ascii=False),
    }


@dataclass
class Load:
    """Citizens filing cases (and the engine logging events) until told to stop."""

    committed_cases: list[str] = field(default_factory=list)
    committed_events: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(
        self, sessions: async_sessionmaker[AsyncSession], tracker: AsyncEngine, cases: int | None = None
    ) -> None:
        """One transaction per case, its new citizen and its first event; then a tracker event.

        Until `stop` is set, or `cases` cases are committed. The citizen is written first, with
        its phone, not by `resolve_identity`: on SQLite its SAVEPOINT, opened before any write,
        begins the transaction and its RELEASE commits it (pysqlite's legacy transaction
        handling, `crm_backend/db.py`), so the citizen would be committed without the phone
        `file_case` gives it a moment later, and the load would not only add rows.
        """
        n = 0
        while not self.stop.is_set() and (cases is None or n < cases):
            async with sessions.begin() as session:
                phone = f"138{n:08d}"
                identity = ChannelIdentity(channel="web", external_id=f"load-{n:05d}", citizen=Citizen(phone=phone))
                session.add(identity)
                await session.flush()
                case = await file_case(
                    session,
                    identity,
                    Report(
                        description=f"第{n}号楼门口的路灯坏了三天了",
                        location=f"朝阳区建国路{n}号",
                        contact_phone=phone,
                        district="朝阳区",
                    ),
                )
            self.committed_cases.append(case.case_number)
            async with tracker.begin() as conn:
                await conn.execute(insert(events), [tracker_event(10_000 + n)])
            self.committed_events += 1
            n += 1
            await asyncio.sleep(0)

    async def until(self, cases: int) -> None:
        """Wait until at least `cases` cases are committed in all."""
        while len(self.committed_cases) < cases:
            await asyncio.sleep(0.01)


# Tables whose one row moves on as the others grow (checked by their own test, not as a subset).
CHANGED_IN_PLACE = frozenset({"audit_chain_head"})


async def table_rows(engine: AsyncEngine) -> Rows:
    """Every row of every table, each as its JSON text (rows have primary keys: no duplicates)."""
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        tables = await conn.run_sync(lambda sync: {name: Table(name, MetaData(), autoload_with=sync) for name in names})
        return {
            name: {
                json.dumps(list(row), default=str, ensure_ascii=False, sort_keys=True)
                for row in await conn.execute(select(table))
            }
            for name, table in tables.items()
        }


def assert_restored_rows_are_the_sources(source: Rows, restored: Rows) -> list[str]:
    """Every table is there and every restored row is in the source, column for column.

    The writers only add rows, so the source's tables hold the restored rows and, where the
    writers went on after the backup, more (but for `CHANGED_IN_PLACE`: the audit chain's head
    moves with every audit row). Returns the tables that gained rows since.
    """
    assert set(restored) == set(source)
    for table, rows in restored.items():
        if table in CHANGED_IN_PLACE:
            continue
        assert rows <= source[table], (
            f"{table}: restored rows the source does not have: {sorted(rows - source[table])[:3]}"
        )
    return sorted(table for table, rows in restored.items() if rows != source[table])
