"""An admin edits a knowledge-base entry in a real browser, and the bot's search sees the edit.

The admin finds the entry in the list, opens it, changes its answer and one of its questions,
saves, finds the new version in the history under their display name with the changed fields,
and opens the old version. The knowledge base the bot searches then returns the new answer,
and the new question finds the entry. Screenshots are kept in artifacts/.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.knowledge.entries import EntryData
from crm_backend.knowledge.facts import CityFacts
from crm_backend.models import StaffUser
from crm_backend.services import knowledge
from tests.integration.test_browser import CHROMIUM
from tests.integration.test_console_browser import new_page, sign_in
from tests.integration.test_console_knowledge import with_database
from tests.support.console import create_staff
from tests.support.naming import unique
from tests.support.stack import Stack

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (bin/test installs chromium)"),
]
EDITOR = "知识编辑张"
OLD_ANSWER = "申领材料：身份证原件。\n办理地点：各区政务服务中心【本地办事地址】。"
NEW_ANSWER = "申领材料：身份证原件、近期照片一张。\n办理地点：各区政务服务中心【本地办事地址】，也可网上申请。"
NEW_QUESTION = "星光卡丢了去哪里补办"


def create_entry_as(stack: Stack, username: str, slug: str) -> int:
    """A 星光卡 entry (version 1) saved by the given member of staff through the service; its id."""
    data = EntryData(
        slug=slug,
        title=f"星光卡申领指南 {slug[-4:]}",
        category="民政",
        department="A市民政局",
        questions=("星光卡怎么申领", "办星光卡要带什么"),
        answer=OLD_ANSWER,
        follow_ups={"材料": "身份证原件。"},
        last_reviewed=date(2026, 11, 20),
    )
    return save_entry(stack, username, data)


def save_entry(stack: Stack, username: str, data: EntryData) -> int:
    """An entry saved by the given member of staff through the service; its id."""

    async def create(sessions: async_sessionmaker[AsyncSession]) -> int:
        async with sessions.begin() as session:
            author = await session.scalar(select(StaffUser).where(StaffUser.username == username))
            assert author is not None
            return (await knowledge.create_entry(session, data, author)).id

    return with_database(stack, create)


def what_the_bot_sees(stack: Stack, slug: str) -> tuple[str | None, str | None]:
    """The entry's answer and the best match for the new question, from the bot's knowledge base."""

    async def look(sessions: async_sessionmaker[AsyncSession]) -> tuple[str | None, str | None]:
        base = knowledge.KnowledgeBase(sessions)
        entry = await base.entry(slug)
        best = (await base.rank(NEW_QUESTION)).best
        return (entry.answer if entry else None), (best.slug if best else None)

    return with_database(stack, look)


def test_an_admin_edits_an_entry_and_finds_the_change_in_its_history(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    username = create_staff(stack, "admin", display_name=EDITOR)
    slug = unique("star-card")
    entry_id = create_entry_as(stack, username, slug)
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, username)

    # Find the entry in the list and open it.
    console.get_by_role("link", name="知识库").click()
    console.wait_for_url(re.compile(r"/console/knowledge$"))
    console.get_by_label("按没帮助次数排序").check()
    console.get_by_role("button", name="查询").click()
    console.wait_for_url(re.compile(r"sort=worst"))
    console.screenshot(path=str(artifacts_dir / "console-knowledge-list.png"))
    console.fill("input[name=q]", slug)
    console.get_by_role("button", name="查询").click()
    row = console.locator(f'#knowledge-list tr[data-entry="{slug}"]')
    expect(row).to_contain_text("第 1 版")
    row.get_by_role("link", name=re.compile("星光卡申领指南")).click()
    console.wait_for_url(re.compile(rf"/console/knowledge/{entry_id}$"))
    expect(console.locator("#entry-version")).to_have_text("第 1 版")

    # Edit the answer and one question, and save.
    console.get_by_role("link", name="编辑此条目").click()
    console.wait_for_url(re.compile(rf"/console/knowledge/{entry_id}/edit$"))
    form = console.locator("#entry-form")
    expect(form.locator("textarea[name=answer]")).to_have_value(OLD_ANSWER)
    form.locator("textarea[name=answer]").fill(NEW_ANSWER)
    form.locator("textarea[name=questions]").fill(f"星光卡怎么申领\n{NEW_QUESTION}")
    console.screenshot(path=str(artifacts_dir / "console-knowledge-edit.png"), full_page=True)
    form.get_by_role("button", name="保存").click()
    console.wait_for_url(re.compile(rf"/console/knowledge/{entry_id}$"))
    expect(console.locator(".flash.notice")).to_contain_text("已保存为第 2 版（修改了：问法、答案）")
    expect(console.locator("#entry-version")).to_have_text("第 2 版")
    expect(console.locator(".answer")).to_have_text(NEW_ANSWER)
    expect(console.locator(".questions")).to_contain_text(NEW_QUESTION)
    console.screenshot(path=str(artifacts_dir / "console-knowledge-entry.png"), full_page=True)

    # The history shows the new version, who saved it and what changed.
    console.locator(".subnav").get_by_role("link", name="修改记录").click()
    console.wait_for_url(re.compile(rf"/console/knowledge/{entry_id}/history$"))
    newest = console.locator('#history tr[data-version="2"]')
    expect(newest.locator(".author")).to_have_text(EDITOR)
    expect(newest.locator(".changed")).to_have_text(re.compile(r"问法\s*答案"))
    expect(newest).to_contain_text("当前")
    expect(console.locator('#history tr[data-version="1"]').get_by_role("button", name="恢复此版本")).to_be_visible()
    console.screenshot(path=str(artifacts_dir / "console-knowledge-history.png"), full_page=True)

    # The old version is still there to read.
    console.locator('#history tr[data-version="1"]').get_by_role("link", name="查看此版本").click()
    console.wait_for_url(re.compile(rf"/console/knowledge/{entry_id}/history/1$"))
    expect(console.locator("#shown-version")).to_have_text("第 1 版")
    expect(console.locator(".answer")).to_have_text(OLD_ANSWER)
    expect(console.locator("#differs")).to_contain_text("问法")
    expect(console.locator("#differs")).to_contain_text("答案")
    console.screenshot(path=str(artifacts_dir / "console-knowledge-old-version.png"), full_page=True)

    # What the bot searches now has the edit.
    answer, best = what_the_bot_sees(stack, slug)
    assert answer == CityFacts({}).render(NEW_ANSWER)  # the test stack's city.yml fills in nothing
    assert best == slug
    assert problems == [], problems


# --- entries that name a fact the city has not filled in ---------------------------------------

WITH_FACTS = "办理地点：各区政务服务中心，【本地办事地址】。\n办理时间：法定工作日【本地办公时间】。"
WITHOUT_FACTS = "办理地点：各区政务服务中心。"


def create_entry_with(stack: Stack, username: str, slug: str, answer: str) -> int:
    """A 月光卡 entry with the given answer, saved by the given member of staff; its id."""
    data = EntryData(
        slug=slug,
        title=f"月光卡申领指南 {slug.removeprefix('moon-card-')}",
        category="民政",
        department="A市民政局",
        questions=("月光卡怎么申领",),
        answer=answer,
        last_reviewed=date(2026, 11, 20),
    )
    return save_entry(stack, username, data)


def test_entries_missing_a_city_fact_are_flagged_and_can_be_listed_alone(
    stack: Stack, browser: Any, artifacts_dir: Path
) -> None:
    username = create_staff(stack, "admin", display_name=EDITOR)
    prefix = unique("moon-card")
    flagged_id = create_entry_with(stack, username, f"{prefix}-facts", WITH_FACTS)
    create_entry_with(stack, username, f"{prefix}-plain", WITHOUT_FACTS)
    problems: list[str] = []
    console = new_page(browser, problems)
    sign_in(console, stack, username)

    # The list flags the entry whose answer names facts the city has not filled in.
    console.goto(f"{stack.app_url}/console/knowledge?q={prefix}")
    flagged = console.locator(f'#knowledge-list tr[data-entry="{prefix}-facts"]')
    plain = console.locator(f'#knowledge-list tr[data-entry="{prefix}-plain"]')
    expect(flagged.locator(".missing-facts")).to_have_text("缺少本地信息：本地办事地址、本地办公时间")
    expect(plain.locator(".missing-facts")).to_have_count(0)
    console.screenshot(path=str(artifacts_dir / "console-knowledge-missing-facts.png"), full_page=True)

    # Filtered to those entries, the other one goes.
    console.get_by_label("只看缺少本地信息的条目").check()
    console.get_by_role("button", name="查询").click()
    console.wait_for_url(re.compile(r"missing=1"))
    expect(flagged).to_be_visible()
    expect(plain).to_have_count(0)
    expect(console.get_by_label("只看缺少本地信息的条目")).to_be_checked()
    console.screenshot(path=str(artifacts_dir / "console-knowledge-missing-facts-filter.png"), full_page=True)

    # The entry names what is missing and where to fill it in.
    flagged.get_by_role("link", name=re.compile("月光卡申领指南")).click()
    console.wait_for_url(re.compile(rf"/console/knowledge/{flagged_id}$"))
    notice = console.locator("#missing-facts")
    expect(notice).to_contain_text("本地办事地址、本地办公时间")
    expect(notice).to_contain_text("city.yml")
    console.screenshot(path=str(artifacts_dir / "console-knowledge-missing-facts-entry.png"), full_page=True)

    # The editor keeps placeholders, and refuses one that names no fact.
    console.get_by_role("link", name="编辑此条目").click()
    form = console.locator("#entry-form")
    expect(form.locator("textarea[name=answer]")).to_have_value(WITH_FACTS)
    form.locator("textarea[name=answer]").fill("办理地点：各区政务服务中心，【本地办事地点】。")
    form.get_by_role("button", name="保存").click()
    expect(console.locator("#problems")).to_contain_text("【本地办事地点】")
    expect(console.locator("#problems")).to_contain_text("city.yml")
    assert [p for p in problems if "422" not in p] == [], problems
