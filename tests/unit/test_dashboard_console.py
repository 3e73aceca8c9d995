"""The dashboard page and its exports over HTTP, in process: scope, audit, formats, the chart contract."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from crm_backend.console.dashboard import DashboardViews
from crm_backend.console.web import SESSION_COOKIE, ConsoleBase, build_templates
from crm_backend.http import error_middleware
from crm_backend.models import AuditEntry, StaffUser
from crm_backend.services import staff
from tests.support.dashboard import PERIOD, Sessions, World, build_world

PERIOD_QUERY = f"period=custom&since={PERIOD.since}&until={PERIOD.until}"


@pytest.fixture
async def world(sessions: Sessions) -> World:
    return await build_world(sessions)


@pytest.fixture
async def client(sessions: Sessions) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[error_middleware])
    DashboardViews(ConsoleBase(sessions, build_templates(), secure_cookies=False), ["A1区", "A2区"]).add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def signed_in(sessions: Sessions, user: StaffUser) -> dict[str, str]:
    async with sessions.begin() as session:
        opened = await staff.open_session(session, await session.get(StaffUser, user.id) or user)
    return {"Cookie": f"{SESSION_COOKIE}={opened.token}", "Accept": "text/html"}


async def test_supervisor_sees_every_department_with_charts_before_their_tables(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    response = await client.get(
        f"/console/dashboard?{PERIOD_QUERY}", headers=await signed_in(sessions, world.supervisor)
    )
    page = await response.text()
    assert response.status == 200
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "住建局" in page and "交通局" in page
    # 14 days: a long table, in a box that scrolls, right under its chart.
    assert re.search(
        r'<figure class="chart" data-chart="line" data-table="volume_day"></figure>\s*'
        r'<div class="table-scroll"[^>]*>\s*<table class="list dashboard" id="volume_day">',
        page,
    )
    overdue_tile = r'<li class="flag" data-metric="当前超期" data-value="\d+"><a href="/console/cases\?overdue=1">'
    assert re.search(overdue_tile, page)
    assert 'data-value="50.0"' in page
    assert f'href="/console/dashboard/export/timeliness.csv?{PERIOD_QUERY}"'.replace("&", "&amp;") in page


async def test_agent_cannot_see_another_departments_figures_through_the_url_or_exports(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    headers = await signed_in(sessions, world.agent)
    other = f"{PERIOD_QUERY}&department={world.transport}"
    page = await (await client.get(f"/console/dashboard?{other}", headers=headers)).text()
    assert "住建局" in page
    assert "交通局" not in page
    timeliness = await client.get(f"/console/dashboard/export/timeliness.csv?{other}", headers=headers)
    rows = list(csv.reader(io.StringIO((await timeliness.read()).decode("utf-8-sig"))))
    assert [row[0] for row in rows] == ["承办部门", "住建局"]
    cases = await client.get(f"/console/dashboard/export/cases.csv?{other}", headers=headers)
    numbers = [row[0] for row in csv.reader(io.StringIO((await cases.read()).decode("utf-8-sig")))]
    assert numbers == ["工单号", "A", "B"]


async def test_exports_are_csv_and_xlsx_and_audited(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    openpyxl = pytest.importorskip("openpyxl", reason="openpyxl is in requirements/app.lock: run bin/setup")

    headers = await signed_in(sessions, world.supervisor)
    response = await client.get(f"/console/dashboard/export/repeats.xlsx?{PERIOD_QUERY}", headers=headers)
    assert response.status == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="repeats-20260928-20261011.xlsx"'
    sheet = openpyxl.load_workbook(io.BytesIO(await response.read())).active
    assert sheet is not None
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert values[0] == ["承办部门", "工单数", "重复投诉", "重复投诉率", "关联重复件"]
    assert ["交通局", 2, 2, 100.0, 1] in values
    response = await client.get(f"/console/dashboard/export/cases.csv?{PERIOD_QUERY}&channel=telegram", headers=headers)
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert [row[0] for row in csv.reader(io.StringIO((await response.read()).decode("utf-8-sig")))] == [
        "工单号",
        "C",
        "D",
    ]
    async with sessions() as session:
        audited = (await session.execute(select(AuditEntry.target, AuditEntry.detail).where(
            AuditEntry.action == "dashboard.export").order_by(AuditEntry.id))).all()  # fmt: skip
    assert [target for target, _ in audited] == ["repeats.xlsx", "cases.csv"]
    assert "channel=telegram" in audited[1][1]


async def test_unknown_export_and_no_session_are_refused(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    headers = await signed_in(sessions, world.supervisor)
    assert (await client.get("/console/dashboard/export/secrets.csv", headers=headers)).status == 404
    assert (await client.get("/console/dashboard/export/repeats.pdf", headers=headers)).status == 404
    anonymous = await client.get("/console/dashboard/export/cases.csv")
    assert anonymous.status == 401
    bad = await client.get("/console/dashboard?period=custom&since=2026-10-11&until=2026-09-01", headers=headers)
    assert bad.status == 422
    assert "结束日期早于开始日期" in await bad.text()


async def test_citizen_text_in_an_export_is_never_a_spreadsheet_formula(
    sessions: Sessions, world: World, client: TestClient[web.Request, web.Application]
) -> None:
    """A question a citizen typed is exported as text: a leading = + - @ gets a quote, so Excel will not run it."""
    from crm_backend.models import KnowledgeMiss
    from tests.support.dashboard import at

    async with sessions.begin() as session:
        session.add(KnowledgeMiss(question='=HYPERLINK("http://evil.example","点我")', created_at=at(10, 3, 9)))
    headers = await signed_in(sessions, world.supervisor)
    response = await client.get(f"/console/dashboard/export/bot_misses.csv?{PERIOD_QUERY}", headers=headers)
    rows = list(csv.reader(io.StringIO((await response.read()).decode("utf-8-sig"))))
    assert ['\'=HYPERLINK("http://evil.example","点我")', "1"] in rows
