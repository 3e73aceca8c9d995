"""Citizens' rights over their data and the retention periods, on the CRM's own database.

Each test files real cases and messages through the services the channels use, then asks
for what is held, exports it, erases it, or lets time pass the retention periods.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.lifecycle import CaseAction, CaseStatus
from crm_backend.models import (
    AuditEntry,
    CaseEvent,
    ChannelIdentity,
    Citizen,
    LinkCode,
    LoginFailure,
    LookupAttempt,
    Message,
    PrivacyRequest,
    ServiceCase,
    StaffLabel,
    utcnow,
)
from crm_backend.services import privacy
from crm_backend.services.conversations import (
    OutgoingMessage,
    current_conversation,
    log_incoming,
    log_outgoing,
    resolve_identity,
)
from crm_backend.services.intake import Report, file_case
from crm_backend.services.moves import Actor, move_case
from crm_backend.services.retention import apply_retention
from crm_backend.services.staff_labels import correct_category
from crm_backend.settings import RetentionSettings
from tests.support.moves import department_named

Sessions = async_sessionmaker[AsyncSession]
PHONE = "13912345678"
PLACE = "A3区阳光花园小区7栋东门"
WORDS = "小区门口的路灯坏了一个多星期了晚上很黑"


async def citizen_with_a_case(sessions: Sessions, external_id: str = "browser-1") -> tuple[int, str, str]:
    """A web citizen who wrote, was answered and filed a case; (citizen id, sender id, case number)."""
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", external_id)
        conversation = await current_conversation(session, identity)
        log_incoming(session, conversation, WORDS, max_chars=2000)
        log_outgoing(session, conversation, [OutgoingMessage("请问在哪里？")])
        case = await file_case(
            session,
            identity,
            Report(description=WORDS, location=PLACE, contact_phone=PHONE),
            conversation_id=conversation.id,
        )
        # Staff put the category right: the label keeps the text for retraining.
        await correct_category(session, Actor.system("bot"), case, "环境保护")
        citizen = await session.get(Citizen, identity.citizen_id)
        assert citizen is not None
        citizen.phone = PHONE
        return identity.citizen_id, identity.sender_id, case.case_number


async def label_texts(sessions: Sessions) -> dict[str, str]:
    """The text kept with each case's staff label, by case number."""
    async with sessions() as session:
        rows = await session.execute(
            select(ServiceCase.case_number, StaffLabel.text).join(ServiceCase, ServiceCase.id == StaffLabel.case_id)
        )
        return dict(rows.tuples().all())


async def archive(sessions: Sessions, case_number: str, *, days_ago: int) -> None:
    """Take a case to 已归档, its last moves `days_ago` days back."""
    then = utcnow() - timedelta(days=days_ago)
    async with sessions.begin() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == case_number))
        assert case is not None
        department_id = await department_named(session, "市政管理局")
        actor = Actor.system("staff:li")
        if case.status == CaseStatus.RECEIVED:
            await move_case(session, actor, case, CaseAction.DISPATCH, department_id=department_id, now=then)
        for action in (CaseAction.ACCEPT, CaseAction.START):
            await move_case(session, actor, case, action, now=then)
        await move_case(session, actor, case, CaseAction.RESOLVE, note=f"已修复，联系人{PHONE}", now=then)
        await move_case(session, actor, case, CaseAction.REVIEW, now=then)
        await move_case(session, actor, case, CaseAction.ARCHIVE, now=then)


def raw_rows(database: Path) -> str:
    """Every row of every table of the SQLite file, as text (what someone reading the disk finds)."""
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(FULL)")
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(str(row) for table in tables for row in connection.execute(f'SELECT * FROM "{table}"'))


async def test_what_is_held_is_listed_masked(sessions: Sessions) -> None:
    citizen_id, _, case_number = await citizen_with_a_case(sessions)
    async with sessions() as session:
        held = await privacy.held_data(session, citizen_id)
    assert held.phone == "139****5678"
    assert held.case_numbers == [case_number] and held.open_cases == 1
    assert (held.conversations, held.messages) == (1, 2)
    assert held.channels == ["网页"] and held.pending == []


