"""``rotate-key``: every value moves under the new current key while citizens keep writing."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend import rotation
from crm_backend.crypto import KeyRing, active_key_ring, install_key_ring, key_id_of
from crm_backend.db import create_engine
from crm_backend.models import CaseEvent, Citizen, Message, ServiceCase
from crm_backend.services.conversations import current_conversation, log_incoming, resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.settings import normalise_database_url
from tests.support.cli import run_cli

Sessions = async_sessionmaker[AsyncSession]
NEW_KEY = bytes(range(50, 66))  # SM4, 128 bits
CASES = 12
MESSAGES_BEFORE = 60
MESSAGES_DURING = 40


@pytest.fixture
def rotated_ring() -> Iterator[KeyRing]:
    """The ring after the operator added key ``test2`` and made it current (the app restarted with it)."""
    old = active_key_ring()
    ring = KeyRing(keys={**old.keys, "test2": NEW_KEY}, current="test2", hmac_key=old.hmac_key)
    yield ring
    install_key_ring(None)  # back to the environment's ring for the next test


def raw_key_ids(database: Path) -> dict[str, set[str | None]]:
    """The key ids of every stored value of every encrypted CRM column, read from the file."""
    found: dict[str, set[str | None]] = {}
    with sqlite3.connect(database) as connection:
        for spec in rotation.crm_columns():
            column = f'"{spec.column}"'
            values = connection.execute(
                f"SELECT {column} FROM \"{spec.table}\" WHERE {column} IS NOT NULL AND {column} != ''"
            ).fetchall()
            if values:
                found[spec.place] = {key_id_of(value) for (value,) in values}
    return found


async def write_before(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        for n in range(CASES):
            identity = await resolve_identity(session, "web", f"citizen-{n}")
            conversation = await current_conversation(session, identity)
            for m in range(MESSAGES_BEFORE // CASES):
                log_incoming(session, conversation, f"第{n}位市民的第{m}条消息", max_chars=1000, engine_input="hi")
            await file_case(
                session,
                identity,
                Report(description=f"路灯坏了{n}", location=f"A3区五一大道{n}号", contact_phone=f"139000000{n:02d}"),
            )


async def write_during(sessions: Sessions, stop: asyncio.Event) -> int:
    """A citizen writing message after message, and staff editing cases, until rotation ends."""
    written = 0
    while not stop.is_set() or written < MESSAGES_DURING:
        async with sessions.begin() as session:
            identity = await resolve_identity(session, "web", "citizen-during")
            conversation = await current_conversation(session, identity)
            log_incoming(session, conversation, f"轮换期间的消息{written}", max_chars=1000)
            case = await session.scalar(select(ServiceCase).where(ServiceCase.id == 1 + written % CASES))
            assert case is not None
            case.description = f"{case.description}；补充{written}"
        written += 1
        await asyncio.sleep(0)
    return written


async def test_rotation_under_concurrent_writers_leaves_every_value_readable_and_none_under_the_old_key(
    sessions: Sessions, tmp_path: Path, rotated_ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_before(sessions)
    database = tmp_path / "crm.db"
    assert {"test1"} in raw_key_ids(database).values()
    monkeypatch.setattr(rotation, "BATCH", 7)  # many short transactions, interleaved with the writers
    install_key_ring(rotated_ring)
    engine = create_engine(normalise_database_url(f"sqlite:///{database}"))
    stop = asyncio.Event()
    try:
        writer = asyncio.create_task(write_during(sessions, stop))
        report = await rotation.rotate(engine, rotated_ring, rotation.crm_columns())
        stop.set()
        written = await writer
    finally:
        await engine.dispose()
    assert written >= MESSAGES_DURING and report.total_remaining == 0
    assert report.total_rewritten >= MESSAGES_BEFORE + 3 * CASES
    assert all(ids == {"test2"} for ids in raw_key_ids(database).values()), raw_key_ids(database)
    only_new = KeyRing(keys={"test2": NEW_KEY}, current="test2", hmac_key=rotated_ring.hmac_key)
    install_key_ring(only_new)  # the old key is gone: everything still reads
    async with sessions() as session:
        messages = (await session.scalars(select(Message.text))).all()
        cases = (await session.scalars(select(ServiceCase).order_by(ServiceCase.id))).all()
        phones = (await session.scalars(select(Citizen.phone))).all()
        await session.scalars(select(CaseEvent.note))
    assert len(messages) == MESSAGES_BEFORE + written and "第0位市民的第0条消息" in messages
    assert all("补充" in case.description for case in cases)  # no edit made during rotation was lost
    assert sorted(phone for phone in phones if phone) == [f"139000000{n:02d}" for n in range(CASES)]


async def test_rotation_encrypts_the_tracker_store_s_plain_rows_and_moves_old_ones(
    tmp_path: Path, rotated_ring: KeyRing
) -> None:
    database = tmp_path / "tracker.db"
    old_row = active_key_ring().encrypt(json.dumps({"event": "user", "text": "旧密钥下的消息"}), "events.data")
    plain_row = json.dumps({"event": "user", "text": "加密之前的消息"}, ensure_ascii=False)
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, sender_id TEXT, data TEXT)")
        connection.executemany("INSERT INTO events (sender_id, data) VALUES ('web:a', ?)", [(old_row,), (plain_row,)])
    crm = create_engine(normalise_database_url(f"sqlite:///{tmp_path / 'crm.db'}"))
    tracker = create_engine(normalise_database_url(f"sqlite:///{database}"))
    try:
        report = await rotation.rotate(tracker, rotated_ring, rotation.TRACKER_COLUMNS)
    finally:
        await crm.dispose()
        await tracker.dispose()
    assert (report.total_rewritten, report.total_remaining) == (2, 0)
    with sqlite3.connect(database) as connection:
        stored = [value for (value,) in connection.execute("SELECT data FROM events ORDER BY id")]
    assert [key_id_of(value) for value in stored] == ["test2", "test2"]
    assert [json.loads(rotated_ring.decrypt(value, "events.data"))["text"] for value in stored] == [
        "旧密钥下的消息",
        "加密之前的消息",
    ]


async def test_the_rotate_key_command_moves_crm_and_tracker_store_and_refuses_without_keys(
    sessions: Sessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await write_before(sessions)
    tracker = tmp_path / "tracker.db"
    with sqlite3.connect(tracker) as connection:
        connection.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, sender_id TEXT, data TEXT)")
        connection.execute("""INSERT INTO events (sender_id, data) VALUES ('web:a', '{"event": "user"}')""")
    old = active_key_ring()
    monkeypatch.setenv(
        "DATA_KEYS", f"test1:{base64.b64encode(old.keys['test1']).decode()},test2:{base64.b64encode(NEW_KEY).decode()}"
    )
    monkeypatch.setenv("DATA_KEY_CURRENT", "test2")
    monkeypatch.setenv("TRACKER_STORE_URL", f"sqlite:///{tracker}")
    result = await asyncio.to_thread(run_cli, "rotate-key", database=tmp_path / "crm.db")
    assert result.returncode == 0, result.stderr
    assert "re-encrypted" in result.stdout and "events.data: 1 re-encrypted, 0 left" in result.stdout
    assert all(ids == {"test2"} for ids in raw_key_ids(tmp_path / "crm.db").values())
    with sqlite3.connect(tracker) as connection:
        assert key_id_of(connection.execute("SELECT data FROM events").fetchone()[0]) == "test2"
    monkeypatch.delenv("DATA_KEYS")
    refused = await asyncio.to_thread(run_cli, "rotate-key", database=tmp_path / "crm.db")
    assert refused.returncode == 1 and "DATA_KEYS is not set" in refused.stderr


class EditingRing(KeyRing):
    """The rotated ring, and staff edit case 1's description between rotation's read and its rewrite."""

    database: Path | None = None

    def encrypt_bytes(self, plaintext: bytes, place: str) -> str:
        if place == "service_case.description" and self.database is not None:
            database, self.database = self.database, None  # once
            with sqlite3.connect(database) as connection:
                edit = self.encrypt("工作人员刚刚修改的描述", place)
                connection.execute("UPDATE service_case SET description = ? WHERE id = 1", (edit,))
        return super().encrypt_bytes(plaintext, place)


async def test_a_value_changed_between_rotation_s_read_and_its_rewrite_keeps_the_change(
    sessions: Sessions, tmp_path: Path, rotated_ring: KeyRing
) -> None:
    await write_before(sessions)
    ring = EditingRing(keys=rotated_ring.keys, current="test2", hmac_key=rotated_ring.hmac_key)
    object.__setattr__(ring, "database", tmp_path / "crm.db")
    install_key_ring(ring)
    engine = create_engine(normalise_database_url(f"sqlite:///{tmp_path / 'crm.db'}"))
    try:
        report = await rotation.rotate(engine, ring, rotation.crm_columns())
    finally:
        await engine.dispose()
    assert report.total_remaining == 0 and report.rewritten["service_case.description"] == CASES - 1
    async with sessions() as session:
        edited = await session.get(ServiceCase, 1)
    assert edited is not None and edited.description == "工作人员刚刚修改的描述"


def test_every_encrypted_column_is_rotated() -> None:
    places = {spec.place for spec in rotation.crm_columns()}
    assert {"citizen.phone", "service_case.contact_phone", "message.text", "case_event.note"} <= places
    assert all(place == f"{spec.table}.{spec.column}" for spec in rotation.crm_columns() for place in [spec.place])
    assert sa.inspect(ServiceCase).columns["description"].type.place == "service_case.description"
