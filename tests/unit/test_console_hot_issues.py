"""The console's hot-issue page: supervisors only, CSRF on the corrections, decisions kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.console.hot_issues import HotIssueViews
from crm_backend.console.web import SESSION_COOKIE, ConsoleBase, build_templates
from crm_backend.dispatch.routing import seed_routing
from crm_backend.hotissues import service
from crm_backend.models import AuditEntry, HotIssueDecision, StaffUser
from crm_backend.services import staff
from tests.unit.test_hot_issues import HAND_MADE, add_cases

Sessions = async_sessionmaker[AsyncSession]
PASSWORD = "correct horse battery staple"
SINCE, UNTIL = date(2026, 3, 1), date(2026, 3, 7)


@pytest.fixture
async def client(sessions: Sessions) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with sessions.begin() as session:
        await seed_routing(session)
        await staff.create_user(session, username="wang", display_name="王", password=PASSWORD, role="supervisor")
        await staff.create_user(
            session,
            username="li.housing",
            display_name="李",
            password=PASSWORD,
            role="agent",
            department_code="A-housing",
        )
    await add_cases(sessions, HAND_MADE)
    await service.refresh_snapshot(sessions, SINCE, UNTIL)
    app = web.Application()
    HotIssueViews(ConsoleBase(sessions, build_templates(), secure_cookies=False)).add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def signed_in_as(sessions: Sessions, client: TestClient[web.Request, web.Application], username: str) -> str:
    """A whole console session for `username` on the client (password and, where required, the
    second factor done: `test_two_factor` tests those steps); returns the session's CSRF token."""
    async with sessions.begin() as session:
        user = await session.scalar(select(StaffUser).where(StaffUser.username == username))
        assert user is not None
        signed = await staff.open_session(session, user)
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: signed.token})
    return signed.session.csrf_token


WINDOW = {"since": SINCE.isoformat(), "until": UNTIL.isoformat()}


async def test_an_agent_cannot_see_or_correct_hot_issues(
    sessions: Sessions, client: TestClient[web.Request, web.Application]
) -> None:
    csrf = await signed_in_as(sessions, client, "li.housing")
    page = await client.get("/console/hot-issues", params=WINDOW)
    merge = await client.post("/console/hot-issues/merge", data={"csrf": csrf, "issue": "a1", "into": "b1"})
    unrelated = await client.post("/console/hot-issues/unrelated", data={"csrf": csrf, "message": "a3"})
    assert (page.status, merge.status, unrelated.status) == (404, 404, 404)
    async with sessions() as session:
        assert (await session.scalars(select(HotIssueDecision))).all() == []


async def test_a_supervisor_sees_the_cached_top_issues_with_their_messages(
    sessions: Sessions, client: TestClient[web.Request, web.Application]
) -> None:
    await signed_in_as(sessions, client, "wang")
    page = await client.get("/console/hot-issues", params=WINDOW)
    html = await page.text()
    assert page.status == 200
    assert html.index("幸福路菜市场") < html.index("光明小区电梯")  # three citizens before two
    for key in ("a1", "a2", "a3", "b1", "b2"):
        assert f'href="/console/cases/{key}"' in html
    assert "居住证" not in html  # a lone question is no issue


async def test_a_correction_without_the_csrf_token_is_refused(
    sessions: Sessions, client: TestClient[web.Request, web.Application]
) -> None:
    await signed_in_as(sessions, client, "wang")
    refused = await client.post("/console/hot-issues/unrelated", data={"message": "a3"})
    assert refused.status == 403
    async with sessions() as session:
        assert (await session.scalars(select(HotIssueDecision))).all() == []


async def test_a_supervisor_merges_two_issues_and_takes_a_message_out(
    sessions: Sessions, client: TestClient[web.Request, web.Application]
) -> None:
    csrf = await signed_in_as(sessions, client, "wang")
    merged = await client.post(
        "/console/hot-issues/merge", data={"csrf": csrf, "issue": "b1", "into": "a1", **WINDOW}, allow_redirects=False
    )
    out = await client.post(
        "/console/hot-issues/unrelated", data={"csrf": csrf, "message": "a3", **WINDOW}, allow_redirects=False
    )
    assert (merged.status, out.status) == (303, 303)
    assert out.headers["Location"] == "/console/hot-issues?since=2026-03-01&until=2026-03-07"
    async with sessions() as session:
        issues = await service.top_issues(session, since=SINCE, until=UNTIL)
        actions = (await session.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all()
    assert [sorted(m.key for m in issue.members) for issue in issues] == [["a1", "a2", "b1", "b2"]]
    assert actions[-2:] == ["hot_issue.merge", "hot_issue.unrelated"]
    page = await (await client.get("/console/hot-issues", params=WINDOW)).text()
    assert "光明小区电梯" in page and 'href="/console/cases/a3"' not in page


async def test_merging_an_issue_into_itself_shows_an_error(
    sessions: Sessions, client: TestClient[web.Request, web.Application]
) -> None:
    csrf = await signed_in_as(sessions, client, "wang")
    answer = await client.post("/console/hot-issues/merge", data={"csrf": csrf, "issue": "a1", "into": "a1", **WINDOW})
    assert answer.status == 422
    assert "另一个问题" in await answer.text()


async def test_the_notice_after_a_correction_shows_once_on_whichever_app_process_serves_the_redirect(
    sessions: Sessions, client: TestClient[web.Request, web.Application]
) -> None:
    csrf = await signed_in_as(sessions, client, "wang")
    other_app = web.Application()  # a second app process behind the same proxy
    HotIssueViews(ConsoleBase(sessions, build_templates(), secure_cookies=False)).add_routes(other_app)
    async with TestClient(TestServer(other_app)) as other:
        done = await client.post(
            "/console/hot-issues/unrelated", data={"csrf": csrf, "message": "a3", **WINDOW}, allow_redirects=False
        )
        assert done.status == 303
        # The browser follows the redirect with its cookies; the proxy sends it to the other process.
        cookies = {name: morsel.value for name, morsel in done.cookies.items()}
        cookies[SESSION_COOKIE] = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))[
            SESSION_COOKIE
        ].value
        header = {"Cookie": "; ".join(f"{name}={value}" for name, value in cookies.items())}
        shown = await other.get(done.headers["Location"], headers=header)
        assert "已将 a3 移出热点问题" in await shown.text()
        consumed = {name: morsel.value for name, morsel in shown.cookies.items()}
        assert set(consumed) == set(cookies) - {SESSION_COOKIE} and not any(consumed.values())  # once


async def test_a_notice_cookie_not_signed_for_the_session_is_not_shown(
    sessions: Sessions, client: TestClient[web.Request, web.Application]
) -> None:
    await signed_in_as(sessions, client, "wang")
    session_cookie = client.session.cookie_jar.filter_cookies(client.make_url("/console/"))[SESSION_COOKIE].value
    forged = "5bey5Yig6Zmk5omA5pyJ5bel5Y2V.0123456789abcdef0123456789abcdef"  # 「已删除所有工单」, made up
    page = await client.get(
        "/console/hot-issues",
        params=WINDOW,
        headers={"Cookie": f"{SESSION_COOKIE}={session_cookie}; console_notice={forged}"},
    )
    assert page.status == 200 and "已删除所有工单" not in await page.text()
