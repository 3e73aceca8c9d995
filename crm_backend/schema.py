"""The database's schema as a step of its own: bring it to the head revision, or check it is there.

`migrate` is what ``python -m crm_backend migrate`` runs (and `bin/run` before it starts the
app): every pending Alembic migration, then the idempotent seeds (departments and routing
rules, the knowledge base). The app never migrates; at start it calls `ensure_current` and
refuses to serve a database that is behind (or ahead of) the code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_backend.db import MIGRATIONS_DIR, create_engine, create_sessionmaker, upgrade_database_async
from crm_backend.dispatch.routing import seed_routing
from crm_backend.errors import CrmError
from crm_backend.services.knowledge import seed_knowledge_once

logger = logging.getLogger(__name__)

MIGRATE_COMMAND = "python -m crm_backend migrate"


class SchemaNotCurrent(CrmError):
    """The database is not at the revision this code was written for."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        found = "has no schema" if current is None else f"is at revision {current}"
        super().__init__(f"the database {found}, not {head}: run {MIGRATE_COMMAND}")


@dataclass(frozen=True)
class MigrateResult:
    """What one `migrate` did: the revisions before and after, and which seeds loaded data."""

    before: str | None
    after: str
    seeded_routing: bool
    seeded_knowledge: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.seeded_routing or self.seeded_knowledge


def head_revision() -> str:
    """The newest migration in `crm_backend/migrations/versions/` (read from the files)."""
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:  # pragma: no cover - the project always ships migrations
        raise RuntimeError("no migrations found")
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None when it has never been migrated."""
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def ensure_current(engine: AsyncEngine) -> str:
    """Check the database is at the head revision; returns it.

    Raises:
        SchemaNotCurrent: it is behind, ahead or empty (the app must not serve it).
    """
    head = head_revision()
    current = await current_revision(engine)
    if current != head:
        raise SchemaNotCurrent(current, head)
    return current


async def migrate(database_url: str) -> MigrateResult:
    """Apply every pending migration, then seed routing and the knowledge base where empty.

    Running it again changes nothing: migrations at head are skipped and both seeds load only
    into empty tables.
    """
    engine = create_engine(database_url)
    try:
        before = await current_revision(engine)
        await upgrade_database_async(database_url)
        sessions = create_sessionmaker(engine)
        async with sessions.begin() as session:
            seeded_routing = await seed_routing(session)
        seeded_knowledge = await seed_knowledge_once(sessions)
        after = await current_revision(engine)
    finally:
        await engine.dispose()
    assert after is not None
    return MigrateResult(before, after, seeded_routing, seeded_knowledge)
