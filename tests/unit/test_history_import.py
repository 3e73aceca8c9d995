"""Importing the message board's history as cases: validation, exact fields, idempotence, the real files."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.data.history import HOT_ISSUES_FILE, WITH_REPLIES_FILE, history_file
from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.routing import seed_routing
from crm_backend.dispatch.service import Dispatcher
from crm_backend.importer import (
    SOURCE_CHANNEL,
    HistoryFileError,
    import_messages,
    letter_text,
    parse_messages,
    read_messages,
)
from crm_backend.lifecycle import CaseAction, CaseStatus
from crm_backend.models import (
    CaseEvent,
    ChannelIdentity,
    Citizen,
    Conversation,
    ImportedMessage,
    Message,
    ServiceCase,
)
from crm_backend.services import followup
from crm_backend.services.conversations import resolve_identity
from crm_backend.services.linking import LinkRefused, link_by_case
from crm_backend.services.lookup import lookup_progress
from crm_backend.services.moves import Actor, move_case
from tests.support.cli import run_cli
from tests.support.models import case_type_model, category_model

Sessions = async_sessionmaker[AsyncSession]
ROOT = Path(__file__).resolve().parents[2]


def china(text: str) -> datetime:
    """A China-time wall clock reading as an aware UTC datetime."""
    return datetime.fromisoformat(text + "+08:00").astimezone(UTC)


# Three messages in the replies format: one answered, one not (the other time format), and a
# second user. The first body spans two lines, so CSV lines and rows differ from line 3 on.
SMALL_CSV = (
    "msg_id,user,title,time,detail,reply,reply_time\n"
    '9001,U1,A3区麓谷街道路灯不亮,2019/2/28 11:25:05,"麓谷街道文轩路的路灯\n已经坏了两个星期，晚上很黑。",'
    "网友“U1”您好！路灯已于3月4日修复。,2019/3/5 9:00:00\n"
    "9002,U1,A7县星沙街道垃圾没人清运,2019-07-21 10:29:36,星沙街道时代星城门口的垃圾堆了一周没人清运。,,\n"
    "9003,U2,咨询A市公积金提取,2019/06/20 20:38:47,请问在A市买房怎么提取公积金？,,\n"
)


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Dispatcher:
    """The dispatch desk with the app's own models (trained now if `bin/setup` has not)."""
    scratch = tmp_path_factory.mktemp("models")
    return Dispatcher.load(category_model(scratch), case_type_model_path=case_type_model(scratch))


@pytest.fixture
async def seeded(sessions: Sessions) -> Sessions:
    async with sessions.begin() as session:
        await seed_routing(session)
    return sessions


def write(tmp_path: Path, content: str, name: str = "board.csv") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


async def count(session: AsyncSession, column: object) -> int:
    return int(await session.scalar(select(func.count(column))) or 0)  # type: ignore[arg-type]


# --- Reading and validating ---------------------------------------------------------------


def test_both_time_formats_are_read_as_china_time() -> None:
    messages = parse_messages(SMALL_CSV)
    assert [m.posted_at for m in messages] == [
        china("2019-02-28T11:25:05"),
        china("2019-07-21T10:29:36"),
        china("2019-06-20T20:38:47"),
    ]
    assert messages[0].reply_at == china("2019-03-05T09:00:00")
    assert [m.line for m in messages] == [2, 4, 5]  # where each record starts in the file
    assert messages[1].reply is None and messages[1].reply_at is None


def test_the_text_is_the_title_a_line_break_and_the_body() -> None:
    first = parse_messages(SMALL_CSV)[0]
    assert first.text == "A3区麓谷街道路灯不亮\n麓谷街道文轩路的路灯\n已经坏了两个星期，晚上很黑。"
    assert letter_text("", "  只有正文 ") == "只有正文"


def test_a_reply_time_given_as_a_date_only_is_midnight_china_time() -> None:
    content = "msg_id,user,title,time,detail,reply,reply_time\n1,U,标题,2018/3/19 10:05:04,正文,答复,2018/4/24\n"
    assert parse_messages(content)[0].reply_at == china("2018-04-24T00:00:00")


