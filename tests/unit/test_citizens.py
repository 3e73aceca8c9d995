"""Knowing the citizen: segments on hand-made citizens, the citizen page's scope and audit, and
「通知关联市民」, against a real migrated database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.console.cases import CaseViews
from crm_backend.console.web import SESSION_COOKIE, ConsoleBase, build_templates
from crm_backend.errors import InvalidTransition, NotFound
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import (
    AuditEntry,
    CaseEvent,
    Citizen,
    HotIssueDecision,
    HotIssueMember,
    HotIssueSnapshot,
    Message,
    Satisfaction,
    ServiceCase,
    StaffUser,
)
from crm_backend.services import casework, citizens, staff
from crm_backend.services.conversations import current_conversation, resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.services.moves import Actor, move_case
from crm_backend.services.segments import Segment, segment_counts, segments_of
from tests.support.moves import department_named
from tests.unit.test_console_services import department_id, people  # noqa: F401 (a fixture)
from tests.unit.test_notifier import case_followup, outbox_texts

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
PERIOD = {"since": NOW - timedelta(days=30), "until": NOW}
RESULT = "已清理堵塞的雨水井，积水已排净"


async def hand_made_case(
    sessions: Sessions,
    sender: str,
    description: str,
    *,
    days_ago: float,
    department_code: str | None = "A-housing",
    channel: str = "webchat",
    rating: int | None = None,
    rated_days_ago: float | None = None,
) -> str:
    """A case filed `days_ago` before NOW by the citizen behind `channel:sender`, maybe rated."""
    async with sessions.begin() as session:
        identity = await resolve_identity(session, channel, sender)
        conversation = await current_conversation(session, identity)
        case = await file_case(
            session,
            identity,
            Report(description=description, location="A1区解放路", contact_phone="13812345678", district="A1区"),
            conversation_id=conversation.id,
        )
        case.created_at = NOW - timedelta(days=days_ago)
        if department_code:
            case.department_id = await department_id(session, department_code)
            case.department = department_code
        if rating is not None:
            when = NOW - timedelta(days=rated_days_ago if rated_days_ago is not None else days_ago)
            session.add(Satisfaction(case_id=case.id, rating=rating, channel=channel, created_at=when))
        return case.case_number


async def citizen_of(sessions: Sessions, number: str) -> int:
    async with sessions() as session:
        found = await session.scalar(select(ServiceCase.citizen_id).where(ServiceCase.case_number == number))
    assert found is not None
    return found


@pytest.fixture
async def town(sessions: Sessions, people: dict[str, StaffUser]) -> dict[str, int]:  # noqa: F811
    """Six hand-made citizens, each chosen to fall in (or just out of) one segment."""
    numbers = {
        # 企业: names 个体户 in one of two cases; also a repeat reporter (two cases 10 and 80 days ago).
        "shop": await hand_made_case(sessions, "shop", "我是个体户，店门口的路面塌了", days_ago=10),
        "resident": await hand_made_case(sessions, "resident", "小区路灯坏了", days_ago=5),
        # Two cases, but 120 days apart from the reference: only one in the window, so no repeat.
        "old": await hand_made_case(sessions, "old", "垃圾没人清", days_ago=3),
        "unhappy": await hand_made_case(sessions, "unhappy", "噪音扰民", days_ago=20, rating=2),
        # Rated 1, but 100 days ago: no longer dissatisfied; rated 5 recently.
        "healed": await hand_made_case(sessions, "healed", "井盖丢了", days_ago=12, rating=5),
        # Another department's citizen (an agent of A-housing must not count them).
        "transport": await hand_made_case(
            sessions, "transport", "公司门口公交站牌倒了", days_ago=2, department_code="A-transport"
        ),
    }
    await hand_made_case(sessions, "shop", "路面还是没修", days_ago=80)
    await hand_made_case(sessions, "old", "垃圾没人清", days_ago=120)
    await hand_made_case(sessions, "healed", "井盖还是丢了", days_ago=110, rating=1, rated_days_ago=100)
    return {name: await citizen_of(sessions, number) for name, number in numbers.items()}


async def test_segments_follow_the_documented_rules(sessions: Sessions, town: dict[str, int]) -> None:
    async with sessions() as session:
        found = {name: await segments_of(session, citizen, as_of=NOW) for name, citizen in town.items()}
    assert found == {
        "shop": [Segment.ENTERPRISE, Segment.REPEAT],
        "resident": [Segment.RESIDENT],
        "old": [Segment.RESIDENT],
        "unhappy": [Segment.RESIDENT, Segment.DISSATISFIED],
        "healed": [Segment.RESIDENT],
        "transport": [Segment.ENTERPRISE],
    }


async def test_segment_counts_count_the_period_s_citizens(sessions: Sessions, town: dict[str, int]) -> None:
    async with sessions() as session:
        everyone = await segment_counts(session, **PERIOD)
        housing = await segment_counts(session, **PERIOD, department_ids=[await department_id(session, "A-housing")])
    assert everyone.citizens == 6
    assert everyone.by_segment == {
        Segment.ENTERPRISE: 2,
        Segment.RESIDENT: 4,
        Segment.REPEAT: 1,
        Segment.DISSATISFIED: 1,
        Segment.HOT_ISSUE: 0,  # the hot-issue work fills this in; nothing is made up meanwhile
    }
    assert housing.citizens == 5 and housing.by_segment[Segment.ENTERPRISE] == 1


async def test_an_empty_period_counts_zero_in_every_segment(sessions: Sessions, town: dict[str, int]) -> None:
    async with sessions() as session:
        counts = await segment_counts(session, since=NOW + timedelta(days=1), until=NOW + timedelta(days=2))
    assert counts.citizens == 0 and set(counts.by_segment.values()) == {0}


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        (Segment.ENTERPRISE, {"shop", "transport"}),
        (Segment.REPEAT, {"shop"}),
        (Segment.DISSATISFIED, {"unhappy"}),
        (Segment.HOT_ISSUE, set()),
    ],
)
async def test_the_case_list_filters_by_segment(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
    town: dict[str, int],
    segment: Segment,
    expected: set[str],
) -> None:
    async with sessions() as session:
        rows, _ = await casework.list_cases(
            session, people["supervisor"], casework.CaseFilters(segment=segment), now=NOW
        )
    names = {name for name, citizen in town.items() if citizen in {row.citizen_id for row in rows}}
    assert names == expected


async def test_an_agent_filtering_by_segment_still_sees_only_their_department(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
    town: dict[str, int],
) -> None:
    async with sessions() as session:
        rows, _ = await casework.list_cases(
            session, people["housing"], casework.CaseFilters(segment=Segment.ENTERPRISE), now=NOW
        )
    assert {row.citizen_id for row in rows} == {town["shop"]}


# --- the citizen page -------------------------------------------------------------------


async def test_the_citizen_page_shows_everything_and_is_audited(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
    town: dict[str, int],
) -> None:
    async with sessions.begin() as session:
        profile = await citizens.citizen_profile(
            session, people["supervisor"], town["healed"], address="10.0.0.7", now=NOW
        )
    assert [identity.sender_id for identity in profile.identities] == ["webchat:healed"]
    assert len(profile.cases) == 2 and len(profile.conversations) == 1
    assert [rating.rating for rating, _number in profile.ratings] == [5, 1]  # newest first
    assert {one.case_number for one in profile.open_cases} == {one.case_number for one in profile.cases}
    async with sessions() as session:
        entry = await session.scalar(select(AuditEntry).where(AuditEntry.action == "citizen.view"))
    assert entry is not None
    assert (entry.actor, entry.target, entry.address) == ("wang", f"citizen:{town['healed']}", "10.0.0.7")


async def test_an_agent_sees_a_citizen_of_their_department_but_only_its_cases(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
    town: dict[str, int],
) -> None:
    await hand_made_case(sessions, "resident", "公交晚点", days_ago=1, department_code="A-transport")
    async with sessions.begin() as session:
        profile = await citizens.citizen_profile(session, people["housing"], town["resident"], now=NOW)
    assert [one.description for one in profile.cases] == ["小区路灯坏了"]


async def test_another_department_s_citizen_is_refused_as_if_missing(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
    town: dict[str, int],
) -> None:
    refusals = []
    for citizen_id in (town["transport"], 999_999):
        async with sessions.begin() as session:
            with pytest.raises(NotFound) as refused:
                await citizens.citizen_profile(session, people["housing"], citizen_id, now=NOW)
            refusals.append((refused.value.code, str(refused.value)))
    assert refusals[0] == refusals[1]
    async with sessions() as session:
        assert await session.scalar(select(AuditEntry).where(AuditEntry.action == "citizen.view")) is None


# --- 通知关联市民 ------------------------------------------------------------------------


async def resolved_lead_with_repeats(sessions: Sessions, *, result: str = RESULT) -> tuple[str, list[str]]:
    """A web-chat citizen's case taken to 办结 with `result`, and three repeats filed beside it:
    a Telegram citizen's, a second web-chat citizen's, and that second citizen's second one."""
    lead = await hand_made_case(sessions, "lead", "解放路口积水", days_ago=3, department_code=None)
    repeats = [
        await hand_made_case(
            sessions, "4242", "解放路口积水很深", days_ago=2, department_code=None, channel="telegram"
        ),
        await hand_made_case(sessions, "second", "解放路积水", days_ago=2, department_code=None),
        await hand_made_case(sessions, "second", "解放路积水还没退", days_ago=1, department_code=None),
    ]
    async with sessions.begin() as session:
        lead_case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == lead))
        assert lead_case is not None
        for number in repeats:
            repeat = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
            assert repeat is not None
            repeat.duplicate_of_id = lead_case.id
    await resolve(sessions, lead, result)
    return lead, repeats


