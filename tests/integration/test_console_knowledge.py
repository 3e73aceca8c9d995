"""The console's knowledge-base pages over HTTP against the running app: reading, roles, edits
with their version history, conflicts, restores, CSRF, escaping and citizens' feedback."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.knowledge.retrieval import IndexedEntry, KnowledgeIndex
from crm_backend.models import KnowledgeEntry, KnowledgeEntryVersion
from crm_backend.services import knowledge
from crm_backend.settings import normalise_database_url
from tests.integration.test_console import MARKUP, signed_in
from tests.support.console import ConsoleClient, create_staff
from tests.support.naming import unique
from tests.support.stack import Stack

T = TypeVar("T")
SEEDED_TITLE = "居住证办理指南"  # an entry of crm_backend/knowledge/data/entries.yml
CONFLICT_MESSAGE = "在您编辑期间"


def with_database(stack: Stack, work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    """Run `work` on the stack's database from synchronous test code."""

    async def run() -> T:
        engine = create_engine(normalise_database_url(str(stack.database_url)))
        try:
            return await work(create_sessionmaker(engine))
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, run()).result()


def stored(stack: Stack, entry_id: int) -> tuple[KnowledgeEntry, list[KnowledgeEntryVersion]]:
    """An entry as the database holds it now, with its versions newest first."""

    async def read(sessions: async_sessionmaker[AsyncSession]) -> tuple[KnowledgeEntry, list[KnowledgeEntryVersion]]:
        async with sessions() as session:
            entry = await knowledge.get_entry(session, entry_id)
            assert entry is not None
            return entry, await knowledge.history(session, entry)

    return with_database(stack, read)