async def test_asking_twice_files_one_request_of_each_kind(sessions: Sessions) -> None:
    citizen_id, _, _ = await citizen_with_a_case(sessions)
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", "browser-1")
        first, new = await privacy.file_request(session, identity, privacy.ERASURE)
        again, new_again = await privacy.file_request(session, identity, privacy.ERASURE)
        copy, _ = await privacy.file_request(session, identity, privacy.COPY)
    assert new and not new_again and again.id == first.id and copy.id != first.id
    async with sessions() as session:
        assert (await privacy.held_data(session, citizen_id)).pending == ["erasure", "copy"]
        rows = await privacy.list_requests(session)
    assert [(row.request.kind, row.phone, row.open_cases) for row in rows] == [
        ("erasure", "139****5678", 1),
        ("copy", "139****5678", 1),
    ]


async def test_an_export_holds_everything_unmasked_and_is_audited(sessions: Sessions) -> None:
    citizen_id, _, case_number = await citizen_with_a_case(sessions)
    async with sessions.begin() as session:
        exported = await privacy.export_citizen(session, citizen_id, None)
    text = json.dumps(exported, ensure_ascii=False)
    assert PHONE in text and PLACE in text and WORDS in text and case_number in text
    assert [m["text"] for m in exported["conversations"][0]["messages"]] == [WORDS, "请问在哪里？"]
    async with sessions() as session:
        assert await session.scalar(select(AuditEntry.target).where(AuditEntry.action == "privacy.exported")) == (
            f"citizen:{citizen_id}"
        )


async def test_forgetting_a_citizen_leaves_no_trace_of_their_words_place_or_phone(
    sessions: Sessions, tmp_path: Path
) -> None:
    citizen_id, sender_id, case_number = await citizen_with_a_case(sessions)
    other_id, _, other_case = await citizen_with_a_case(sessions, "browser-2")
    # The engine's tracker store: Rasa's events table, this citizen's conversation and another's.
    tracker = tmp_path / "tracker.db"
    with sqlite3.connect(tracker) as connection:
        connection.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, sender_id TEXT, timestamp REAL, data TEXT)")
        connection.executemany(
            "INSERT INTO events (sender_id, timestamp, data) VALUES (?, ?, ?)",
            [(sender_id, 1.0, json.dumps({"text": WORDS}, ensure_ascii=False)), ("web:someone-else", 1.0, "{}")],
        )
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", "browser-1")
        await privacy.file_request(session, identity, privacy.ERASURE)
        session.add(LookupAttempt(sender_key=sender_id, case_number=case_number, succeeded=True))
    async with sessions.begin() as session:
        forgotten = await privacy.forget_citizen(session, citizen_id, None, tracker_store_url=f"sqlite:///{tracker}")
    assert forgotten.as_dict() == {"cases": 1, "messages": 2, "identities": 1, "tracker_events": 1}

    async with sessions() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == case_number))
        assert case is not None
        # What the dashboard counts stays; what identifies the citizen went.
        assert (case.category, case.status, case.created_at is not None) == (case.category, CaseStatus.RECEIVED, True)
        assert (case.description, case.location, case.contact_phone) == (privacy.ERASED, privacy.ERASED, "")
        citizen = await session.get(Citizen, citizen_id)
        assert citizen is not None and citizen.phone is None and citizen.erased_at is not None
        assert await session.scalar(select(PrivacyRequest.status)) == privacy.DONE
        assert await session.scalar(select(func.count()).select_from(LookupAttempt)) == 0
        identity_id = await session.scalar(select(ChannelIdentity.id).where(ChannelIdentity.citizen_id == citizen_id))
        # The same browser comes back as someone new.
        assert (
            await session.scalar(
                select(func.count()).select_from(ChannelIdentity).where(ChannelIdentity.external_id == "browser-1")
            )
            == 0
        )
        assert identity_id is not None
        # The other citizen is untouched.
        other = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == other_case))
        assert other is not None and other.description == WORDS
        assert (await session.get(Citizen, other_id)).phone == PHONE  # type: ignore[union-attr]
    # The staff label keeps its categories and loses the text; the other citizen's keeps it.
    assert await label_texts(sessions) == {case_number: "", other_case: WORDS}
    async with sessions() as session:
        assert (await session.scalar(select(AuditEntry.detail).where(AuditEntry.action == "privacy.erased"))) == (
            "cases=1 messages=2 identities=1 tracker_events=1"
        )
    with sqlite3.connect(tracker) as connection:
        assert [row[0] for row in connection.execute("SELECT sender_id FROM events")] == ["web:someone-else"]
    # Running it again changes nothing and fails on nothing.
    async with sessions.begin() as session:
        again = await privacy.forget_citizen(session, citizen_id, None, tracker_store_url=f"sqlite:///{tracker}")
    assert again.as_dict() == {"cases": 0, "messages": 0, "identities": 0, "tracker_events": 0}


