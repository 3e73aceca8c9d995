"""Production runs on PostgreSQL: the same migrations, services, actions and a full
conversation (CRM and engine tracker store) against a real PostgreSQL server.

The unit tests of the services and actions are collected here a second time, with the
`sessions` fixture overridden to give each test a fresh PostgreSQL database; so are the
bad-input tests of the REST channel and the web chat, with `stack` overridden to a stack on
PostgreSQL (which refuses text SQLite stores, such as NUL).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend import audit_chain
from crm_backend.db import MIGRATIONS_DIR, _alembic_config, create_engine, create_sessionmaker, upgrade_database_async
from crm_backend.settings import normalise_database_url
from tests.integration.test_encryption_at_rest import ADDRESS, PHONE, SENTENCE, file_known_case
from tests.integration.test_rest_channel import (  # noqa: F401  (run again on PostgreSQL)
    test_a_message_of_nul_and_zero_width_space_gets_the_empty_message_reply,
    test_a_staff_reply_with_control_characters_is_stored_without_them,
    test_control_characters_in_a_message_are_dropped_and_it_is_answered,
    test_malformed_requests_get_a_json_4xx,
    test_odd_text_gets_an_ordinary_reply,
)
from tests.integration.test_webchat import (  # noqa: F401  (run again on PostgreSQL; `chat` is conftest's)
    test_control_characters_in_a_frame_are_dropped_and_answered,
    test_lone_surrogate_in_text_is_stored_replaced_and_answered,
)
from tests.support.naming import unique
from tests.support.postgres import PostgresServer
from tests.support.stack import APP_PYTHON, ROOT, Stack
from tests.unit import test_encryption_at_rest as unit_at_rest
from tests.unit.test_actions import *  # noqa: F403  (run again on PostgreSQL)
from tests.unit.test_audit_chain import (  # noqa: F401  (run again on PostgreSQL: its row lock and trigger)
    test_a_rolled_back_transaction_leaves_no_link,
    test_audit_rows_form_one_chain_that_verifies,
    test_audit_verify_names_a_row_changed_in_the_database,
    test_audit_verify_names_the_row_after_one_deleted_or_rehashed,
    test_audit_verify_notices_rows_cut_from_the_end,
    test_audit_verify_says_ok_with_the_count,
    test_concurrent_writers_form_one_chain,
    test_the_database_refuses_to_change_or_delete_audit_rows,
)
from tests.unit.test_case_proofs import *  # noqa: F403  (run again on PostgreSQL)
from tests.unit.test_console_services import (  # noqa: F401  (run again on PostgreSQL: its isolation differs)
    people,
    test_concurrent_wrong_passwords_never_get_more_tries_than_the_limit,
)
from tests.unit.test_dashboard_kpi import *  # noqa: F403  (run again on PostgreSQL: its own SQL functions)
from tests.unit.test_history_import import (  # noqa: F401  (run again on PostgreSQL)
    desk,
    seeded,
    test_a_case_with_no_phone_cannot_be_proven_by_digits,
    test_a_message_of_a_known_user_joins_their_citizen,
    test_a_small_file_becomes_cases_citizens_and_a_resolved_case_field_by_field,
    test_importing_the_same_file_twice_adds_nothing,
    test_likes_and_dislikes_are_kept,
)
from tests.unit.test_limits import *  # noqa: F403  (run again on PostgreSQL)
from tests.unit.test_notifier import *  # noqa: F403  (run again on PostgreSQL)
from tests.unit.test_replay import *  # noqa: F403  (run again on PostgreSQL)
from tests.unit.test_reply_quality import (  # noqa: F401  (run again on PostgreSQL: the averages are its SQL)
    agent,
    test_a_staff_reply_through_the_console_service_is_stored_with_its_score,
    test_department_averages_are_one_aggregate_and_an_agent_sees_only_their_department,
    test_score_replies_scores_replies_written_without_a_score_once,
    test_the_result_of_a_resolve_is_scored_and_other_moves_are_not,
)
from tests.unit.test_services import *  # noqa: F403  (run again on PostgreSQL)
from tests.unit.test_shared_state import (  # noqa: F401  (run again on PostgreSQL: its row locks differ)
    prefix,
    redis_server,
    test_a_followup_pass_run_by_two_workers_at_once_asks_each_citizen_once,
    test_a_followup_question_is_marked_asked_before_the_engine_is_called,
    test_one_senders_messages_are_handled_in_order_across_two_processes,
    two_processes,
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer.running() as server:
        yield server


@pytest.fixture
async def sessions(postgres: PostgresServer) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Overrides tests/conftest.py: a fresh, migrated PostgreSQL database per test."""
    url = normalise_database_url(postgres.create_database(unique("t", "_")))
    await upgrade_database_async(url)
    engine = create_engine(url)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def test_migrations_create_every_table_on_postgres(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        tables = await session.run_sync(lambda sync: set(inspect(sync.connection()).get_table_names()))
        version = await session.scalar(text("SELECT version_num FROM alembic_version"))
    assert {"citizen", "channel_identity", "conversation", "message", "service_case", "case_event"} <= tables
    assert version == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


APPEND_ROWS = """
import asyncio, sys
from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.services import audit
from crm_backend.settings import normalise_database_url

async def main(url, label, count):
    engine = create_engine(normalise_database_url(url))
    sessions = create_sessionmaker(engine)
    async with sessions() as session:  # connected: say so, then wait for the go
        await session.execute(audit.select(audit.AuditEntry.id).limit(1))
    print("ready", flush=True)
    sys.stdin.readline()
    for number in range(count):
        async with sessions.begin() as session:
            audit.record(session, None, "test.append", f"{label}:{number}", actor_name=label)
    await engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_two_processes_appending_at_once_form_one_chain(postgres: PostgresServer) -> None:
    url = postgres.create_database(unique("chain", "_"))
    await upgrade_database_async(normalise_database_url(url))
    writers = [
        subprocess.Popen(
            [str(APP_PYTHON), "-c", APPEND_ROWS, url, name, "150"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for writer in writers:  # both connected before either writes
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        _, errors = writer.communicate(timeout=240)
        assert writer.returncode == 0, errors
    engine = create_engine(normalise_database_url(url))
    try:
        async with create_sessionmaker(engine)() as session:
            report = await audit_chain.verify_chain(session)
            actors = (await session.execute(text("SELECT actor FROM audit_entry ORDER BY id"))).scalars().all()
    finally:
        await engine.dispose()
    assert report == audit_chain.ChainReport(300)
    # The two writers really ran at once: their rows interleave in the chain.
    switches = sum(1 for earlier, later in itertools.pairwise(actors) if earlier != later)
    assert switches > 1, "the writers never overlapped"


async def test_the_migration_hashes_existing_audit_rows_on_postgres(postgres: PostgresServer) -> None:
    from alembic import command

    from crm_backend.db import _alembic_config

    url = postgres.create_database(unique("chainmig", "_"))
    config = _alembic_config(normalise_database_url(url))
    await asyncio.to_thread(command.upgrade, config, "0019")
    engine = create_engine(normalise_database_url(url))
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO audit_entry (actor_id, actor, action, target, detail, address, created_at) VALUES "
                    "(NULL, 'cli', 'user.create', 'chief', 'admin', '', '2026-12-01 08:00:00+00'), "
                    "(NULL, 'chief', 'login', '', '', '127.0.0.1', '2026-12-01 08:01:02.345678+00')"
                )
            )
    finally:
        await engine.dispose()
    await asyncio.to_thread(command.upgrade, config, "head")
    verified = subprocess.run(
        [str(APP_PYTHON), "-m", "crm_backend", "audit", "verify"],
        cwd=ROOT,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit chain OK: 2 rows" in verified.stdout


def test_stats_cli_reads_postgres(postgres: PostgresServer) -> None:
    url = postgres.create_database(unique("cli", "_"))
    result = subprocess.run(
        [str(APP_PYTHON), "-m", "crm_backend", "stats", "--json"],
        cwd=ROOT,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout)["cases"] == 0


@pytest.fixture(scope="module")
def pg_stack(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = postgres.create_database("stack")
    running = Stack(workdir=Path(tmp_path_factory.mktemp("pgstack")), database_url=url, tracker_store_url=url)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stack(pg_stack: Stack) -> Stack:
    """Overrides the SQLite stack for the bad-input tests imported above."""
    return pg_stack


def test_a_full_conversation_on_postgres_keeps_cases_and_trackers_there(
    pg_stack: Stack, postgres: PostgresServer
) -> None:
    sender = unique("pg")
    pg_stack.rest(sender, "我们单位拖欠了三个月工资一直不发，老板也联系不上")
    pg_stack.rest(sender, "A7县工业园区12栋")
    pg_stack.rest(sender, "18612345678")
    created = pg_stack.rest(sender, "/affirm")[0]["text"]
    case_number = re.search(r"\d{8}-\d{4,6}", created)
    assert case_number, created
    reply = pg_stack.rest(sender, f"查一下{case_number.group(0)}")[0]["text"]
    assert case_number.group(0) in reply and "当前状态" in reply
    assert pg_stack.api("GET", f"/cases/{case_number.group(0)}").json()["location"] == "A7县工业园区12栋"
    events = subprocess.run(
        [
            str(postgres.bindir / "psql"),
            postgres.url("stack"),
            "-tAc",
            f"SELECT count(*) FROM events WHERE sender_id = 'rest:{sender}'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(events.stdout.strip()) > 10


def test_a_filed_case_leaves_no_phone_address_or_sentence_in_the_raw_tables(
    pg_stack: Stack, postgres: PostgresServer
) -> None:
    """Every row of every table (the CRM's and the engine's events) read as text holds none of them."""
    case_number = file_known_case(pg_stack, unique("pgraw"))
    assert pg_stack.api("GET", f"/cases/{case_number}").json()["location"] == ADDRESS

    def psql(sql: str) -> str:
        return subprocess.run(
            [str(postgres.bindir / "psql"), postgres.url("stack"), "-tAc", sql],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    tables = psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").split()
    assert {"service_case", "message", "citizen", "events"} <= set(tables)
    for table in tables:
        rows = psql(f'SELECT t::text FROM "{table}" t')
        for secret in (PHONE, ADDRESS, SENTENCE, "五一大道188号", "漆黑"):
            escaped = json.dumps(secret)[1:-1]
            for form in (secret, escaped, escaped.replace("\\", "\\\\")):
                assert form not in rows, f"{secret} in {table}"


async def test_migration_0021_encrypts_the_rows_written_before_it_on_postgres(postgres: PostgresServer) -> None:
    url = normalise_database_url(postgres.create_database(unique("m21", "_")))
    await asyncio.to_thread(command.upgrade, _alembic_config(url), "0019")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for statement in unit_at_rest.OLD_ROWS:
                await connection.execute(sa.text(statement))
        await upgrade_database_async(url)
        await unit_at_rest.check_migrated_rows(create_sessionmaker(engine))
        rows: list[str] = []
        async with engine.connect() as connection:
            for table in ("citizen", "message", "service_case", "case_event"):
                rows += [
                    str(row) for row in (await connection.execute(sa.text(f"SELECT t::text FROM {table} t"))).all()
                ]
        raw = " ".join(rows)
    finally:
        await engine.dispose()
    for secret in (unit_at_rest.PHONE, unit_at_rest.ADDRESS, unit_at_rest.SENTENCE, "121.4737"):
        assert secret not in raw