async def resolve(sessions: Sessions, number: str, result: str = RESULT) -> None:
    """Take the case through to 办结 by A1区住房和城乡建设局 with `result`."""
    async with sessions.begin() as session:
        lead_case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
        assert lead_case is not None
        department = await department_named(session, "A1区住房和城乡建设局")
        for action in ("dispatch", "accept", "start", "resolve"):
            await move_case(
                session,
                Actor.system("staff:li"),
                lead_case,
                action,
                note=result if action == "resolve" else "",
                department_id=department,
            )


async def web_notices(sessions: Sessions, sender: str) -> list[str]:
    async with sessions() as session:
        identity = await resolve_identity(session, "webchat", sender)
        conversation = await current_conversation(session, identity)
        rows = await session.scalars(
            select(Message.text).where(Message.conversation_id == conversation.id, Message.sender_kind == "system")
        )
        return list(rows.all())


async def test_notify_linked_tells_each_linked_citizen_once_on_their_channel(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
) -> None:
    lead, repeats = await resolved_lead_with_repeats(sessions)
    watcher = case_followup(sessions)
    async with sessions.begin() as session:
        outcome = await citizens.notify_linked_citizens(
            session, people["supervisor"], lead, watcher, address="10.0.0.7"
        )
    assert outcome.told == repeats and outcome.already == [] and len(outcome.notices) == 2  # two citizens
    telegram = [text for _chat, text, _status in await outbox_texts(sessions)]
    assert telegram == [
        f"您反映的问题（工单 {repeats[0]}）与工单 {lead} 是同一问题，该问题已办结（A1区住房和城乡建设局）。"
        f"\n办理结果：{RESULT}"
    ]
    web = await web_notices(sessions, "second")
    assert len(web) == 1 and f"工单 {repeats[1]}" in web[0] and RESULT in web[0]

    async with sessions.begin() as session:
        again = await citizens.notify_linked_citizens(session, people["supervisor"], lead, watcher)
    assert again.told == [] and again.already == repeats and again.notices == []
    assert len(await outbox_texts(sessions)) == 1 and len(await web_notices(sessions, "second")) == 1
    async with sessions() as session:
        audited = (await session.scalars(select(AuditEntry).where(AuditEntry.action == "case.notify_linked"))).all()
        marks = (await session.scalars(select(CaseEvent).where(CaseEvent.kind == citizens.LINKED_NOTICE_EVENT))).all()
    assert [entry.target for entry in audited] == [lead, lead]
    assert len(marks) == 4  # each repeat's timeline, and the lead's