HEADER = "msg_id,user,title,time,detail,likes,dislikes\n"
GOOD = "1,U1,标题一,2019/2/28 11:25:05,正文一,3,0\n"


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (GOOD + ",U2,标题二,2019/3/1 8:00:00,正文二,0,0\n", ["line 3: no msg_id"]),
        (GOOD + "2,U2,标题二,2019/13/1 8:00,正文二,0,0\n", ["line 3: time '2019/13/1 8:00' is not a date and time"]),
        (GOOD + "2,U2, , ,正文二,0,0\n", ["line 3: time '' is not a date and time"]),
        (GOOD + "2,U2,,2019/3/1 8:00:00,  ,0,0\n", ["line 3: no title and no text"]),
        (GOOD + "1,U2,标题二,2019/3/1 8:00:00,正文二,0,0\n", ["line 3: msg_id 1 repeats line 2"]),
        (GOOD + "2,,标题二,2019/3/1 8:00:00,正文二,0,0\n", ["line 3: no user"]),
        (GOOD + "2,U2,标题二,2019/3/1 8:00:00,正文二,很多,0\n", ["line 3: likes '很多' is not a whole number >= 0"]),
    ],
)
def test_each_bad_row_is_reported_with_its_line(rows: str, expected: list[str]) -> None:
    with pytest.raises(HistoryFileError) as error:
        parse_messages(HEADER + rows)
    assert [str(problem) for problem in error.value.problems] == expected


def test_a_reply_needs_its_time_and_cannot_come_before_the_message() -> None:
    header = "msg_id,user,title,time,detail,reply,reply_time\n"
    rows = (
        "1,U,标题,2019/3/1 8:00:00,正文,答复,\n"
        "2,U,标题,2019/3/1 8:00:00,正文,答复,2019/2/1 8:00:00\n"
        "3,U,标题,2019/3/1 8:00:00,正文,,2019/3/2 8:00:00\n"
    )
    with pytest.raises(HistoryFileError) as error:
        parse_messages(header + rows)
    assert [str(problem) for problem in error.value.problems] == [
        "line 2: reply_time '' is not a date and time",
        "line 3: reply_time 2019/2/1 8:00:00 is before the message's time",
        "line 4: a reply_time without a reply",
    ]


def test_a_file_of_neither_format_is_refused() -> None:
    with pytest.raises(HistoryFileError, match="columns"):
        parse_messages("msg_id,title,detail\n1,标题,正文\n")
    with pytest.raises(HistoryFileError, match="no rows"):
        parse_messages(HEADER)


# --- Importing ----------------------------------------------------------------------------


async def test_a_small_file_becomes_cases_citizens_and_a_resolved_case_field_by_field(
    seeded: Sessions, desk: Dispatcher, tmp_path: Path
) -> None:
    path = write(tmp_path, SMALL_CSV)
    async with seeded.begin() as session:
        summary = await import_messages(session, desk, read_messages(path), source_file=path.name)
    assert (summary.rows, summary.new_cases, summary.skipped, summary.replies, summary.new_citizens) == (3, 3, 0, 1, 2)
    assert sum(summary.by_category.values()) == 3

    async with seeded() as session:
        identities = (await session.scalars(select(ChannelIdentity).order_by(ChannelIdentity.id))).all()
        assert [(i.channel, i.external_id) for i in identities] == [(SOURCE_CHANNEL, "U1"), (SOURCE_CHANNEL, "U2")]
        citizens = (await session.scalars(select(Citizen).order_by(Citizen.id))).all()
        assert [c.created_at for c in citizens] == [china("2019-02-28T11:25:05"), china("2019-06-20T20:38:47")]
        assert not any(c.notices_enabled for c in citizens)  # nobody can reach a board user
        cases = (await session.scalars(select(ServiceCase).order_by(ServiceCase.id))).all()
        assert [c.case_number for c in cases] == ["20190228-0001", "20190721-0001", "20190620-0001"]
        assert [c.identity_id for c in cases] == [identities[0].id, identities[0].id, identities[1].id]
        assert [c.created_at for c in cases] == [m.posted_at for m in parse_messages(SMALL_CSV)]
        answered = cases[0]
        assert answered.description == "A3区麓谷街道路灯不亮\n麓谷街道文轩路的路灯\n已经坏了两个星期，晚上很黑。"
        assert answered.district == "A3区" and "麓谷街道" in answered.location
        assert answered.category in CATEGORIES and answered.case_type in CASE_TYPES
        assert answered.status == CaseStatus.RESOLVED.value and answered.department
        assert answered.conversation_id is None and answered.contact_phone == ""
        assert answered.updated_at == china("2019-03-05T09:00:00")
        events = (
            await session.scalars(select(CaseEvent).where(CaseEvent.case_id == answered.id).order_by(CaseEvent.id))
        ).all()
        posted, replied = china("2019-02-28T11:25:05"), china("2019-03-05T09:00:00")
        assert [(e.kind, e.to_status, e.created_at) for e in events] == [
            ("status", "received", posted),
            ("status", "dispatched", posted),
            ("status", "accepted", replied),
            ("status", "in_progress", replied),
            ("reply", "in_progress", replied),
            ("status", "resolved", replied),
        ]
        assert events[4].note == events[5].note == "网友“U1”您好！路灯已于3月4日修复。"
        for unanswered in cases[1:]:
            assert unanswered.status in (CaseStatus.RECEIVED.value, CaseStatus.DISPATCHED.value)
        rows = (await session.scalars(select(ImportedMessage).order_by(ImportedMessage.id))).all()
        assert [(r.source, r.msg_id, r.case_id, r.title, r.likes, r.source_file) for r in rows] == [
            (SOURCE_CHANNEL, "9001", cases[0].id, "A3区麓谷街道路灯不亮", None, "board.csv"),
            (SOURCE_CHANNEL, "9002", cases[1].id, "A7县星沙街道垃圾没人清运", None, "board.csv"),
            (SOURCE_CHANNEL, "9003", cases[2].id, "咨询A市公积金提取", None, "board.csv"),
        ]
        # History is not a conversation, and no notice was written to anyone.
        assert await count(session, Conversation.id) == 0 and await count(session, Message.id) == 0


