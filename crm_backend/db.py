"""Database engine, sessions and migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import Connection, event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from crm_backend import audit_chain

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine; SQLite files get WAL mode and a busy timeout so the app,
    the CLI and tests can share one file."""
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(database_url, connect_args={"timeout": 15})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "savepoint", _sqlite_begin_before_savepoint)
        return engine
    return create_async_engine(database_url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def affected(result: object) -> int:
    """How many rows an UPDATE or DELETE changed (its ``rowcount``; 0 when the driver does not say)."""
    return int(getattr(result, "rowcount", 0) or 0)


def database_unreachable(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is the database being away: restarting, refusing or
    cutting connections, rather than a failure of the work itself. Work that failed so rolled
    back, and may be tried again once the database answers."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | InterfaceError | ConnectionError):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if type(current).__module__.startswith("asyncpg") and type(current).__name__ in _ASYNCPG_AWAY:
            return True
        current = current.__cause__ or current.__context__
    return False


# asyncpg's errors for a server that is starting up, shutting down or gone (not imported: SQLite has no asyncpg).
_ASYNCPG_AWAY = frozenset(
    {"CannotConnectNowError", "ConnectionDoesNotExistError", "ConnectionFailureError", "AdminShutdownError"}
)


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin_before_savepoint(connection: Connection, _name: str | None) -> None:
    """Open the transaction before a savepoint that would otherwise be its first statement.

    Python's sqlite3 module begins a transaction only before a data-changing statement, not
    before ``SAVEPOINT``; a savepoint issued outside a transaction starts one of its own, which
    ``RELEASE`` commits. A session whose first write sits in ``begin_nested()`` would then keep
    that write though the session later rolls back. ``BEGIN IMMEDIATE``: a savepoint is there to
    write, and taking the write lock now lets the busy timeout wait for another writer instead of
    failing when the read lock cannot be upgraded.
    """
    if not connection.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_sessionmaker(engine: AsyncEngine | None = None) -> async_sessionmaker[AsyncSession]:
    """One session per request or task; objects stay usable after commit; audit rows are chained.

    Args:
        engine: the engine sessions use; None for a factory bound later with
            ``configure(bind=engine)`` (the app builds its handlers before its database opens).
    """
    audit_chain.install()
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=audit_chain.AuditedSession)


def _alembic_config(database_url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_database(database_url: str) -> None:
    """Apply every pending migration (blocking; call from a thread inside an event loop)."""
    from alembic import command

    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(_alembic_config(database_url), "head")


async def upgrade_database_async(database_url: str) -> None:
    """Apply pending migrations without blocking the running event loop."""
    await asyncio.to_thread(upgrade_database, database_url)