async def test_an_erased_citizens_data_is_not_on_the_disk(sessions: Sessions, tmp_path: Path) -> None:
    citizen_id, _, _ = await citizen_with_a_case(sessions)
    async with sessions.begin() as session:
        await privacy.forget_citizen(session, citizen_id, None, tracker_store_url=None)
    database = next(tmp_path.glob("*.db"))
    found = raw_rows(database)
    assert WORDS not in found and PLACE not in found and PHONE not in found


async def test_retention_pseudonymises_cases_archived_past_the_period_and_keeps_their_figures(
    sessions: Sessions,
) -> None:
    policy = RetentionSettings()
    _, _, old = await citizen_with_a_case(sessions, "browser-old")
    _, _, recent = await citizen_with_a_case(sessions, "browser-recent")
    _, _, still_open = await citizen_with_a_case(sessions, "browser-open")
    await archive(sessions, old, days_ago=policy.case_days + 1)
    await archive(sessions, recent, days_ago=policy.case_days - 1)

    report = await apply_retention(sessions, policy)
    assert report.cases_pseudonymised == 1
    async with sessions() as session:
        cases = {case.case_number: case for case in (await session.scalars(select(ServiceCase))).all()}
        notes = (
            await session.scalars(
                select(CaseEvent.note).where(CaseEvent.case_id == cases[old].id, CaseEvent.note != "")
            )
        ).all()
    assert (cases[old].description, cases[old].location, cases[old].contact_phone) == (
        privacy.ERASED,
        privacy.ERASED,
        "",
    )
    assert cases[old].status == CaseStatus.ARCHIVED and cases[old].department == cases[recent].department
    assert set(notes) == {privacy.ERASED}  # the 办结 note named the phone
    assert cases[recent].description == WORDS and cases[still_open].description == WORDS
    assert await label_texts(sessions) == {old: "", recent: WORDS, still_open: WORDS}
    # Once is enough: a second run finds nothing more.
    assert (await apply_retention(sessions, policy)).cases_pseudonymised == 0


