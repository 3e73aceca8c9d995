"""The 数据看板 in a real browser against the running app, and an agent's scope over HTTP.

A supervisor opens the dashboard from the console's navigation, sees today's cases in the
figures (a screenshot is kept in artifacts/), follows a figure's link to the cases behind it,
and downloads the cases as CSV. An agent asking the URL (and the export) for another
department's figures gets their own department's only.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.models import Department
from crm_backend.settings import normalise_database_url
from tests.integration.test_browser import CHROMIUM
from tests.integration.test_console import file_case_now, resolve_through_the_console, run_now
from tests.integration.test_console_browser import new_page, sign_in
from tests.support.console import ConsoleClient, create_staff
from tests.support.stack import Stack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (bin/test installs chromium)"),
]


async def department_ids(stack: Stack) -> dict[str, int]:
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine)() as session:
            return {code: id_ for id_, code in (await session.execute(select(Department.id, Department.code))).all()}
    finally:
        await engine.dispose()


def test_supervisor_reads_the_dashboard_follows_a_figure_and_exports_csv(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    housing, _ = file_case_now(stack, "A-housing", "解放路路灯坏了")
    transport, _ = file_case_now(stack, "A-transport", "公交站台顶棚漏雨")
    supervisor = create_staff(stack, "supervisor", display_name="看板王")
    client = ConsoleClient(stack)
    client.login(supervisor)
    resolve_through_the_console(client, housing)

    problems: list[str] = []
    page = new_page(browser, problems)
    sign_in(page, stack, supervisor)
    page.click("nav >> text=数据看板")
    page.wait_for_url(re.compile(r"/console/dashboard$"))
    expect(page.locator("h1")).to_have_text("数据看板")
    # The headline first: the totals of the tables below.
    filed = sum(int(n) for n in page.locator("table#volume_day tbody tr td:nth-child(2)").all_inner_texts())
    overdue = sum(int(n) for n in page.locator("table#timeliness tbody tr td:nth-child(4)").all_inner_texts())
    assert filed >= 2
    expect(page.locator("#headline li[data-metric=工单量] strong")).to_have_text(str(filed))
    expect(page.locator("#headline li[data-metric=当前超期] strong")).to_have_text(str(overdue))
    # Each chart is declared right before its table, and the table is always there (a long one
    # scrolls in its own box).
    expect(page.locator("figure.chart[data-table=volume_day] + .table-scroll > table#volume_day")).to_have_count(1)
    expect(page.locator("table#timeliness")).to_contain_text("A市住房和城乡建设局")
    expect(page.locator("table#stage_overall")).to_contain_text("签收→办结")
    page.screenshot(path=str(artifacts_dir / "console-dashboard.png"), full_page=True)

    today = page.locator("table#volume_day tbody tr").last
    today.locator("td").nth(1).locator("a").click()
    page.wait_for_url(re.compile(r"/console/cases\?since="))
    expect(page.locator("#case-list")).to_contain_text(housing)
    expect(page.locator("#case-list")).to_contain_text(transport)

    page.go_back()
    with page.expect_download() as download:
        page.click("#export-cases-csv")
    content = Path(download.value.path()).read_text(encoding="utf-8-sig")
    numbers = [row[0] for row in csv.reader(io.StringIO(content))]
    assert numbers[0] == "工单号"
    assert {housing, transport} <= set(numbers)
    assert problems == []


def test_agent_gets_only_their_departments_figures_whatever_the_url_asks(stack: Stack) -> None:
    housing, _ = file_case_now(stack, "A-housing", "建设路井盖丢了")
    transport, _ = file_case_now(stack, "A-transport", "中山路公交站牌倒了")
    agent = create_staff(stack, "agent", "A-housing", "住建看板李")
    other = run_now(department_ids(stack))["A-transport"]
    client = ConsoleClient(stack)
    client.login(agent)
    page = client.get(f"/dashboard?department={other}")
    assert page.status_code == 200
    assert "A市住房和城乡建设局" in page.text
    assert "A市交通运输局" not in page.text
    export = client.get(f"/dashboard/export/cases.csv?department={other}")
    numbers = [row[0] for row in csv.reader(io.StringIO(export.content.decode("utf-8-sig")))]
    assert housing in numbers
    assert transport not in numbers
