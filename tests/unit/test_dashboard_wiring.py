"""Issue 14's parts wired together: hot issues, reply quality and segments on the dashboard, the
热点问题相关 segment from the stored ranking, and the citizen page's hot issues.

The dashboard's hand-made world is tests/support/dashboard.py (period 2026-09-28 .. 2026-10-11):
citizen 0 filed A and B (住建局), citizen 1 filed C and D (交通局; D was rated 1) and F before the
period, citizen 2 filed E (no department).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import date, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_backend.analytics import kpi
from crm_backend.console.citizens import CitizenViews
from crm_backend.console.dashboard import DashboardViews
from crm_backend.console.web import SESSION_COOKIE, ConsoleBase, build_templates
from crm_backend.errors import NotFound
from crm_backend.hotissues import service
from crm_backend.hotissues.core import Group, HotIssue, IssueMessage, summarise
from crm_backend.http import error_middleware
from crm_backend.models import CaseEvent, HotIssueSnapshot, ReplyScore, ServiceCase, StaffUser
from crm_backend.services import citizens, staff
from crm_backend.services.segments import Segment, case_in_segment, in_segment, segments_of
from tests.support.dashboard import NOW, PERIOD, Sessions, World, at, build_world
from tests.unit.test_hot_issues import HAND_MADE, add_cases

PERIOD_QUERY = f"period=custom&since={PERIOD.since}&until={PERIOD.until}"
HOT_PAGE = f"/console/hot-issues?since={PERIOD.since}&until={PERIOD.until}"


@pytest.fixture
async def world(sessions: Sessions) -> World:
    return await build_world(sessions)


@pytest.fixture
async def client(sessions: Sessions) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[error_middleware])
    base = ConsoleBase(sessions, build_templates(), secure_cookies=False)
    DashboardViews(base, ["A1区", "A2区"]).add_routes(app)
    CitizenViews(**base.share()).add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def signed_in(sessions: Sessions, user: StaffUser) -> dict[str, str]:
    async with sessions.begin() as session:
        opened = await staff.open_session(session, await session.get(StaffUser, user.id) or user)
    return {"Cookie": f"{SESSION_COOKIE}={opened.token}", "Accept": "text/html"}


async def citizen_of(sessions: Sessions, number: str) -> int:
    async with sessions() as session:
        found = await session.scalar(select(ServiceCase.citizen_id).where(ServiceCase.case_number == number))
    assert found is not None
    return found


def message(key: str, citizen: str, title: str, moment: datetime, centrality: float = 0.0) -> IssueMessage:
    return IssueMessage(key=key, citizen=citizen, title=title, time=moment, likes=0, centrality=centrality)


async def store_hand_made_ranking(sessions: Sessions) -> list[HotIssue]:
    """A ranking of the period as the job would store it: 人民路积水 (cases A and C and five board
    messages in the last seven days: 预警) and 滨河路噪音 (two board messages, no case)."""
    flooding = summarise(
        Group(
            members=(
                message("A", "c0", "人民路积水", at(9, 30, 9), centrality=1.0),
                message("C", "c1", "人民路又积水了", at(10, 1, 10)),
                *(message(f"M{n}", f"b{n}", "人民路积水严重", at(10, 5 + n, 9)) for n in range(1, 6)),
            ),
            place="人民路",
        ),
        until=PERIOD.until,
    )
    noise = summarise(
        Group(
            members=(
                message("M6", "b6", "滨河路夜间施工噪音", at(9, 29, 9), centrality=1.0),
                message("M7", "b7", "滨河路施工噪音扰民", at(9, 29, 10)),
            ),
            terms=("滨河路", "噪音"),
        ),
        until=PERIOD.until,
    )
    assert flooding.alert and not noise.alert
    issues = [flooding, noise]
    async with sessions.begin() as session:
        snapshot = HotIssueSnapshot(
            since=PERIOD.since,
            until=PERIOD.until,
            message_count=9,
            seconds=0.1,
            issues=[issue.to_json() for issue in issues],
            computed_at=NOW,
        )
        session.add(snapshot)
        await session.flush()
        session.add_all(service.members_of(snapshot.id, issues))
    return issues


# --- 1. hot issues on the dashboard -------------------------------------------------------------


async def test_a_stored_ranking_appears_on_the_dashboard_with_its_alert_and_links(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    issues = await store_hand_made_ranking(sessions)
    async with sessions() as session:
        table = await kpi.one_table(session, world.supervisor, PERIOD, "hot_issues", now=NOW)
    assert [[cell.text for cell in row] for row in table.rows] == [
        ["人民路积水", "人民路", "2026-09-30 至 2026-10-10", "7", "7", f"{issues[0].heat:g}", "预警"],
        ["滨河路夜间施工噪音", "滨河路、噪音", "2026-09-29 至 2026-09-29", "2", "2", f"{issues[1].heat:g}", ""],
    ]
    assert table.rows[0][0].href == f"{HOT_PAGE}#issue-A"
    assert table.rows[0][6].flag and not table.rows[1][6].flag

    page = await (
        await client.get(f"/console/dashboard?{PERIOD_QUERY}", headers=await signed_in(sessions, world.supervisor))
    ).text()
    assert "<h2>热点问题</h2>" in page
    assert f'<a href="{HOT_PAGE.replace("&", "&amp;")}#issue-A">人民路积水</a>' in page
    assert '<td data-value="1" class="flag">预警</td>' in page


async def test_without_a_stored_ranking_the_dashboard_says_it_is_not_computed_yet(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    page = await (
        await client.get(f"/console/dashboard?{PERIOD_QUERY}", headers=await signed_in(sessions, world.supervisor))
    ).text()
    assert "热点问题尚未计算" in page


async def test_an_agent_sees_no_city_wide_hot_issues_on_the_dashboard_or_in_an_export(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    await store_hand_made_ranking(sessions)
    headers = await signed_in(sessions, world.agent)
    page = await (await client.get(f"/console/dashboard?{PERIOD_QUERY}", headers=headers)).text()
    assert "人民路积水" not in page and 'id="figure-hot_issues"' not in page
    assert 'id="figure-timeliness"' in page  # the rest of the dashboard is there
    export = await client.get(f"/console/dashboard/export/hot_issues.csv?{PERIOD_QUERY}", headers=headers)
    assert export.status == 404
    async with sessions() as session:
        with pytest.raises(NotFound):
            await kpi.one_table(session, world.agent, PERIOD, "hot_issues", now=NOW)


# --- 2. reply quality per department ------------------------------------------------------------


async def add_scores(sessions: Sessions, world: World) -> None:
    """Known scores: 住建局 two replies in the period (80 and 60) and one before it; 交通局 one (50)."""
    async with sessions.begin() as session:
        events = {
            number: list(
                (
                    await session.scalars(
                        select(CaseEvent.id)
                        .join(ServiceCase, ServiceCase.id == CaseEvent.case_id)
                        .where(ServiceCase.case_number == number)
                        .order_by(CaseEvent.id)
                    )
                ).all()
            )
            for number in ("A", "C", "F")
        }
        cases = dict((await session.execute(select(ServiceCase.case_number, ServiceCase.id))).tuples().all())

        def score(number: str, event_id: int, department: int, total: int, replied_at: datetime) -> ReplyScore:
            return ReplyScore(
                event_id=event_id, case_id=cases[number], department_id=department, kind="reply",
                relevance=total, completeness=total - 10, interpretability=total - 20, timeliness=100,
                total=total, reasons=[], scorer_version="test", replied_at=replied_at,
            )  # fmt: skip

        session.add_all(
            [
                score("A", events["A"][0], world.housing, 80, at(10, 1, 9)),
                score("A", events["A"][1], world.housing, 60, at(10, 2, 9)),
                score("F", events["F"][0] if events["F"] else events["A"][2], world.housing, 10, at(9, 20, 9)),
                score("C", events["C"][0], world.transport, 50, at(10, 3, 9)),
            ]
        )


async def test_reply_quality_is_averaged_per_department_on_the_dashboard_and_exported(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    await add_scores(sessions, world)
    async with sessions() as session:
        table = await kpi.one_table(session, world.supervisor, PERIOD, "reply_quality", now=NOW)
    assert [[cell.text for cell in row] for row in table.rows] == [
        ["交通局", "1", "50.0", "50.0", "40.0", "30.0", "100.0"],
        ["住建局", "2", "70.0", "70.0", "60.0", "50.0", "100.0"],
    ]
    headers = await signed_in(sessions, world.supervisor)
    page = await (await client.get(f"/console/dashboard?{PERIOD_QUERY}", headers=headers)).text()
    assert 'id="figure-reply_quality"' in page
    export = await client.get(f"/console/dashboard/export/reply_quality.csv?{PERIOD_QUERY}", headers=headers)
    rows = list(csv.reader(io.StringIO((await export.read()).decode("utf-8-sig"))))
    assert rows[0] == ["承办部门", "评分答复数", "平均总分", "相关", "完整", "可解释", "及时"]
    assert rows[2] == ["住建局", "2", "70.0", "70.0", "60.0", "50.0", "100.0"]


async def test_an_agent_sees_only_their_department_s_reply_quality_whatever_the_url_asks(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    await add_scores(sessions, world)
    headers = await signed_in(sessions, world.agent)
    other = f"{PERIOD_QUERY}&department={world.transport}"
    export = await client.get(f"/console/dashboard/export/reply_quality.csv?{other}", headers=headers)
    rows = list(csv.reader(io.StringIO((await export.read()).decode("utf-8-sig"))))
    assert [row[0] for row in rows] == ["承办部门", "住建局"]


# --- 3. segment counts --------------------------------------------------------------------------


async def test_the_dashboard_counts_the_period_s_citizens_per_segment_with_links_to_their_cases(
    sessions: Sessions, world: World
) -> None:
    await store_hand_made_ranking(sessions)  # cases A (citizen 0) and C (citizen 1) are in an issue
    async with sessions.begin() as session:
        # Set through the ORM, as the app writes descriptions: the flag the 企业 segment reads follows.
        case_e = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == "E"))
        assert case_e is not None
        case_e.description = "我们公司门口的路灯坏了"
        await session.flush()
        table = await kpi.one_table(session, world.supervisor, PERIOD, "segments", now=NOW)
    assert [[cell.text for cell in row] for row in table.rows] == [
        ["提交工单的市民", "3"],
        ["企业", "1"],
        ["居民", "2"],
        ["重复反映", "2"],
        ["不满意", "1"],
        ["热点问题相关", "2"],
    ]
    window = f"since={PERIOD.since}&until={PERIOD.until}"
    assert table.rows[4][1].href == f"/console/cases?segment=dissatisfied&{window}"
    assert table.rows[5][1].href == f"/console/cases?segment=hot_issue&{window}"


async def test_an_agent_s_segment_counts_are_their_department_s_citizens(sessions: Sessions, world: World) -> None:
    await store_hand_made_ranking(sessions)
    async with sessions() as session:
        table = await kpi.one_table(session, world.agent, PERIOD, "segments", now=NOW)
    counts = {row[0].text: row[1].text for row in table.rows}
    assert counts == {
        "提交工单的市民": "1",
        "企业": "0",
        "居民": "1",
        "重复反映": "1",
        "不满意": "0",
        "热点问题相关": "1",
    }
    assert table.rows[5][1].href == (
        f"/console/cases?segment=hot_issue&since={PERIOD.since}&until={PERIOD.until}&department={world.housing}"
    )


# --- 4. the hot-issue segment and the citizen page ----------------------------------------------


async def hot_issue_cases(session: AsyncSession, now: datetime) -> set[str]:
    """The case numbers the case list shows for ?segment=hot_issue."""
    stmt = select(ServiceCase.case_number).where(case_in_segment(Segment.HOT_ISSUE, now))
    return set((await session.scalars(stmt)).all())


async def test_the_hot_issue_segment_is_the_citizens_of_the_newest_ranking_less_unrelated_messages(
    sessions: Sessions,
) -> None:
    await add_cases(sessions, HAND_MADE)  # a1-a3 and b1-b2 group into two issues; z1 stays alone
    await service.refresh_snapshot(sessions, date(2026, 3, 1), date(2026, 3, 7))
    now = datetime(2026, 3, 8, 12, 0, tzinfo=NOW.tzinfo)
    async with sessions() as session:
        listed = await hot_issue_cases(session, now)
        assert Segment.HOT_ISSUE in await segments_of(session, await citizen_of(sessions, "a3"), as_of=now)
        assert Segment.HOT_ISSUE not in await segments_of(session, await citizen_of(sessions, "z1"), as_of=now)
    assert listed == {"a1", "a2", "a3", "b1", "b2"}

    async with sessions.begin() as session:
        await service.mark_unrelated(session, None, "a3")
    async with sessions() as session:  # at once, before the ranking is computed again
        assert Segment.HOT_ISSUE not in await segments_of(session, await citizen_of(sessions, "a3"), as_of=now)

    await service.refresh_snapshot(sessions, date(2026, 3, 5), date(2026, 3, 7))  # a newer ranking: b1, b2 only
    async with sessions() as session:
        listed = await hot_issue_cases(session, now)
    assert listed == {"b1", "b2"}


async def test_the_citizen_page_lists_the_hot_issues_of_the_citizen_s_cases(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    await store_hand_made_ranking(sessions)
    first = await citizen_of(sessions, "A")
    async with sessions.begin() as session:
        profile = await citizens.citizen_profile(session, world.supervisor, first, now=NOW)
        nobody = await citizens.citizen_profile(session, world.supervisor, await citizen_of(sessions, "E"), now=NOW)
    assert [(issue.description, issue.alert, issue.link) for issue in profile.hot_issues] == [
        ("人民路积水", True, f"{HOT_PAGE}#issue-A")
    ]
    assert nobody.hot_issues == []

    page = await (
        await client.get(f"/console/citizens/{first}", headers=await signed_in(sessions, world.supervisor))
    ).text()
    assert f'<a href="{HOT_PAGE.replace("&", "&amp;")}#issue-A">人民路积水</a>' in page
    agent_page = await (
        await client.get(f"/console/citizens/{first}", headers=await signed_in(sessions, world.agent))
    ).text()
    assert "人民路积水" in agent_page and "/console/hot-issues" not in agent_page  # agents get no link to a 404


async def test_an_agent_sees_only_the_hot_issues_of_their_department_s_cases(sessions: Sessions, world: World) -> None:
    await store_hand_made_ranking(sessions)
    async with sessions.begin() as session:
        # Citizen 1's case C (交通局) is in the issue; the 住建局 agent may not see citizen 1 at all.
        with pytest.raises(NotFound):
            await citizens.citizen_profile(session, world.agent, await citizen_of(sessions, "C"), now=NOW)
        await session.execute(
            update(ServiceCase).where(ServiceCase.case_number == "D").values(department_id=world.housing)
        )
        profile = await citizens.citizen_profile(session, world.agent, await citizen_of(sessions, "C"), now=NOW)
    assert profile.hot_issues == []  # D is theirs now, but C (in the issue) is still 交通局's


# --- 5. speed: the segment counts read indexes, not every description --------------------------


async def test_the_enterprise_segment_reads_the_partial_index_of_cases_naming_a_business(sessions: Sessions) -> None:
    """Counting 企业 among a period's citizens must not read every case of theirs (100,000 descriptions)."""
    cases = aliased(ServiceCase)
    per_citizen = select(ServiceCase.id).where(in_segment(Segment.ENTERPRISE, ServiceCase.citizen_id, NOW))
    listed = select(cases.id).where(case_in_segment(Segment.ENTERPRISE, NOW))
    async with sessions() as session:
        connection = await session.connection()
        if connection.dialect.name != "sqlite":
            pytest.skip("reads SQLite's query plan")
        for stmt in (per_citizen, listed):
            compiled = stmt.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row[3]) for row in await connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
            assert "ix_service_case_business_citizen_id" in plan, plan
