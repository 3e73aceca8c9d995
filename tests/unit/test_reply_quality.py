"""答复质量: the score's rules on hand-picked replies, its storage with each reply and 办结 result,
the department averages, the rescoring command and the case page that shows it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.analytics.reply_quality import score_reply, working_days_between
from crm_backend.console.cases import CaseViews
from crm_backend.console.web import SESSION_COOKIE, ConsoleBase, build_templates
from crm_backend.dispatch.deadlines import CHINA_TZ, due_at
from crm_backend.dispatch.routing import seed_routing
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import CaseEvent, Department, ReplyScore, StaffUser
from crm_backend.services import casework, reply_scores, staff
from crm_backend.services.conversations import current_conversation, resolve_identity
from crm_backend.services.intake import Report, file_case

Sessions = async_sessionmaker[AsyncSession]
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"

MESSAGE = "A1区解放路路灯坏了一个多月，晚上漆黑一片，老人小孩出行很危险。请问什么时候能修好？"
GOOD = (
    "您好！经核实，A1区解放路共有3盏路灯因地下线路老化损坏。根据《城市照明管理规定》第十条，路灯由区城管局负责维护。"
    "我局已安排维修班组于3月5日更换解放路路灯线路，路灯已恢复照明，今后将加强巡查。"
    "如仍有路灯不亮，请拨打A1区城管局路灯所电话0731-88888888。"
)
MIDDLING = "您好，您反映的路灯问题我们已转交相关部门处理，请耐心等待。"
POOR = "已收到，谢谢"
ASKED = datetime(2024, 3, 1, 10, 0, tzinfo=CHINA_TZ)
REPLIED = datetime(2024, 3, 6, 15, 0, tzinfo=CHINA_TZ)


def test_a_reply_that_cites_its_basis_says_what_was_done_and_gives_a_phone_beats_a_bare_acknowledgement() -> None:
    good, middling, poor = (
        score_reply(MESSAGE, reply, asked_at=ASKED, replied_at=REPLIED) for reply in (GOOD, MIDDLING, POOR)
    )
    assert good.total > middling.total > poor.total
    for part in ("relevance", "completeness", "interpretability"):
        assert getattr(good, part) > getattr(poor, part), part
    assert good.total >= 80 and poor.total < 30
    assert good.interpretability == 100  # a finding, a basis and a named document
    assert poor.relevance == 0 and poor.interpretability == 0


def test_the_reasons_say_why_in_chinese() -> None:
    good = score_reply(MESSAGE, GOOD, asked_at=ASKED, replied_at=REPLIED)
    poor = score_reply(MESSAGE, POOR, asked_at=ASKED, replied_at=REPLIED)
    assert any("《城市照明管理规定》" in reason for reason in good.reasons)
    assert any("留了联系方式" in reason for reason in good.reasons)
    assert any("没有联系方式" in reason for reason in poor.reasons)
    assert any("没有说明依据或核查结论" in reason for reason in poor.reasons)


def test_quoting_the_citizens_own_words_back_is_not_relevance() -> None:
    echo = f"您好！您反映的“{MESSAGE[:30]}”已收悉。"
    assert score_reply(MESSAGE, echo, asked_at=ASKED, replied_at=REPLIED).relevance < 20


def test_the_message_boards_name_and_the_citizens_title_are_not_cited_documents() -> None:
    board = "您在平台《问政西地省》的留言《A1区解放路路灯坏了的投诉》已收悉。"
    assert score_reply(MESSAGE, board, asked_at=ASKED, replied_at=REPLIED).interpretability == 0


def test_working_days_skip_the_national_day_holiday() -> None:
    # 2024-10-01 to 10-07 off; the eighth calendar day after 09-30 is its first working day.
    assert working_days_between(datetime(2024, 9, 30).date(), datetime(2024, 10, 8).date()) == 1


def test_a_reply_after_the_national_day_holiday_is_on_time_counted_in_working_days() -> None:
    asked = datetime(2024, 9, 30, 10, 0, tzinfo=CHINA_TZ)
    due = due_at(asked, 2)  # two working days: 10-08 and 10-09, end of the office day
    assert due.astimezone(CHINA_TZ).date() == datetime(2024, 10, 9).date()
    after_holiday = score_reply(
        MESSAGE, GOOD, asked_at=asked, replied_at=datetime(2024, 10, 8, 15, tzinfo=CHINA_TZ), due=due
    )
    assert after_holiday.timeliness == 90  # 1 of 2 working days used, though 8 calendar days passed
    assert "用时 1 个工作日（期限 2 个）" in after_holiday.reasons[3]
    late = score_reply(MESSAGE, GOOD, asked_at=asked, replied_at=datetime(2024, 10, 10, 9, tzinfo=CHINA_TZ), due=due)
    assert late.timeliness == 30  # one working day late of two allowed: 60 × (1 − 1/2)
    assert "超期 1 个工作日" in late.reasons[3]
    very_late = score_reply(MESSAGE, GOOD, asked_at=asked, replied_at=datetime(2024, 10, 31, tzinfo=CHINA_TZ), due=due)
    assert very_late.timeliness == 0


def test_without_a_deadline_the_default_of_ten_working_days_applies() -> None:
    same_day = score_reply(MESSAGE, GOOD, asked_at=ASKED, replied_at=ASKED + timedelta(hours=2))
    assert same_day.timeliness == 100
    assert "期限 10 个" in same_day.reasons[3]


# --- stored with the reply ------------------------------------------------------------


@pytest.fixture
async def agent(sessions: Sessions) -> StaffUser:
    async with sessions.begin() as session:
        await seed_routing(session)
        return await staff.create_user(
            session,
            username="li.housing",
            display_name="李",
            password=PASSWORD,
            role="agent",
            department_code="A-housing",
        )


async def housing_case(sessions: Sessions, status: CaseStatus = CaseStatus.IN_PROGRESS, sender: str = "c1") -> str:
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "webchat", sender)
        conversation = await current_conversation(session, identity)
        case = await file_case(
            session,
            identity,
            Report(description=MESSAGE, location="A1区解放路", contact_phone="13812345678", district="A1区"),
            conversation_id=conversation.id,
        )
        department = await session.scalar(select(Department).where(Department.code == "A-housing"))
        assert department is not None
        case.department_id, case.department = department.id, department.name
        case.category = "城乡建设"
        case.status = status.value  # test set-up only: the product moves cases through move_case
        case.due_at = datetime.now(UTC) + timedelta(days=14)
        return case.case_number


async def test_a_staff_reply_through_the_console_service_is_stored_with_its_score(
    sessions: Sessions, agent: StaffUser
) -> None:
    number = await housing_case(sessions)
    async with sessions.begin() as session:
        case = await casework.visible_case(session, agent, number)
        event = await casework.record_reply(session, agent, case, GOOD)
    async with sessions() as session:
        stored = await session.scalar(select(ReplyScore).where(ReplyScore.event_id == event.id))
    assert stored is not None
    assert stored.kind == "reply" and stored.department_id == case.department_id
    expected = score_reply(MESSAGE, GOOD, asked_at=case.created_at, replied_at=stored.replied_at, due=case.due_at)
    assert (stored.total, stored.relevance, stored.completeness) == (
        expected.total,
        expected.relevance,
        expected.completeness,
    )
    assert stored.reasons == list(expected.reasons)


async def test_the_result_of_a_resolve_is_scored_and_other_moves_are_not(sessions: Sessions, agent: StaffUser) -> None:
    number = await housing_case(sessions)
    async with sessions.begin() as session:
        move = await casework.perform(session, agent, number, "resolve", note=GOOD)
    async with sessions() as session:
        rows = list((await session.scalars(select(ReplyScore))).all())
    assert [(row.event_id, row.kind) for row in rows] == [(move.event.id, "result")]


async def test_department_averages_are_one_aggregate_and_an_agent_sees_only_their_department(
    sessions: Sessions, agent: StaffUser
) -> None:
    first, second = await housing_case(sessions, sender="c1"), await housing_case(sessions, sender="c2")
    async with sessions.begin() as session:
        for number, text in ((first, GOOD), (second, POOR)):
            await casework.record_reply(session, agent, await casework.visible_case(session, agent, number), text)
        scores = list((await session.scalars(select(ReplyScore).order_by(ReplyScore.id))).all())
        transport = await session.scalar(select(Department.id).where(Department.code == "A-transport"))
    now = datetime.now(UTC)
    async with sessions() as session:
        rows = await reply_scores.reply_quality_by_department(
            session, since=now - timedelta(days=1), until=now + timedelta(days=1)
        )
        assert len(rows) == 1
        assert rows[0].replies == 2 and rows[0].department_id == agent.department_id
        assert rows[0].total == round(sum(s.total for s in scores) / 2, 1)
        assert rows[0].interpretability == round(sum(s.interpretability for s in scores) / 2, 1)
        assert transport is not None
        other = await reply_scores.reply_quality_by_department(
            session, since=now - timedelta(days=1), until=now + timedelta(days=1), department_ids=[transport]
        )
        assert other == []
        earlier = await reply_scores.reply_quality_by_department(
            session, since=now - timedelta(days=10), until=now - timedelta(days=1)
        )
        assert earlier == []


async def test_score_replies_scores_replies_written_without_a_score_once(sessions: Sessions, agent: StaffUser) -> None:
    numbers = [await housing_case(sessions, sender=f"c{i}") for i in range(3)]
    async with sessions.begin() as session:
        for number in numbers:  # as an import or a reply written before scoring existed
            case = await casework.visible_case(session, agent, number)
            session.add(CaseEvent(case_id=case.id, to_status=case.status, kind="reply", note=GOOD, actor="李"))
    done = await reply_scores.rescore(sessions, batch_size=2)
    assert (done.scored, done.batches) == (3, 2)
    assert (await reply_scores.rescore(sessions)).scored == 0
    assert (await reply_scores.rescore(sessions, everything=True)).scored == 3
    async with sessions() as session:
        assert len((await session.scalars(select(ReplyScore))).all()) == 3


async def test_the_score_replies_command_scores_unscored_replies_and_then_has_nothing_to_do(
    sessions: Sessions, agent: StaffUser, tmp_path: Path
) -> None:
    number = await housing_case(sessions)
    async with sessions.begin() as session:
        case = await casework.visible_case(session, agent, number)
        session.add(CaseEvent(case_id=case.id, to_status=case.status, kind="reply", note=GOOD, actor="李"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DATABASE_URL")}
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'crm.db'}"  # the `sessions` fixture's database
        command = [sys.executable, "-m", "crm_backend", "score-replies", *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)

    first = await asyncio.to_thread(run)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "scored 1 replies in 1 batches"
    again = await asyncio.to_thread(run)
    assert again.stdout.strip() == "scored 0 replies in 0 batches"
    everything = await asyncio.to_thread(run, "--all")
    assert everything.stdout.strip() == "scored 1 replies in 1 batches"
    async with sessions() as session:
        assert len((await session.scalars(select(ReplyScore))).all()) == 1


# --- the case page --------------------------------------------------------------------


@pytest.fixture
async def console(sessions: Sessions) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The console's case pages, in process, on the test database."""
    app = web.Application()
    base = ConsoleBase(sessions, build_templates(), secure_cookies=False)
    # Showing a case touches neither the channels nor the citizen's notices.
    CaseViews(base, cast(Any, None), [], cast(Any, None)).add_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_the_case_page_shows_each_replys_score_its_parts_and_why(
    sessions: Sessions, agent: StaffUser, console: TestClient[web.Request, web.Application]
) -> None:
    number = await housing_case(sessions)
    async with sessions.begin() as session:
        case = await casework.visible_case(session, agent, number)
        event = await casework.record_reply(session, agent, case, GOOD)
        signed_in = await staff.open_session(session, agent)
    async with sessions() as session:
        score = await session.scalar(select(ReplyScore).where(ReplyScore.event_id == event.id))
        assert score is not None
    page = await console.get(
        f"/console/cases/{number}", headers={"Accept": "text/html"}, cookies={SESSION_COOKIE: signed_in.token}
    )
    html = await page.text()
    assert page.status == 200
    block = html[html.index(f'id="reply-score-{event.id}"') :]
    block = block[: block.index("</details>")]
    assert f"答复质量 {score.total}" in block
    parts = (score.relevance, score.completeness, score.interpretability, score.timeliness)
    assert "相关 {} · 完整 {} · 可解释 {} · 及时 {}".format(*parts) in block
    assert "引用《城市照明管理规定》" in block


async def test_an_unscored_event_shows_no_score(
    sessions: Sessions, agent: StaffUser, console: TestClient[web.Request, web.Application]
) -> None:
    number = await housing_case(sessions)
    async with sessions.begin() as session:
        await casework.add_note(session, agent, number, "内部备注：已电话联系市民")
        signed_in = await staff.open_session(session, agent)
    page = await console.get(
        f"/console/cases/{number}", headers={"Accept": "text/html"}, cookies={SESSION_COOKIE: signed_in.token}
    )
    assert page.status == 200
    assert "reply-score" not in await page.text()