def record_feedback(stack: Stack, slug: str, answers: list[tuple[bool, str]]) -> None:
    async def record(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions.begin() as session:
            for helpful, question in answers:
                assert await knowledge.record_feedback(session, slug, helpful, question=question)

    with_database(stack, record)


@pytest.fixture(scope="module")
def seeded(stack: Stack) -> None:
    """The data file's entries in the stack's database (the app loads them on first start; this is a no-op then)."""

    async def seed(sessions: async_sessionmaker[AsyncSession]) -> None:
        await knowledge.seed_knowledge_once(sessions)
        async with sessions() as session:
            assert await session.scalar(select(KnowledgeEntry.id).where(KnowledgeEntry.title == SEEDED_TITLE))

    with_database(stack, seed)


@pytest.fixture(scope="module")
def accounts(stack: Stack, seeded: None) -> dict[str, str]:
    return {
        "agent": create_staff(stack, "agent", "A-housing", "坐席孙"),
        "supervisor": create_staff(stack, "supervisor", None, "值班周"),
        "admin": create_staff(stack, "admin", None, "知识管理员甲"),
        "other_admin": create_staff(stack, "admin", None, "知识管理员乙"),
    }


def unique_slug(prefix: str = "kb-test") -> str:
    return unique(prefix)


def entry_form(
    slug: str,
    *,
    title: str = "测试事项办理指南",
    questions: tuple[str, ...] = ("测试事项怎么办理？", "办测试事项要带什么"),
    answer: str = "申请材料：身份证。\n办理地点：【本地办事地址】。",
    follow_ups: dict[str, str] | None = None,
    last_reviewed: str = "2026-11-20",
    active: bool = True,
    base_version: int | None = None,
) -> dict[str, str]:
    """The edit form as a browser posts it (CRLF line breaks in textareas, unchecked boxes left out)."""
    data = {
        "slug": slug,
        "title": title,
        "category": "民政",
        "department": "A市民政局",
        "questions": "\r\n".join(questions),
        "answer": answer.replace("\n", "\r\n"),
        "last_reviewed": last_reviewed,
        **{f"follow_up:{aspect}": text for aspect, text in (follow_ups or {"材料": "带身份证。"}).items()},
    }
    if active:
        data["active"] = "1"
    if base_version is not None:
        data["base_version"] = str(base_version)
    return data


def create_entry(admin: ConsoleClient, slug: str, **fields: Any) -> int:
    """A new entry made through the console's form; its id."""
    response = admin.post("/knowledge/new", entry_form(slug, **fields))
    assert response.status_code == 200, response.text[:500]
    found = re.search(r"/console/knowledge/(\d+)$", response.url)
    assert found, response.url
    return int(found.group(1))


def test_every_role_reads_the_list_but_only_admins_see_the_edit_controls(
    stack: Stack, accounts: dict[str, str]
) -> None:
    for role in ("agent", "supervisor"):
        page = signed_in(stack, accounts[role]).get("/knowledge")
        assert page.status_code == 200 and SEEDED_TITLE in page.text, role
        assert 'href="/console/knowledge"' in page.text  # the nav link
        assert "新建条目" not in page.text and "/edit" not in page.text, role
    admin_page = signed_in(stack, accounts["admin"]).get("/knowledge")
    assert "新建条目" in admin_page.text and "/edit" in admin_page.text
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", admin_page.text)  # no inline event handlers
    assert "<script>" not in admin_page.text  # only the external console.js


def test_the_pages_need_a_session(stack: Stack, accounts: dict[str, str]) -> None:
    anonymous = ConsoleClient(stack)
    for path in ("/knowledge", "/knowledge/1", "/knowledge/1/history", "/knowledge/1/history/1", "/knowledge/new"):
        assert anonymous.get(path).url.endswith("/console/login"), path
    refused = anonymous.http.post(f"{anonymous.base}/knowledge/new", data=entry_form(unique_slug()), timeout=10)
    assert refused.status_code == 401


def test_search_finds_entries_by_title_or_id_and_unknown_ones_are_404(stack: Stack, accounts: dict[str, str]) -> None:
    agent = signed_in(stack, accounts["agent"])
    by_title = agent.get("/knowledge?q=居住证")
    assert SEEDED_TITLE in by_title.text and "婚姻登记" not in by_title.text
    by_slug = agent.get("/knowledge?q=residence-permit-apply")
    assert SEEDED_TITLE in by_slug.text and "居住证签注办理指南" not in by_slug.text
    assert "没有符合条件的条目" in agent.get(f"/knowledge?q={unique_slug('none')}").text
    for missing in ("/knowledge/999999999", "/knowledge/99999999999999999999", "/knowledge/1/history/999999"):
        assert agent.get(missing).status_code == 404, missing


def test_agents_and_supervisors_cannot_create_edit_or_restore(stack: Stack, accounts: dict[str, str]) -> None:
    slug = unique_slug()
    entry_id = create_entry(signed_in(stack, accounts["admin"]), slug)
    for role in ("agent", "supervisor"):
        client = signed_in(stack, accounts[role])
        assert client.get(f"/knowledge/{entry_id}").status_code == 200, role
        assert client.get(f"/knowledge/{entry_id}/history").status_code == 200, role
        assert client.get(f"/knowledge/{entry_id}/edit").status_code == 404, role
        assert client.get("/knowledge/new").status_code == 404, role
        edit = client.post(f"/knowledge/{entry_id}/edit", entry_form(slug, title="坐席改的标题", base_version=1))
        assert edit.status_code == 404, role
        assert client.post("/knowledge/new", entry_form(unique_slug())).status_code == 404, role
        restore = client.post(f"/knowledge/{entry_id}/history/1/restore", {"base_version": "1"})
        assert restore.status_code == 404, role
        assert "恢复此版本" not in client.get(f"/knowledge/{entry_id}/history").text, role
    entry, versions = stored(stack, entry_id)
    assert entry.title == "测试事项办理指南" and entry.version == 1 and len(versions) == 1


def test_an_admin_edit_saves_version_2_with_the_changed_fields_and_the_author(
    stack: Stack, accounts: dict[str, str]
) -> None:
    admin = signed_in(stack, accounts["admin"])
    slug = unique_slug()
    entry_id = create_entry(admin, slug)
    form_page = admin.get(f"/knowledge/{entry_id}/edit")
    assert form_page.status_code == 200 and 'name="base_version" value="1"' in form_page.text

    # Unchanged text comes back with CRLF line breaks: that is not a change.
    same = admin.post(f"/knowledge/{entry_id}/edit", entry_form(slug, base_version=1))
    assert "内容没有改动" in same.text and stored(stack, entry_id)[0].version == 1

    saved = admin.post(
        f"/knowledge/{entry_id}/edit",
        entry_form(
            slug,
            questions=("测试事项怎么办理？", "测试事项在哪里办"),
            answer="申请材料：身份证、户口簿。\n办理地点：【本地办事地址】。",
            base_version=1,
        ),
    )
    assert saved.status_code == 200 and saved.url.endswith(f"/console/knowledge/{entry_id}")
    assert "已保存为第 2 版" in saved.text and "问法、答案" in saved.text
    assert "身份证、户口簿" in saved.text

    entry, versions = stored(stack, entry_id)
    assert entry.version == 2 and entry.answer == "申请材料：身份证、户口簿。\n办理地点：【本地办事地址】。"
    assert entry.questions == ["测试事项怎么办理？", "测试事项在哪里办"]
    assert versions[0].version == 2 and versions[0].changed_fields == ["questions", "answer"]
    assert versions[0].changed_by == "知识管理员甲"

    history = admin.get(f"/knowledge/{entry_id}/history")
    row = re.search(r'<tr data-version="2">.*?</tr>', history.text, re.S)
    assert row, history.text
    assert "知识管理员甲" in row.group(0) and "问法" in row.group(0) and "答案" in row.group(0)
    assert "恢复此版本" in history.text
    first = admin.get(f"/knowledge/{entry_id}/history/1")
    assert first.status_code == 200 and "申请材料：身份证。" in first.text and "户口簿" not in first.text
    audit = admin.get("/audit?action=knowledge.update").text
    assert f"knowledge:{slug}" in audit and "第 2 版：问法、答案" in audit


def test_a_second_edit_from_the_same_version_is_refused_and_saves_nothing(
    stack: Stack, accounts: dict[str, str]
) -> None:
    first_admin = signed_in(stack, accounts["admin"])
    second_admin = signed_in(stack, accounts["other_admin"])
    slug = unique_slug()
    entry_id = create_entry(first_admin, slug)
    # Both open the form on version 1.
    for client in (first_admin, second_admin):
        assert 'name="base_version" value="1"' in client.get(f"/knowledge/{entry_id}/edit").text

    first = first_admin.post(f"/knowledge/{entry_id}/edit", entry_form(slug, answer="甲的答案", base_version=1))
    assert "已保存为第 2 版" in first.text
    second = second_admin.post(
        f"/knowledge/{entry_id}/edit", entry_form(slug, title="乙改的标题", answer="乙的答案", base_version=1)
    )
    assert second.status_code == 409
    assert CONFLICT_MESSAGE in second.text and "知识管理员甲" in second.text and "第 2 版" in second.text
    assert "乙的答案" in second.text  # the editor's text is still in the form
    assert 'name="base_version" value="2"' in second.text

    entry, versions = stored(stack, entry_id)
    assert entry.version == 2 and entry.answer == "甲的答案" and entry.title == "测试事项办理指南"
    assert [v.changed_by for v in versions] == ["知识管理员甲", "知识管理员甲"]


def test_invalid_input_shows_the_problems_and_saves_nothing(stack: Stack, accounts: dict[str, str]) -> None:
    admin = signed_in(stack, accounts["admin"])
    slug = unique_slug()
    entry_id = create_entry(admin, slug)
    bad = admin.post(f"/knowledge/{entry_id}/edit", entry_form(slug, title="  ", questions=(" ", ""), base_version=1))
    assert bad.status_code == 422
    assert "标题不能为空" in bad.text and "问法需要1到50条" in bad.text
    assert stored(stack, entry_id)[0].version == 1

    bad_date = admin.post(f"/knowledge/{entry_id}/edit", entry_form(slug, last_reviewed="明天", base_version=1))
    assert bad_date.status_code == 422 and "审核日期无效" in bad_date.text

    new_slug = unique_slug("BAD_ID")
    refused = admin.post("/knowledge/new", entry_form(new_slug, title="", answer=""))
    assert refused.status_code == 422
    for problem in ("编号只能由小写字母、数字和连字符组成", "标题不能为空", "答案不能为空"):
        assert problem in refused.text
    taken = admin.post("/knowledge/new", entry_form(slug))
    assert taken.status_code == 409 and f"编号 {slug} 已被其他条目使用" in taken.text
    assert "没有符合条件的条目" in admin.get(f"/knowledge?q={new_slug}").text


def test_restoring_a_version_saves_its_content_as_a_new_version(stack: Stack, accounts: dict[str, str]) -> None:
    admin = signed_in(stack, accounts["admin"])
    slug = unique_slug()
    entry_id = create_entry(admin, slug, follow_ups={"材料": "带身份证。", "费用": "不收费。"})
    admin.post(
        f"/knowledge/{entry_id}/edit",
        entry_form(slug, title="改过的标题", answer="改过的答案", follow_ups={"时限": "当场办结。"}, base_version=1),
    )
    assert stored(stack, entry_id)[0].version == 2

    restored = admin.post(f"/knowledge/{entry_id}/history/1/restore", {"base_version": "2"})
    assert restored.status_code == 200 and restored.url.endswith(f"/console/knowledge/{entry_id}/history")
    assert "已恢复第 1 版的内容，保存为第 3 版" in restored.text

    entry, versions = stored(stack, entry_id)
    assert entry.version == 3 and entry.title == "测试事项办理指南"
    assert entry.follow_ups == {"材料": "带身份证。", "费用": "不收费。"}
    assert versions[0].snapshot == versions[2].snapshot
    assert set(versions[0].changed_fields) == {"title", "answer", "follow_ups"}
    assert versions[0].changed_by == "知识管理员甲"

    stale = admin.post(f"/knowledge/{entry_id}/history/2/restore", {"base_version": "2"})
    assert stale.status_code == 409 and "已被他人修改" in stale.text
    assert stored(stack, entry_id)[0].version == 3
    assert admin.post(f"/knowledge/{entry_id}/history/99/restore", {"base_version": "3"}).status_code == 404


def test_a_post_without_the_csrf_token_is_refused(stack: Stack, accounts: dict[str, str]) -> None:
    admin = signed_in(stack, accounts["admin"])
    slug = unique_slug()
    entry_id = create_entry(admin, slug)
    changed = entry_form(slug, title="伪造的标题", base_version=1)
    missing = admin.post(f"/knowledge/{entry_id}/edit", changed, csrf=False)
    assert missing.status_code == 403 and missing.json()["error"] == "csrf"
    forged = admin.post(f"/knowledge/{entry_id}/edit", {**changed, "csrf": "forged"}, csrf=False)
    assert forged.status_code == 403
    assert admin.post("/knowledge/new", entry_form(unique_slug()), csrf=False).status_code == 403
    assert admin.post(f"/knowledge/{entry_id}/history/1/restore", {"base_version": "1"}, csrf=False).status_code == 403
    entry, versions = stored(stack, entry_id)
    assert entry.title == "测试事项办理指南" and len(versions) == 1


def test_markup_in_an_entry_is_shown_escaped(stack: Stack, accounts: dict[str, str]) -> None:
    admin = signed_in(stack, accounts["admin"])
    slug = unique_slug()
    entry_id = create_entry(admin, slug, title=f"标题{MARKUP}"[:100], answer=f"答案{MARKUP}", questions=(MARKUP,))
    agent = signed_in(stack, accounts["agent"])
    for path in (f"/knowledge?q={slug}", f"/knowledge/{entry_id}", f"/knowledge/{entry_id}/history/1"):
        page = agent.get(path)
        assert page.status_code == 200, path
        assert MARKUP not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path
    edit = admin.get(f"/knowledge/{entry_id}/edit")
    assert MARKUP not in edit.text and "&lt;img src=x" in edit.text


def test_not_helpful_answers_are_counted_per_entry_and_listed_masked(stack: Stack, accounts: dict[str, str]) -> None:
    admin = signed_in(stack, accounts["admin"])
    prefix = unique_slug("kb-feedback")
    # By title "1" comes before "2", but 2 has more not-helpful answers.
    mild = create_entry(admin, f"{prefix}-a", title=f"{prefix} 第1项")
    worst = create_entry(admin, f"{prefix}-b", title=f"{prefix} 第2项")
    record_feedback(stack, f"{prefix}-a", [(True, "好的"), (False, "没看懂")])
    record_feedback(
        stack,
        f"{prefix}-b",
        [(False, "我的电话13812345678，身份证110101199003071234怎么办"), (False, "不对"), (False, "没用"), (True, "")],
    )
    agent = signed_in(stack, accounts["agent"])

    def order(path: str) -> list[str]:
        return re.findall(rf'<tr data-entry="({prefix}-[ab])">', agent.get(path).text)

    assert order(f"/knowledge?q={prefix}") == [f"{prefix}-a", f"{prefix}-b"]
    assert order(f"/knowledge?q={prefix}&sort=worst") == [f"{prefix}-b", f"{prefix}-a"]
    listing = agent.get(f"/knowledge?q={prefix}&sort=worst").text
    row = re.search(rf'<tr data-entry="{prefix}-b">.*?</tr>', listing, re.S)
    assert row
    assert re.search(r'class="helpful">1<', row.group(0)) and re.search(r'class="not-helpful">.*>3<', row.group(0))
    assert "按没帮助次数排序" in listing

    page = agent.get(f"/knowledge/{worst}").text
    assert re.search(r'id="helpful-count">1<', page) and re.search(r'id="not-helpful-count">3<', page)
    assert "138****5678" in page and "13812345678" not in page
    assert "110****1234" in page and "110101199003071234" not in page
    assert "不对" in page and "没用" in page
    assert "好的" not in agent.get(f"/knowledge/{mild}").text  # helpful answers are counted, not listed


def test_questions_no_entry_answered_are_listed_masked_with_the_nearest_entry(
    stack: Stack, accounts: dict[str, str]
) -> None:
    question = f"请问{unique_slug('无人机')}报备要找谁，我电话13912345678"

    async def miss(sessions: async_sessionmaker[AsyncSession]) -> None:
        ranking = KnowledgeIndex([IndexedEntry("residence-permit-apply", SEEDED_TITLE, ())])
        async with sessions.begin() as session:
            await knowledge.record_miss(session, question, ranking.rank("居住证"))

    with_database(stack, miss)
    agent = signed_in(stack, accounts["agent"])
    assert 'href="/console/knowledge/misses"' in agent.get("/knowledge").text
    page = agent.get("/knowledge/misses").text
    row = re.search(r"<tr>\s*<td>[^<]*</td>\s*<td class=\"question\">([^<]*)</td>\s*<td>(.*?)</td>", page, re.S)
    assert row, page
    assert row.group(1) == question.replace("13912345678", "139****5678")
    assert SEEDED_TITLE in row.group(2)