async def test_likes_and_dislikes_are_kept(seeded: Sessions, desk: Dispatcher) -> None:
    content = HEADER + GOOD + "2,U2,A2区黄兴路步行街噪音扰民,2019/3/1 8:00:00,晚上十二点还在放音乐。,1762,5\n"
    async with seeded.begin() as session:
        await import_messages(session, desk, parse_messages(content), source_file="hot.csv")
    async with seeded() as session:
        kept = (
            await session.execute(select(ImportedMessage.msg_id, ImportedMessage.likes, ImportedMessage.dislikes))
        ).all()
    assert sorted(kept) == [("1", 3, 0), ("2", 1762, 5)]


async def test_importing_the_same_file_twice_adds_nothing(seeded: Sessions, desk: Dispatcher) -> None:
    async with seeded.begin() as session:
        await import_messages(session, desk, parse_messages(SMALL_CSV), source_file="a.csv")
    async with seeded.begin() as session:
        again = await import_messages(session, desk, parse_messages(SMALL_CSV), source_file="a.csv")
    assert (again.rows, again.new_cases, again.skipped, again.replies, again.new_citizens) == (3, 0, 3, 0, 0)
    async with seeded() as session:
        assert await count(session, ServiceCase.id) == 3
        assert await count(session, ChannelIdentity.id) == 2


async def test_a_message_of_a_known_user_joins_their_citizen(seeded: Sessions, desk: Dispatcher) -> None:
    async with seeded.begin() as session:
        await import_messages(session, desk, parse_messages(SMALL_CSV), source_file="a.csv")
    later = HEADER + "9100,U2,A市公积金提取太慢,2019/7/1 9:00:00,提取申请交了一个月。,0,0\n"
    async with seeded.begin() as session:
        summary = await import_messages(session, desk, parse_messages(later), source_file="b.csv")
    assert (summary.new_cases, summary.new_citizens) == (1, 0)
    async with seeded() as session:
        owners = (await session.scalars(select(ServiceCase.citizen_id).order_by(ServiceCase.id))).all()
    assert owners[3] == owners[2]


async def test_imported_resolved_cases_are_never_asked_for_a_followup(seeded: Sessions, desk: Dispatcher) -> None:
    async with seeded.begin() as session:
        await import_messages(session, desk, parse_messages(SMALL_CSV), source_file="a.csv")
    async with seeded() as session:
        due = await followup.due_followups(
            session, china("2026-12-04T12:00:00"), remind_after=timedelta(hours=24), archive_after=timedelta(hours=48)
        )
    assert due.to_ask == [] and due.to_remind == [] and due.to_archive == []


async def test_a_move_made_with_a_clock_is_stamped_with_that_time(seeded: Sessions, desk: Dispatcher) -> None:
    async with seeded.begin() as session:
        await import_messages(session, desk, parse_messages(SMALL_CSV), source_file="a.csv")
    moment = china("2020-01-02T03:04:05")
    async with seeded.begin() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == "20190228-0001"))
        assert case is not None
        move = await move_case(session, Actor.system("test"), case, CaseAction.REVIEW, now=moment)
    assert move.event.created_at == moment
    async with seeded() as session:
        stored = await session.get(ServiceCase, case.id)
        assert stored is not None and stored.updated_at == moment


# --- The command --------------------------------------------------------------------------


