"""The audit log's hash chain: appends form one chain, tampering is named, rows cannot be changed.

Collected again by tests/integration/test_postgres.py, with `sessions` on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend import audit_chain
from crm_backend.models import AuditChainHead, AuditEntry
from crm_backend.services import audit
from crm_backend.settings import normalise_database_url
from tests.support.cli import run_cli
from tests.support.stack import APP_PYTHON, ROOT

Sessions = async_sessionmaker[AsyncSession]


async def write_rows(sessions: Sessions, count: int, *, per_transaction: int = 1, label: str = "row") -> None:
    for start in range(0, count, per_transaction):
        async with sessions.begin() as session:
            for number in range(start, min(count, start + per_transaction)):
                audit.record(session, None, "test.append", f"{label}:{number}", "细节", actor_name="tester")


def database_url(sessions: Sessions) -> str:
    """The plain URL the operator's command takes (DATABASE_URL)."""
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    return url.replace("sqlite+aiosqlite:", "sqlite:").replace("postgresql+asyncpg:", "postgresql:")


def audit_verify(sessions: Sessions) -> subprocess.CompletedProcess[str]:
    """``python -m crm_backend audit verify`` on the test's database, as an operator runs it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_URL")}
    env["DATABASE_URL"] = database_url(sessions)
    return subprocess.run(
        [str(APP_PYTHON), "-m", "crm_backend", "audit", "verify"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def tamper(sessions: Sessions, statement: str) -> None:
    """Change the audit table behind the app's back, as someone with the database's password could:
    drop the triggers that refuse it, run `statement`, put the triggers back."""
    async with sessions.begin() as session:
        postgres = session.bind.dialect.name == "postgresql"
        if postgres:
            await session.execute(text("ALTER TABLE audit_entry DISABLE TRIGGER USER"))
        else:
            await session.execute(text("DROP TRIGGER audit_entry_no_update"))
            await session.execute(text("DROP TRIGGER audit_entry_no_delete"))
        await session.execute(text(statement))
        if postgres:
            await session.execute(text("ALTER TABLE audit_entry ENABLE TRIGGER USER"))


async def test_audit_rows_form_one_chain_that_verifies(sessions: Sessions) -> None:
    await write_rows(sessions, 7, per_transaction=3)
    async with sessions() as session:
        rows = (await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
        report = await audit_chain.verify_chain(session, batch=2)
        head = await session.get(AuditChainHead, audit_chain.HEAD_ID)
    assert [row.id for row in rows] == list(range(1, 8))
    assert rows[0].prev_hash == audit_chain.GENESIS
    assert all(later.prev_hash == earlier.row_hash for earlier, later in itertools.pairwise(rows))
    assert head is not None and (head.last_id, head.last_hash) == (7, rows[-1].row_hash)
    assert report == audit_chain.ChainReport(7)


async def test_a_rolled_back_transaction_leaves_no_link(sessions: Sessions) -> None:
    await write_rows(sessions, 2)
    with pytest.raises(RuntimeError):
        async with sessions.begin() as session:
            audit.record(session, None, "test.append", "lost", actor_name="tester")
            await session.flush()
            raise RuntimeError("the change failed")
    await write_rows(sessions, 1, label="after")
    async with sessions() as session:
        assert await audit_chain.verify_chain(session) == audit_chain.ChainReport(3)


async def test_concurrent_writers_form_one_chain(sessions: Sessions) -> None:
    await asyncio.gather(*(write_rows(sessions, 5, label=f"w{worker}") for worker in range(4)))
    async with sessions() as session:
        assert await audit_chain.verify_chain(session) == audit_chain.ChainReport(20)


async def test_the_database_refuses_to_change_or_delete_audit_rows(sessions: Sessions) -> None:
    await write_rows(sessions, 2)
    for statement in (
        "UPDATE audit_entry SET detail = 'rewritten' WHERE id = 1",
        "DELETE FROM audit_entry WHERE id = 2",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with sessions.begin() as session:
                await session.execute(text(statement))
    async with sessions() as session:
        assert await session.scalar(select(func.count(AuditEntry.id))) == 2
        assert await audit_chain.verify_chain(session) == audit_chain.ChainReport(2)


async def test_audit_verify_says_ok_with_the_count(sessions: Sessions) -> None:
    await write_rows(sessions, 4)
    verified = await asyncio.to_thread(audit_verify, sessions)
    assert verified.returncode == 0, verified.stderr
    assert "audit chain OK: 4 rows" in verified.stdout


async def test_audit_verify_names_a_row_changed_in_the_database(sessions: Sessions) -> None:
    await write_rows(sessions, 5)
    await tamper(sessions, "UPDATE audit_entry SET detail = '从未发生' WHERE id = 3")
    verified = await asyncio.to_thread(audit_verify, sessions)
    assert verified.returncode == 1
    assert "row 3" in verified.stdout and "was changed" in verified.stdout
    async with sessions() as session:
        report = await audit_chain.verify_chain(session)
    assert (report.broken_id, report.checked, report.reason) == (3, 2, audit_chain.CHANGED)


async def test_audit_verify_names_the_row_after_one_deleted_or_rehashed(sessions: Sessions) -> None:
    await write_rows(sessions, 5)
    await tamper(sessions, "DELETE FROM audit_entry WHERE id = 2")
    async with sessions() as session:
        report = await audit_chain.verify_chain(session)
    assert (report.broken_id, report.reason) == (3, audit_chain.RE_LINKED)
    verified = await asyncio.to_thread(audit_verify, sessions)
    assert verified.returncode == 1 and "row 3" in verified.stdout


async def test_audit_verify_notices_rows_cut_from_the_end(sessions: Sessions) -> None:
    await write_rows(sessions, 5)
    await tamper(sessions, "DELETE FROM audit_entry WHERE id >= 4")
    async with sessions() as session:
        report = await audit_chain.verify_chain(session)
    assert report.broken_id is None and not report.ok and audit_chain.CUT_SHORT in report.reason
    verified = await asyncio.to_thread(audit_verify, sessions)
    assert verified.returncode == 1 and audit_chain.CUT_SHORT in verified.stdout


def test_the_hash_covers_every_field_and_the_previous_hash() -> None:
    fields = {
        "id": 1,
        "actor_id": None,
        "actor": "cli",
        "action": "user.create",
        "target": "chief",
        "detail": "admin",
        "address": "",
        "created_at": audit_chain.datetime(2026, 12, 5, 9, 0, tzinfo=audit_chain.UTC),
    }
    first = audit_chain.row_hash(audit_chain.GENESIS, fields)
    assert first == audit_chain.row_hash(audit_chain.GENESIS, dict(fields))
    assert audit_chain.row_hash("1" * 64, fields) != first
    for name, other in [("id", 2), ("actor_id", 3), ("actor", "x"), ("action", "x"), ("target", "x"),
                        ("detail", "x"), ("address", "x")]:  # fmt: skip
        assert audit_chain.row_hash(audit_chain.GENESIS, {**fields, name: other}) != first, name


def test_the_migration_hashes_the_rows_written_before_it(tmp_path: Path) -> None:
    from alembic import command

    from crm_backend.db import _alembic_config

    path = tmp_path / "old.db"
    config = _alembic_config(normalise_database_url(f"sqlite:///{path}"))
    command.upgrade(config, "0019")
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO audit_entry (actor_id, actor, action, target, detail, address, created_at) "
            "VALUES (NULL, ?, ?, ?, ?, ?, ?)",
            [
                ("cli", "user.create", "chief", "admin", "", "2026-12-01 08:00:00.000000"),
                ("chief", "login", "", "", "127.0.0.1", "2026-12-01 08:01:02.345678"),
            ],
        )
    command.upgrade(config, "head")
    verified = run_cli("audit", "verify", database=path)
    assert verified.returncode == 0, verified.stderr + verified.stdout
    assert "audit chain OK: 2 rows" in verified.stdout
    created = run_cli(
        "create-user", "--username", "chief", "--role", "admin", database=path, stdin="a long enough password\n"
    )
    assert created.returncode == 0, created.stderr
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT id, actor, action FROM audit_entry WHERE id = 3").fetchone() == (
            3, "cli", "user.create",
        )  # fmt: skip
    assert "audit chain OK: 3 rows" in run_cli("audit", "verify", database=path).stdout