async def test_notify_linked_skips_a_citizen_who_turned_notices_off(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
) -> None:
    lead, repeats = await resolved_lead_with_repeats(sessions)
    async with sessions.begin() as session:
        citizen = await session.get(Citizen, await citizen_of(sessions, repeats[0]))
        assert citizen is not None
        citizen.notices_enabled = False
    async with sessions.begin() as session:
        outcome = await citizens.notify_linked_citizens(session, people["supervisor"], lead, case_followup(sessions))
    assert outcome.opted_out == [repeats[0]] and outcome.told == repeats[1:]
    assert await outbox_texts(sessions) == []


async def test_notify_linked_refuses_a_case_without_a_resolution(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
) -> None:
    open_case = await hand_made_case(sessions, "lead", "解放路口积水", days_ago=3)
    async with sessions.begin() as session:
        with pytest.raises(InvalidTransition, match="办理结果"):
            await citizens.notify_linked_citizens(session, people["supervisor"], open_case, case_followup(sessions))


async def test_notify_linked_refuses_a_reopened_case(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
) -> None:
    lead, _ = await resolved_lead_with_repeats(sessions)
    async with sessions.begin() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == lead))
        assert case is not None
        await move_case(session, Actor.system("回访"), case, "reopen", note="市民不满意")
    async with sessions.begin() as session:
        with pytest.raises(InvalidTransition):
            await citizens.notify_linked_citizens(session, people["supervisor"], lead, case_followup(sessions))