def test_a_file_with_a_bad_time_on_line_n_imports_nothing_and_names_line_n(tmp_path: Path) -> None:
    """Line 5, not row 4: the first message's body spans two lines."""
    broken = SMALL_CSV.replace("2019/06/20 20:38:47", "2019/06/31 20:38:47")
    path = write(tmp_path, broken)
    database = tmp_path / "crm.db"
    result = run_cli("import-messages", str(path), database=database)
    assert result.returncode == 2, result.stderr
    assert "line 5: time '2019/06/31 20:38:47' is not a date and time" in result.stderr
    assert "nothing imported" in result.stderr
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM service_case").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM imported_message").fetchone() == (0,)


def test_the_command_imports_a_file_once_and_says_so_the_second_time(tmp_path: Path) -> None:
    path = write(tmp_path, SMALL_CSV)
    database = tmp_path / "crm.db"
    first = run_cli("import-messages", str(path), database=database)
    assert first.returncode == 0, first.stderr
    assert "board.csv: 3 rows" in first.stdout and "resolved with reply  1" in first.stdout
    again = run_cli("import-messages", str(path), database=database)
    assert again.returncode == 0, again.stderr
    assert "already imported     3  (nothing new: the file was imported before)" in again.stdout
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM service_case").fetchone() == (3,)


# --- The real files -------------------------------------------------------------------------


async def test_both_real_files_import_once_with_their_own_timestamps(seeded: Sessions, desk: Dispatcher) -> None:
    hot = read_messages(history_file(HOT_ISSUES_FILE))
    replies = read_messages(history_file(WITH_REPLIES_FILE))
    started = time.perf_counter()
    async with seeded.begin() as session:
        first = await import_messages(session, desk, hot, source_file=HOT_ISSUES_FILE)
    async with seeded.begin() as session:
        second = await import_messages(session, desk, replies, source_file=WITH_REPLIES_FILE)
    print(f"imported 7,142 real messages in {time.perf_counter() - started:.1f} s")
    assert (first.rows, first.new_cases, first.replies) == (4326, 4326, 0)
    assert (second.rows, second.new_cases, second.replies) == (2816, 2816, 2816)
    assert first.new_citizens + second.new_citizens == 3332 + 2559 - 13  # 13 users wrote in both files

    async with seeded() as session:
        assert await count(session, ServiceCase.id) == 7142
        assert await count(session, Citizen.id) == 5878
        resolved = await session.scalar(
            select(func.count(ServiceCase.id)).where(ServiceCase.status == CaseStatus.RESOLVED.value)
        )
        assert resolved == 2816
        # 附件3 line 2: 188006, posted 2019/2/28 11:25:05; 附件4 msg 27610 answered on a date only.
        case = await session.scalar(select(ServiceCase).join(ImportedMessage).where(ImportedMessage.msg_id == "188006"))
        assert case is not None and case.created_at == china("2019-02-28T11:25:05")
        answered = await session.scalar(
            select(ServiceCase).join(ImportedMessage).where(ImportedMessage.msg_id == "27610")
        )
        assert answered is not None and answered.created_at == china("2018-03-19T10:05:04")
        resolved_at = await session.scalar(
            select(CaseEvent.created_at).where(CaseEvent.case_id == answered.id, CaseEvent.to_status == "resolved")
        )
        assert resolved_at == china("2018-04-24T00:00:00")
        likes = await session.scalar(select(ImportedMessage.likes).where(ImportedMessage.msg_id == "208636"))
        assert likes == 2097

    async with seeded.begin() as session:
        again = await import_messages(session, desk, replies, source_file=WITH_REPLIES_FILE)
    assert (again.new_cases, again.skipped) == (0, 2816)
    async with seeded() as session:
        assert await count(session, ServiceCase.id) == 7142


@pytest.mark.parametrize("digits", ["", "   "])
async def test_a_case_with_no_phone_cannot_be_proven_by_digits(seeded: Sessions, desk: Dispatcher, digits: str) -> None:
    """Imported cases have no phone: no digit proof, however empty, opens their progress or links to their citizen."""
    async with seeded.begin() as session:
        await import_messages(session, desk, parse_messages(SMALL_CSV), source_file="a.csv")
    async with seeded.begin() as session:
        stranger = await resolve_identity(session, "web", "stranger")
        outcome = await lookup_progress(
            session, sender_key="web:stranger", case_number="20190228-0001", phone_last4=digits, identity=stranger
        )
        assert outcome.progress is None
        with pytest.raises(LinkRefused):
            await link_by_case(session, stranger, "20190228-0001", digits)
