"""Backups on PostgreSQL: ``pg_dump`` of a database under load, restored into an empty server.

Two throwaway servers from Debian's binaries (`tests/support/postgres.py`): the live one, where
citizens file cases and the engine's tracker store (Rasa's ``events`` table, made by the test:
`tests/support/backups.py`) grows while ``python -m crm_backend backup`` runs, and an empty one
that ``restore`` fills. Every table is then compared row for row.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from crm_backend.backup import head_revision, read_manifest
from crm_backend.db import create_engine, create_sessionmaker, upgrade_database_async
from crm_backend.settings import normalise_database_url
from tests.support.backups import Load, assert_restored_rows_are_the_sources, create_tracker_store, table_rows
from tests.support.postgres import PostgresServer
from tests.support.stack import APP_PYTHON, ROOT

KEY_HEX = bytes(range(32)).hex()


@pytest.fixture(scope="module")
def live_server() -> Iterator[PostgresServer]:
    with PostgresServer.running() as server:
        yield server


@pytest.fixture(scope="module")
def empty_server() -> Iterator[PostgresServer]:
    with PostgresServer.running() as server:
        yield server


async def cli(*args: str, database_url: str, tracker_url: str | None) -> tuple[int, str, str]:
    """``python -m crm_backend ARGS`` as an operator runs it, without blocking the load."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": database_url, "BACKUP_KEY": KEY_HEX}
    if tracker_url is not None:
        env["TRACKER_STORE_URL"] = tracker_url
    process = await asyncio.create_subprocess_exec(
        str(APP_PYTHON),
        "-m",
        "crm_backend",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def rows_of(url: str) -> dict[str, set[str]]:
    engine = create_engine(normalise_database_url(url))
    try:
        return await table_rows(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def tracker_engine(live_server: PostgresServer) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(normalise_database_url(live_server.create_database("tracker")))
    await create_tracker_store(engine, 200, 200)
    yield engine
    await engine.dispose()


async def test_a_postgres_backup_under_load_restores_every_table_into_an_empty_server(
    live_server: PostgresServer, empty_server: PostgresServer, tracker_engine: AsyncEngine, tmp_path: Path
) -> None:
    crm_url, tracker_url = live_server.create_database("crm"), live_server.url("tracker")
    await upgrade_database_async(normalise_database_url(crm_url))
    crm_engine = create_engine(normalise_database_url(crm_url))
    load = Load()
    writer = asyncio.create_task(load.run(create_sessionmaker(crm_engine), tracker_engine))
    out = tmp_path / "crm.backup"
    try:
        await load.until(30)
        cases_before, events_before = list(load.committed_cases), load.committed_events
        code, _, stderr = await cli("backup", "--out", str(out), database_url=crm_url, tracker_url=tracker_url)
        assert code == 0, stderr
        await load.until(len(load.committed_cases) + 10)
    finally:
        load.stop.set()
        await writer
        await crm_engine.dispose()
    manifest = read_manifest(out)
    assert [(part.kind, part.holds) for part in manifest.parts] == [("pg_dump", ["crm"]), ("pg_dump", ["tracker"])]
    assert manifest.schema_revision == head_revision()

    restored_crm, restored_tracker = empty_server.create_database("crm"), empty_server.create_database("tracker")
    code, _, stderr = await cli("restore", str(out), database_url=restored_crm, tracker_url=restored_tracker)
    assert code == 0, stderr

    crm_rows, crm_restored = await rows_of(crm_url), await rows_of(restored_crm)
    assert "service_case" in assert_restored_rows_are_the_sources(crm_rows, crm_restored)
    tracker_rows, tracker_restored = await rows_of(tracker_url), await rows_of(restored_tracker)
    assert assert_restored_rows_are_the_sources(tracker_rows, tracker_restored) == ["events"]
    engine = create_engine(normalise_database_url(restored_crm))
    try:
        async with engine.connect() as conn:
            numbers = list(await conn.scalars(text("SELECT case_number FROM service_case ORDER BY id")))
            without_events = await conn.scalar(
                text("SELECT count(*) FROM service_case WHERE id NOT IN (SELECT case_id FROM case_event)")
            )
    finally:
        await engine.dispose()
    # pg_dump's snapshot: the cases committed in order up to one moment, each with its event
    assert numbers == load.committed_cases[: len(numbers)]
    assert set(cases_before) <= set(numbers)
    assert without_events == 0
    assert {table: len(rows) for table, rows in crm_restored.items()} == manifest.parts[0].tables
    assert 200 + events_before <= len(tracker_restored["events"]) == manifest.parts[1].tables["events"]


async def test_the_tracker_beside_the_crm_is_one_part_and_a_non_empty_target_needs_force(
    live_server: PostgresServer, empty_server: PostgresServer, tmp_path: Path
) -> None:
    """``bin/env.sh``'s PostgreSQL default: the engine's events table in the CRM's database."""
    crm_url = live_server.create_database("together")
    await upgrade_database_async(normalise_database_url(crm_url))
    engine = create_engine(normalise_database_url(crm_url))
    try:
        await create_tracker_store(engine, 50)
        await Load().run(create_sessionmaker(engine), engine, cases=5)
    finally:
        await engine.dispose()
    out = tmp_path / "together.backup"
    code, _, stderr = await cli("backup", "--out", str(out), database_url=crm_url, tracker_url=None)
    assert code == 0, stderr
    assert [part.holds for part in read_manifest(out).parts] == [["crm", "tracker"]]

    target = empty_server.create_database("together")
    assert (await cli("restore", str(out), database_url=target, tracker_url=None))[0] == 0
    assert await rows_of(target) == await rows_of(crm_url)

    code, _, stderr = await cli("restore", str(out), database_url=target, tracker_url=None)
    assert code == 1 and "is not empty; restore into an empty one, or add --force" in stderr
    code, _, stderr = await cli("restore", "--force", str(out), database_url=target, tracker_url=None)
    assert code == 0, stderr
    assert await rows_of(target) == await rows_of(crm_url)