async def test_retention_deletes_old_logs_and_attempts_and_keeps_recent_ones(sessions: Sessions) -> None:
    policy = RetentionSettings()
    await citizen_with_a_case(sessions)
    now = utcnow()
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", "browser-1")
        conversation = await current_conversation(session, identity)
        old = log_incoming(session, conversation, "很久以前的一句话", max_chars=2000)
        old.created_at = now - timedelta(days=policy.conversation_days + 1)
        session.add_all(
            [
                LookupAttempt(
                    sender_key="web:x", case_number="1", succeeded=False, created_at=now - timedelta(days=31)
                ),
                LookupAttempt(
                    sender_key="web:x", case_number="2", succeeded=False, created_at=now - timedelta(days=29)
                ),
                LoginFailure(username="li", address="10.0.0.1", created_at=now - timedelta(days=181)),
                LoginFailure(username="li", address="10.0.0.1", created_at=now - timedelta(days=179)),
                LinkCode(
                    code="123456",
                    citizen_id=identity.citizen_id,
                    identity_id=identity.id,
                    created_at=now - timedelta(days=9),
                    expires_at=now - timedelta(days=8),
                ),
            ]
        )

    report = await apply_retention(sessions, policy)
    assert (
        report.messages_deleted,
        report.lookups_deleted,
        report.login_failures_deleted,
        report.link_codes_deleted,
    ) == (
        1,
        1,
        1,
        1,
    )
    async with sessions() as session:
        texts = (await session.scalars(select(Message.text).order_by(Message.id))).all()
        assert texts == [WORDS, "请问在哪里？"]
        assert (await session.scalars(select(LookupAttempt.case_number))).all() == ["2"]
        assert await session.scalar(select(func.count()).select_from(LoginFailure)) == 1
        assert await session.scalar(select(AuditEntry.action).where(AuditEntry.action == "retention.applied"))


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"RETENTION_CASE_DAYS": "0"}, "RETENTION_CASE_DAYS"),
        ({"RETENTION_CONVERSATION_DAYS": "半年"}, "RETENTION_CONVERSATION_DAYS"),
        ({"RETENTION_LOGIN_FAILURE_DAYS": "90"}, "at least 180"),
    ],
)
def test_bad_retention_periods_are_refused_at_start(env: dict[str, str], problem: str) -> None:
    from crm_backend.settings import SettingsError

    with pytest.raises(SettingsError, match=problem):
        RetentionSettings.from_env(env)


async def test_an_operator_exports_forgets_and_applies_retention_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crm_backend.db import create_engine, create_sessionmaker
    from tests.support.cli import run_cli

    database = tmp_path / "crm.db"
    assert run_cli("migrate", database=database).returncode == 0
    engine = create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        _, _, case_number = await citizen_with_a_case(create_sessionmaker(engine))
    finally:
        await engine.dispose()
    monkeypatch.setenv("TRACKER_STORE_URL", f"sqlite:///{tmp_path / 'tracker.db'}")  # no engine ran: no events

    exported = run_cli("export-citizen", "--case", case_number, "--out", str(tmp_path / "copy.json"), database=database)
    assert exported.returncode == 0, exported.stderr
    copy = json.loads((tmp_path / "copy.json").read_text(encoding="utf-8"))
    assert copy["citizen"]["phone"] == PHONE and copy["cases"][0]["location"] == PLACE

    forgotten = run_cli("forget-citizen", "--case", case_number, database=database)
    assert forgotten.returncode == 0, forgotten.stderr
    assert json.loads(forgotten.stdout)["cases"] == 1
    assert PHONE not in raw_rows(database) and WORDS not in raw_rows(database)

    applied = run_cli("retention", database=database)
    assert applied.returncode == 0 and "cases_pseudonymised" in applied.stdout

    unknown = run_cli("forget-citizen", "--case", "20990101-0001", database=database)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error:")


async def test_retention_deletes_the_engines_events_older_than_the_conversation_period(
    sessions: Sessions, tmp_path: Path
) -> None:
    policy = RetentionSettings()
    now = utcnow()
    tracker = tmp_path / "tracker.db"
    with sqlite3.connect(tracker) as connection:
        connection.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, sender_id TEXT, timestamp REAL, data TEXT)")
        connection.executemany(
            "INSERT INTO events (sender_id, timestamp, data) VALUES (?, ?, ?)",
            [
                ("web:a", (now - timedelta(days=policy.conversation_days + 1)).timestamp(), "old"),
                ("web:a", (now - timedelta(days=policy.conversation_days - 1)).timestamp(), "recent"),
            ],
        )
    report = await apply_retention(sessions, policy, tracker_store_url=f"sqlite:///{tracker}", now=now)
    assert report.tracker_events_deleted == 1
    with sqlite3.connect(tracker) as connection:
        assert [row[0] for row in connection.execute("SELECT data FROM events")] == ["recent"]
    # No tracker store yet (the engine never ran): nothing to do, nothing fails.
    empty = await apply_retention(sessions, policy, tracker_store_url=f"sqlite:///{tmp_path / 'none.db'}")
    assert empty.tracker_events_deleted == 0