async def test_an_agent_cannot_notify_for_another_department_s_case(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
) -> None:
    lead, _ = await resolved_lead_with_repeats(sessions)  # resolved by A1区住房和城乡建设局
    async with sessions.begin() as session:
        with pytest.raises(NotFound):
            await citizens.notify_linked_citizens(session, people["transport"], lead, case_followup(sessions))
    assert CaseStatus.RESOLVED in citizens.RESOLVED_STATUSES


# --- 通知关联市民: the lead's hot issue ----------------------------------------------------------


async def store_ranking(sessions: Sessions, members: dict[str, str]) -> None:
    """A hand-made hot-issue ranking stored as the job stores one: `members` maps case number → issue."""
    async with sessions.begin() as session:
        snapshot = HotIssueSnapshot(
            since=(NOW - timedelta(days=30)).date(),
            until=NOW.date(),
            message_count=len(members),
            seconds=0.1,
            issues=[],
            computed_at=NOW,
        )
        session.add(snapshot)
        await session.flush()
        session.add_all(
            HotIssueMember(snapshot_id=snapshot.id, case_number=number, issue_id=issue)
            for number, issue in members.items()
        )


async def case_status(sessions: Sessions, number: str) -> str:
    async with sessions() as session:
        status = await session.scalar(select(ServiceCase.status).where(ServiceCase.case_number == number))
    assert status is not None
    return status


async def test_notify_linked_tells_the_citizens_of_the_lead_s_hot_issue_once(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
) -> None:
    lead = await hand_made_case(sessions, "lead", "解放路口积水", days_ago=3, department_code=None)
    alpha = await hand_made_case(sessions, "alpha", "解放路积水严重", days_ago=2, department_code=None)
    beta = await hand_made_case(sessions, "4243", "解放路积水", days_ago=2, department_code=None, channel="telegram")
    unrelated = await hand_made_case(sessions, "gamma", "解放路修车铺", days_ago=2, department_code=None)
    elsewhere = await hand_made_case(sessions, "delta", "滨河路施工噪音", days_ago=2, department_code=None)
    stale = await hand_made_case(sessions, "epsilon", "解放路积水", days_ago=9, department_code=None)
    await store_ranking(sessions, {lead: "I1", stale: "I1"})  # an older ranking: not the current one
    await store_ranking(sessions, {lead: "I1", alpha: "I1", beta: "I1", unrelated: "I1", elsewhere: "I2"})
    async with sessions.begin() as session:
        session.add(HotIssueDecision(kind="unrelated", message_key=unrelated))
    await resolve(sessions, lead)
    async with sessions() as session:
        lead_case = await casework.visible_case(session, people["supervisor"], lead)
        assert await citizens.linked_case_count(session, lead_case) == 2
    watcher = case_followup(sessions)

    async with sessions.begin() as session:
        outcome = await citizens.notify_linked_citizens(session, people["supervisor"], lead, watcher)
    assert outcome.told == [alpha, beta] and len(outcome.notices) == 2
    assert len(await web_notices(sessions, "alpha")) == 1 and len(await outbox_texts(sessions)) == 1
    for untold in ("gamma", "delta", "epsilon", "lead"):
        assert await web_notices(sessions, untold) == []
    assert await case_status(sessions, alpha) == CaseStatus.RECEIVED.value  # told, but its own case stays open

    async with sessions.begin() as session:
        again = await citizens.notify_linked_citizens(session, people["supervisor"], lead, watcher)
    assert again.told == [] and again.already == [alpha, beta] and again.notices == []
    assert len(await web_notices(sessions, "alpha")) == 1 and len(await outbox_texts(sessions)) == 1


