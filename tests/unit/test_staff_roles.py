"""The auditor role (三员分立) and the read-only audit log, over the real console routes in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.console.web import SESSION_COOKIE, home_page
from crm_backend.dispatch.routing import seed_routing
from crm_backend.lifecycle import Permission, Role
from crm_backend.models import AuditEntry, StaffUser
from crm_backend.services import audit, staff
from tests.support.console_app import console_app

Sessions = async_sessionmaker[AsyncSession]
PASSWORD = "correct horse battery"
Client = TestClient[web.Request, web.Application]
# Routes anyone may reach: the sign-in steps themselves, and the console's front door and files.
PUBLIC_ROUTES = {"/console", "/console/", "/console/login", "/console/login/code", "/console/login/enrol"}


@pytest.fixture
async def people(sessions: Sessions) -> dict[str, StaffUser]:
    async with sessions.begin() as session:
        await seed_routing(session)
        made = {
            role: await staff.create_user(
                session,
                username=f"{role}.one",
                display_name=role,
                password=PASSWORD,
                role=role,
                department_code="A-housing" if role == "agent" else None,
            )
            for role in ("agent", "supervisor", "admin", "auditor")
        }
    return made


@pytest.fixture
async def client(sessions: Sessions) -> AsyncIterator[Client]:
    async with TestClient(TestServer(console_app(sessions))) as test_client:
        yield test_client


async def cookie_of(sessions: Sessions, user: StaffUser) -> dict[str, str]:
    async with sessions.begin() as session:
        opened = await staff.open_session(session, user)
    return {SESSION_COOKIE: opened.token}


def route_guards(app: web.Application) -> dict[tuple[str, str], Permission | None]:
    """Each (method, path) of the console and the API, and the permission its guard asks for."""
    guards: dict[tuple[str, str], Permission | None] = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        if path.startswith("/console/static"):
            continue
        handler = getattr(route.handler, "__func__", route.handler)
        guards[(route.method, path)] = getattr(handler, "permission", None)
    return guards


async def test_the_auditor_may_reach_the_audit_log_and_sign_out_and_nothing_else(sessions: Sessions) -> None:
    guards = route_guards(console_app(sessions))
    console = {key: permission for key, permission in guards.items() if key[1].startswith("/console")}
    unguarded = {key for key, permission in console.items() if permission is None}
    assert {path for _method, path in unguarded} <= PUBLIC_ROUTES
    reachable = {key for key, permission in console.items() if permission and Role.AUDITOR.may(permission)}
    assert reachable == {("GET", "/console/audit"), ("POST", "/console/logout")}
    # The API is for integrations' keys, never a staff session, and has no audit route at all.
    assert not [key for key in guards if key[1].startswith("/api") and "audit" in key[1]]


@pytest.mark.parametrize(
    "path",
    [
        "/console/inbox",
        "/console/cases",
        "/console/queue",
        "/console/cases/20261205-0001",
        "/console/citizens/1",
        "/console/conversations/1",
        "/console/dashboard",
        "/console/knowledge",
        "/console/hot-issues",
        "/console/admin/users",
        "/console/admin/api-clients",
    ],
)
async def test_the_auditor_gets_no_case_conversation_dashboard_or_admin_page(
    sessions: Sessions, people: dict[str, StaffUser], client: Client, path: str
) -> None:
    cookies = await cookie_of(sessions, people["auditor"])
    page = await client.get(path, headers={"Accept": "text/html"}, cookies=cookies)
    assert page.status == 404


async def test_the_auditor_reads_the_audit_log_with_filters_and_pages(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    async with sessions.begin() as session:
        for number in range(105):
            audit.record(session, people["admin"], "user.password", f"user{number}")
        audit.record(session, people["supervisor"], "case.view", "20261205-0001")
    cookies = await cookie_of(sessions, people["auditor"])
    first = await client.get("/console/audit", headers={"Accept": "text/html"}, cookies=cookies)
    html = await first.text()
    assert first.status == 200
    assert html.count("<tr><td>") == 100 and "20261205-0001" in html
    assert 'href="/console/inbox"' not in html and 'href="/console/admin/users"' not in html
    assert 'href="/console/audit"' in html
    assert "<form" in html and 'method="post" action="/console/logout"' in html
    assert html.count('method="post"') == 1  # sign out is the only thing to post
    older = await client.get("/console/audit?actor=admin.one&before=200", cookies=cookies)
    older_html = await older.text()
    assert older_html.count('title="admin.one"') == 100 and 'data-action="case.view"' not in older_html
    assert 'href="/console/audit?actor=admin.one&amp;before=' in older_html
    by_action = await (await client.get("/console/audit?action=case.view", cookies=cookies)).text()
    assert by_action.count("<tr><td>") == 1
    none_then = await client.get("/console/audit?until=2020-01-01", cookies=cookies)
    assert "暂无记录" in await none_then.text()


async def test_the_audit_log_filters_by_china_date(sessions: Sessions, people: dict[str, StaffUser]) -> None:
    async with sessions.begin() as session:
        late = audit.record(session, people["admin"], "user.create", "late")
        late.created_at = datetime(2026, 12, 4, 16, 30, tzinfo=UTC)  # 12-05 00:30 in Beijing
        early = audit.record(session, people["admin"], "user.create", "early")
        early.created_at = datetime(2026, 12, 4, 15, 30, tzinfo=UTC)  # 12-04 23:30 in Beijing
    from crm_backend.console.admin import _china_midnight

    async with sessions() as session:
        rows = await audit.recent_entries(
            session,
            action="user.create",
            since=_china_midnight("2026-12-05"),
            until=_china_midnight("2026-12-05", next_day=True),
        )
    assert [row.entry.target for row in rows] == ["late"]


async def test_no_one_can_change_or_delete_audit_rows_through_the_console(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    async with sessions.begin() as session:
        audit.record(session, people["admin"], "user.create", "someone")
    for role in ("admin", "auditor"):
        cookies = await cookie_of(sessions, people[role])
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in ("/console/audit", "/console/audit/1"):
                refused = await client.request(method, path, cookies=cookies, data={"op": "delete", "id": "1"})
                assert refused.status in (404, 405), (role, method, path)
    async with sessions() as session:
        assert await session.scalar(select(func.count(AuditEntry.id))) == 1


async def test_agents_do_not_read_the_audit_log_and_supervisors_do(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    agent = await client.get("/console/audit", cookies=await cookie_of(sessions, people["agent"]))
    supervisor = await client.get("/console/audit", cookies=await cookie_of(sessions, people["supervisor"]))
    assert (agent.status, supervisor.status) == (404, 200)


def test_an_auditor_lands_on_the_audit_log_and_everyone_else_on_the_inbox() -> None:
    assert home_page(Role.AUDITOR) == "/console/audit"
    assert {home_page(role) for role in (Role.AGENT, Role.SUPERVISOR, Role.ADMIN)} == {"/console/inbox"}
