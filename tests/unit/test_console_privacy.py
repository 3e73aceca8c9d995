"""The console's privacy requests: supervisors see them, only admins export, erase or refuse."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.console.privacy import PrivacyViews
from crm_backend.console.web import ConsoleBase, build_templates
from crm_backend.dispatch.routing import seed_routing
from crm_backend.http import error_middleware
from crm_backend.models import AuditEntry, PrivacyRequest, ServiceCase
from crm_backend.services import privacy, staff
from crm_backend.services.conversations import resolve_identity
from tests.unit.test_console_hot_issues import PASSWORD, signed_in_as
from tests.unit.test_privacy_retention import PHONE, PLACE, WORDS, citizen_with_a_case

Sessions = async_sessionmaker[AsyncSession]
Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(sessions: Sessions) -> AsyncIterator[Client]:
    async with sessions.begin() as session:
        await seed_routing(session)
        for username, role in (("zhao", "admin"), ("wang", "supervisor")):
            await staff.create_user(session, username=username, display_name=username, password=PASSWORD, role=role)
        await staff.create_user(
            session,
            username="li.housing",
            display_name="李",
            password=PASSWORD,
            role="agent",
            department_code="A-housing",
        )
    app = web.Application(middlewares=[error_middleware])  # NotFound → 404, as in the app
    PrivacyViews(ConsoleBase(sessions, build_templates(), secure_cookies=False), None).add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def requested(sessions: Sessions, kind: str) -> int:
    """A citizen with a case who asked for `kind`; the request's id."""
    await citizen_with_a_case(sessions)
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", "browser-1")
        request, _ = await privacy.file_request(session, identity, kind)
        return request.id


async def test_agents_do_not_see_requests_and_supervisors_cannot_act_on_them(
    sessions: Sessions, client: Client
) -> None:
    request_id = await requested(sessions, privacy.ERASURE)
    await signed_in_as(sessions, client, "li.housing")
    assert (await client.get("/console/privacy")).status == 404
    csrf = await signed_in_as(sessions, client, "wang")
    page = await client.get("/console/privacy")
    html = await page.text()
    assert page.status == 200 and "139****5678" in html and "删除个人信息" in html and "执行删除" not in html
    erase = await client.post(f"/console/privacy/{request_id}", data={"csrf": csrf, "op": "erase"})
    export = await client.get(f"/console/privacy/{request_id}/export.json")
    assert (erase.status, export.status) == (404, 404)
    async with sessions() as session:
        assert await session.scalar(select(ServiceCase.description)) == WORDS


async def test_an_admin_erases_a_citizen_on_request(sessions: Sessions, client: Client) -> None:
    request_id = await requested(sessions, privacy.ERASURE)
    csrf = await signed_in_as(sessions, client, "zhao")
    assert (await client.post(f"/console/privacy/{request_id}", data={"op": "erase"})).status == 403  # no CSRF
    done = await client.post(f"/console/privacy/{request_id}", data={"csrf": csrf, "op": "erase"})
    assert done.status == 200 and "已删除该市民的个人信息" in await done.text()  # followed to the list
    async with sessions() as session:
        assert await session.scalar(select(ServiceCase.location)) == privacy.ERASED
        assert await session.scalar(select(PrivacyRequest.status)) == privacy.DONE
        assert await session.scalar(select(AuditEntry.actor).where(AuditEntry.action == "privacy.erased")) == "zhao"
    again = await client.post(f"/console/privacy/{request_id}", data={"csrf": csrf, "op": "erase"})
    assert again.status == 404  # handled already


async def test_an_admin_exports_a_copy_then_marks_it_given(sessions: Sessions, client: Client) -> None:
    request_id = await requested(sessions, privacy.COPY)
    csrf = await signed_in_as(sessions, client, "zhao")
    export = await client.get(f"/console/privacy/{request_id}/export.json")
    assert export.status == 200 and export.headers["Cache-Control"] == "no-store"
    data = await export.json()
    assert data["citizen"]["phone"] == PHONE and data["cases"][0]["location"] == PLACE
    wrong = await client.post(f"/console/privacy/{request_id}", data={"csrf": csrf, "op": "erase"})
    assert wrong.status == 400  # a copy request is not an erasure
    given = await client.post(f"/console/privacy/{request_id}", data={"csrf": csrf, "op": "done"})
    assert given.status == 200
    async with sessions() as session:
        assert await session.scalar(select(PrivacyRequest.status)) == privacy.DONE
        assert await session.scalar(select(ServiceCase.location)) == PLACE


async def test_a_refusal_needs_a_reason(sessions: Sessions, client: Client) -> None:
    request_id = await requested(sessions, privacy.ERASURE)
    csrf = await signed_in_as(sessions, client, "zhao")
    bare = await client.post(f"/console/privacy/{request_id}", data={"csrf": csrf, "op": "refuse", "reason": " "})
    assert bare.status == 400 and "驳回时须填写理由" in await bare.text()
    reason = "该市民有未办结的工单，办结后再处理"
    refused = await client.post(f"/console/privacy/{request_id}", data={"csrf": csrf, "op": "refuse", "reason": reason})
    assert refused.status == 200
    async with sessions() as session:
        found = await session.scalar(select(PrivacyRequest))
        assert found is not None and (found.status, found.note) == (privacy.REFUSED, reason)
    listed = await (await client.get("/console/privacy", params={"status": "refused"})).text()
    assert reason in listed
