"""The open dataset downloaded from the console: supervisors and admins only, audited, same content."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from crm_backend.console.dashboard import DashboardViews
from crm_backend.console.web import SESSION_COOKIE, ConsoleBase, build_templates
from crm_backend.http import error_middleware
from crm_backend.models import AuditEntry, Department, StaffUser
from crm_backend.services import open_data, staff
from tests.support.console_app import console_app
from tests.unit.test_open_data import EXPECTED_CSV, Sessions, build_cases

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(sessions: Sessions) -> AsyncIterator[Client]:
    async with TestClient(TestServer(console_app(sessions))) as test_client:
        yield test_client


async def member(sessions: Sessions, role: str) -> dict[str, str]:
    """The session cookie of a new member of staff with this role."""
    async with sessions.begin() as session:
        user = StaffUser(username=f"{role}.one", display_name=role, password_hash="x", role=role)
        if role == "agent":
            department = Department(code="A-test", name="测试部门")
            session.add(department)
            await session.flush()
            user.department_id = department.id
        session.add(user)
        await session.flush()
        opened = await staff.open_session(session, user)
    return {SESSION_COOKIE: opened.token}


async def test_a_supervisor_downloads_the_months_csv_and_it_is_audited(sessions: Sessions, client: Client) -> None:
    await build_cases(sessions)
    response = await client.get("/console/open-data/cases-2026-10.csv", cookies=await member(sessions, "supervisor"))
    assert response.status == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="cases-2026-10.csv"'
    assert response.content_type == "text/csv"
    body = (await response.read()).decode("utf-8")
    expected = EXPECTED_CSV.split("\r\n")
    lines = body.split("\r\n")
    assert lines[0] == expected[0]  # BOM and header
    assert len(lines) == len(expected)
    # The default generalises every October cell (each has fewer than 5 cases).
    rows = list(csv.DictReader(io.StringIO(body.lstrip("\ufeff"))))
    assert {(row["case_number"], row["district"]) for row in rows} == {("", "其他")}
    async with sessions() as session:
        entry = (await session.scalars(select(AuditEntry).where(AuditEntry.action == "open_data.download"))).one()
    assert (entry.actor, entry.target) == ("supervisor.one", "cases-2026-10.csv")


async def test_an_admin_downloads_the_json(sessions: Sessions, client: Client) -> None:
    await build_cases(sessions)
    response = await client.get("/console/open-data/cases-2026-10.json", cookies=await member(sessions, "admin"))
    assert response.status == 200
    document = json.loads(await response.read())
    assert (document["month"], document["row_count"], document["generalised_rows"]) == ("2026-10", 6, 6)
    assert [row["filed_date"] for row in document["rows"]] == [
        "2026-10-01",
        "2026-10-05",
        "2026-10-10",
        "2026-10-15",
        "2026-10-20",
        "2026-10-31",
    ]


@pytest.mark.parametrize("role", ["agent", "auditor"])
async def test_agents_and_auditors_get_no_open_data(sessions: Sessions, client: Client, role: str) -> None:
    response = await client.get("/console/open-data/cases-2026-10.csv", cookies=await member(sessions, role))
    assert response.status == 404


async def test_a_visitor_without_a_session_is_refused(client: Client) -> None:
    response = await client.get("/console/open-data/cases-2026-10.csv")
    assert response.status == 401


@pytest.mark.parametrize(
    ("name", "status"), [("cases-2026-13.csv", 422), ("cases-2026-10.xlsx", 404), ("data-2026-10.csv", 404)]
)
async def test_a_bad_month_or_name_is_refused(sessions: Sessions, client: Client, name: str, status: int) -> None:
    response = await client.get(f"/console/open-data/{name}", cookies=await member(sessions, "supervisor"))
    assert response.status == status


async def test_the_dashboard_links_last_months_files_for_supervisors_only(sessions: Sessions) -> None:
    app = web.Application(middlewares=[error_middleware])
    DashboardViews(ConsoleBase(sessions, build_templates(), secure_cookies=False), ["A1区"]).add_routes(app)
    month = open_data.last_month().label
    link = f'<a href="/console/open-data/cases-{month}.csv">CSV</a>'
    async with TestClient(TestServer(app)) as dashboard:
        supervisor = await dashboard.get("/console/dashboard", cookies=await member(sessions, "supervisor"))
        assert link in await supervisor.text()
        agent = await dashboard.get("/console/dashboard", cookies=await member(sessions, "agent"))
        assert agent.status == 200
        assert "/console/open-data/" not in await agent.text()