async def test_a_citizen_with_a_repeat_and_a_same_issue_case_gets_one_notice(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
) -> None:
    lead, repeats = await resolved_lead_with_repeats(sessions)
    same_issue = await hand_made_case(sessions, "second", "解放路又积水了", days_ago=1, department_code=None)
    # repeats[1] is both a repeat and in the issue; same_issue only in the issue.
    await store_ranking(sessions, {lead: "I1", repeats[1]: "I1", same_issue: "I1"})
    async with sessions.begin() as session:
        outcome = await citizens.notify_linked_citizens(session, people["supervisor"], lead, case_followup(sessions))
    assert outcome.told == [*repeats, same_issue] and len(outcome.notices) == 2  # two citizens
    assert len(await web_notices(sessions, "second")) == 1


async def test_a_case_told_about_another_lead_is_still_told_about_this_one(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
) -> None:
    lead, repeats = await resolved_lead_with_repeats(sessions)
    async with sessions.begin() as session:
        await citizens.notify_linked_citizens(session, people["supervisor"], lead, case_followup(sessions))
    other_lead = await hand_made_case(sessions, "other", "解放路排水管破裂", days_ago=1, department_code=None)
    await store_ranking(sessions, {other_lead: "I1", repeats[0]: "I1"})
    await resolve(sessions, other_lead, "已更换破裂的排水管")
    async with sessions.begin() as session:
        outcome = await citizens.notify_linked_citizens(
            session, people["supervisor"], other_lead, case_followup(sessions)
        )
    assert outcome.told == [repeats[0]] and outcome.already == []
    assert [text for _chat, text, _status in await outbox_texts(sessions)][-1].endswith("已更换破裂的排水管")


@pytest.fixture
async def console(sessions: Sessions) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The console's case pages, in process, on the test database."""
    app = web.Application()
    base = ConsoleBase(sessions, build_templates(), secure_cookies=False)
    CaseViews(base, cast(Any, None), [], cast(Any, None)).add_routes(app)  # showing a case sends nothing
    async with TestClient(TestServer(app)) as client:
        yield client


async def notify_card(
    sessions: Sessions, user: StaffUser, number: str, console: TestClient[web.Request, web.Application]
) -> str | None:
    """The case page's 通知关联市民 card, or None when the page shows none."""
    async with sessions.begin() as session:
        signed_in = await staff.open_session(session, user)
    page = await console.get(
        f"/console/cases/{number}", headers={"Accept": "text/html"}, cookies={SESSION_COOKIE: signed_in.token}
    )
    assert page.status == 200
    html = await page.text()
    if 'id="notify-linked-form"' not in html:
        return None
    start = html.rindex('<div class="card">', 0, html.index('id="notify-linked-form"'))
    return html[start : html.index("</div>", start)]


async def test_the_case_page_offers_to_notify_a_hot_issue_s_citizens_with_their_count(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
    console: TestClient[web.Request, web.Application],
) -> None:
    lead = await hand_made_case(sessions, "lead", "解放路口积水", days_ago=3, department_code=None)
    alpha = await hand_made_case(sessions, "alpha", "解放路积水严重", days_ago=2, department_code=None)
    beta = await hand_made_case(sessions, "beta", "解放路积水", days_ago=2, department_code=None)
    await store_ranking(sessions, {lead: "I1", alpha: "I1", beta: "I1"})
    assert await notify_card(sessions, people["supervisor"], lead, console) is None  # not yet 办结
    await resolve(sessions, lead)
    card = await notify_card(sessions, people["supervisor"], lead, console)
    assert card is not None and "2 件关联工单" in card


async def test_the_case_page_offers_no_notice_for_a_case_with_nothing_linked(
    sessions: Sessions,
    people: dict[str, StaffUser],  # noqa: F811
    console: TestClient[web.Request, web.Application],
) -> None:
    lead = await hand_made_case(sessions, "lead", "解放路口积水", days_ago=3, department_code=None)
    elsewhere = await hand_made_case(sessions, "delta", "滨河路施工噪音", days_ago=2, department_code=None)
    await store_ranking(sessions, {lead: "I1", elsewhere: "I2"})
    await resolve(sessions, lead)
    assert await notify_card(sessions, people["supervisor"], lead, console) is None
