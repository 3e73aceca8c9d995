"""Personal columns are encrypted in the database, blind indexes find them, migration 0021 encrypts old rows."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.crypto import active_key_ring, is_encrypted
from crm_backend.db import _alembic_config, create_engine, create_sessionmaker, upgrade_database_async
from crm_backend.models import CaseEvent, Citizen, EncryptedColumnQuery, Message, ServiceCase
from crm_backend.services.citizens import citizens_with_phone
from crm_backend.services.conversations import current_conversation, log_incoming, resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.services.lookup import digits_prove
from crm_backend.settings import normalise_database_url

Sessions = async_sessionmaker[AsyncSession]
PHONE = "13912345678"
ADDRESS = "幸福路88号小区东门"
SENTENCE = "东门的路灯已经坏了整整三个星期"


def raw_dump(database: Path) -> str:
    """Every value of every table of a SQLite file, as text (the WAL checkpointed first)."""
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(repr(row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"'))


async def file_known_case(sessions: Sessions) -> str:
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", "known-citizen")
        conversation = await current_conversation(session, identity)
        log_incoming(
            session,
            conversation,
            SENTENCE,
            max_chars=1000,
            engine_input=SENTENCE,
            attachment={"kind": "location", "latitude": 31.2304, "longitude": 121.4737},
        )
        case = await file_case(session, identity, Report(description=SENTENCE, location=ADDRESS, contact_phone=PHONE))
        return case.case_number


async def test_a_filed_case_s_phone_address_and_words_are_not_in_the_database_file(
    sessions: Sessions, tmp_path: Path
) -> None:
    case_number = await file_known_case(sessions)
    dump = raw_dump(tmp_path / "crm.db")
    for secret in (PHONE, PHONE[-4:], ADDRESS, SENTENCE, "121.4737"):
        assert secret not in dump
    assert "v1:sm4:test1:" in dump
    async with sessions() as session:  # and the app reads them back whole
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == case_number))
        message = await session.scalar(select(Message))
        citizen = await session.scalar(select(Citizen))
    assert case is not None and message is not None and citizen is not None
    assert (case.contact_phone, case.location, case.description) == (PHONE, ADDRESS, SENTENCE)
    assert (message.text, message.engine_input) == (SENTENCE, SENTENCE)
    assert message.attachment == {"kind": "location", "latitude": 31.2304, "longitude": 121.4737}
    assert citizen.phone == PHONE


async def test_blind_indexes_follow_the_phone_and_the_location(sessions: Sessions) -> None:
    case_number = await file_known_case(sessions)
    ring = active_key_ring()
    async with sessions() as session:
        case = await session.scalar(
            select(ServiceCase).where(ServiceCase.contact_phone_index == ring.blind_index(PHONE, "phone"))
        )
        citizen = await session.scalar(select(Citizen).where(Citizen.phone_index == ring.blind_index(PHONE, "phone")))
        by_place = await session.scalar(
            select(ServiceCase.case_number).where(ServiceCase.location_index == ring.blind_index(ADDRESS, "location"))
        )
    assert case is not None and case.case_number == case_number and citizen is not None and by_place == case_number
    assert case.contact_phone_last4_index == ring.blind_index(PHONE[-4:], "phone_last4")
    assert digits_prove(case, PHONE[-4:]) and not digits_prove(case, "0000") and not digits_prove(case, None)


async def test_citizens_are_found_by_their_phone_number_through_the_blind_index(sessions: Sessions) -> None:
    await file_known_case(sessions)
    async with sessions.begin() as session:
        other = await resolve_identity(session, "web", "other-citizen")
        await file_case(session, other, Report(description="井盖丢了", location=ADDRESS, contact_phone="13800001111"))
    async with sessions() as session:
        assert await citizens_with_phone(session, PHONE) == [1]
        assert await citizens_with_phone(session, "13800001111") == [2]
        assert await citizens_with_phone(session, "13800002222") == [] and await citizens_with_phone(session, "") == []


def test_sql_that_would_compare_ciphertext_is_refused_when_written() -> None:
    """A random nonce makes `== 'text'`, LIKE or IN on ciphertext silently wrong: refused at once."""
    for build in (
        lambda: ServiceCase.contact_phone == PHONE,
        lambda: ServiceCase.description.contains("公司"),
        lambda: ServiceCase.location.in_([ADDRESS]),
        lambda: Message.text.like("%灯%"),
        lambda: Message.attachment == {"kind": "location"},
    ):
        with pytest.raises(EncryptedColumnQuery, match="encrypted at rest"):
            build()
    # What stays possible: emptiness and NULL, and every blind index.
    select(CaseEvent).where(CaseEvent.note != "", Citizen.phone.is_(None), Message.attachment.is_not(None))
    select(ServiceCase).where(ServiceCase.contact_phone_index == "x")


async def test_a_value_copied_into_another_column_does_not_read(sessions: Sessions, tmp_path: Path) -> None:
    await file_known_case(sessions)
    with sqlite3.connect(tmp_path / "crm.db") as connection:
        connection.execute("UPDATE service_case SET location = description")
    async with sessions() as session:
        with pytest.raises(Exception, match="authentication"):
            await session.scalar(select(ServiceCase))


async def test_an_empty_note_stays_empty_so_filters_on_it_keep_working(sessions: Sessions, tmp_path: Path) -> None:
    await file_known_case(sessions)
    async with sessions() as session:
        notes = (await session.scalars(select(CaseEvent.note).where(CaseEvent.note != ""))).all()
    assert notes == []


# Rows as the app wrote them before migration 0021 (plain), one statement each (SQLite and PostgreSQL).
OLD_ROWS = [
    f"""INSERT INTO citizen (id, phone, notices_enabled, created_at)
        VALUES (1, '{PHONE}', true, '2026-12-01 08:00:00+00')""",
    """INSERT INTO channel_identity (id, channel, external_id, citizen_id, created_at)
        VALUES (1, 'web', 'old', 1, '2026-12-01 08:00:00+00')""",
    """INSERT INTO conversation (id, identity_id, channel, handoff_status, started_at, last_message_at)
        VALUES (1, 1, 'web', 'bot', '2026-12-01 08:00:00+00', '2026-12-01 08:00:00+00')""",
    f"""INSERT INTO message (id, conversation_id, channel, direction, sender_kind, text, original_length,
                             truncated, attachment, engine_input, created_at)
        VALUES (1, 1, 'web', 'in', 'citizen', '{SENTENCE}', 10, false,
                '{{"kind": "location", "latitude": 31.2304, "longitude": 121.4737}}', '{SENTENCE}',
                '2026-12-01 08:00:00+00')""",
    f"""INSERT INTO service_case (id, case_number, citizen_id, identity_id, description, location, contact_phone,
                                  status, urgent, supervised, created_at, updated_at)
        VALUES (1, '20261201-0001', 1, 1, '我们公司{SENTENCE}', '{ADDRESS}', '{PHONE}', 'received', false, false,
                '2026-12-01 08:00:00+00', '2026-12-01 08:00:00+00')""",
    f"""INSERT INTO case_event (id, case_id, to_status, kind, note, actor, created_at)
        VALUES (1, 1, 'received', 'status', '', 'system', '2026-12-01 08:00:00+00'),
               (2, 1, 'received', 'reply', '已联系{ADDRESS}物业', 'staff', '2026-12-01 09:00:00+00')""",
]


async def check_migrated_rows(sessions: Sessions) -> None:
    """What migration 0021 made of `OLD_ROWS`, read through the models."""
    async with sessions() as session:
        case = await session.scalar(select(ServiceCase))
        message = await session.scalar(select(Message))
        notes = (await session.scalars(select(CaseEvent.note).order_by(CaseEvent.id))).all()
        citizen = await session.get(Citizen, 1)
    assert case is not None and message is not None and citizen is not None
    assert (case.contact_phone, case.location, case.description) == (PHONE, ADDRESS, f"我们公司{SENTENCE}")
    assert case.names_business and digits_prove(case, PHONE[-4:])
    assert case.location_index == active_key_ring().blind_index(ADDRESS, "location")
    assert citizen.phone == PHONE and citizen.phone_index == active_key_ring().blind_index(PHONE, "phone")
    assert message.attachment == {"kind": "location", "latitude": 31.2304, "longitude": 121.4737}
    assert (message.text, message.engine_input) == (SENTENCE, SENTENCE)
    assert notes == ["", f"已联系{ADDRESS}物业"]


async def test_migration_0021_encrypts_the_rows_written_before_it(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    url = normalise_database_url(f"sqlite:///{database}")
    await asyncio.to_thread(command.upgrade, _alembic_config(url), "0019")
    with sqlite3.connect(database) as connection:
        for statement in OLD_ROWS:
            connection.execute(statement)
    await upgrade_database_async(url)
    dump = raw_dump(database)
    for secret in (PHONE, ADDRESS, SENTENCE, "121.4737"):
        assert secret not in dump
    engine = create_engine(url)
    try:
        await check_migrated_rows(create_sessionmaker(engine))
    finally:
        await engine.dispose()
    with sqlite3.connect(database) as connection:
        stored = connection.execute("SELECT note FROM case_event ORDER BY id").fetchall()
    assert stored[0] == ("",) and is_encrypted(stored[1][0])


async def test_migration_0021_needs_no_key_for_an_empty_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DATA_KEYS", "DATA_KEY_CURRENT", "DATA_HMAC_KEY"):
        monkeypatch.delenv(name)
    await upgrade_database_async(normalise_database_url(f"sqlite:///{tmp_path / 'new.db'}"))
