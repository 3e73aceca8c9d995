"""Knowing the citizen through the real app and engine: 「通知关联市民」 reaches a linked web-chat
citizen, once; the citizen page is shown to staff who may see the citizen, and refused to an
agent of another department exactly as a citizen that does not exist is."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.integration.test_browser import CHROMIUM
from tests.integration.test_console import citizen_with_cases, department_option, run_now, signed_in
from tests.integration.test_console_browser import new_page, sign_in
from tests.integration.test_dispatch_conversation import answer_until_readback, case_number_in
from tests.integration.test_followup import act, case_json, file_case, notice
from tests.integration.test_webchat import ChatClient, open_chat
from tests.support.console import ConsoleClient, create_staff
from tests.support.domain_text import utter
from tests.support.stack import Stack

PLACE = "A7区梧桐路农贸市场"
RESULT = "已疏通梧桐路农贸市场门口的下水道，并清运了污水"
CITIZEN_LINK = re.compile(r'href="/console/citizens/(\d+)"')


@pytest.fixture
async def chat(stack: Stack) -> AsyncIterator[ChatClient]:
    async with open_chat(stack) as client:
        await client.hello()
        yield client


async def resolve(stack: Stack, console: ConsoleClient, number: str) -> None:
    """Staff take the lead case to 办结 with RESULT, dispatching it first if it waits in the queue."""
    if case_json(stack, number)["status"] == "received":
        queue = await asyncio.to_thread(console.get, "/queue")
        await act(console, number, "dispatch", department_id=department_option(queue.text, "A市住房和城乡建设局"))
    await act(console, number, "accept")
    await act(console, number, "start")
    await act(console, number, "resolve", RESULT)


async def test_a_linked_web_chat_citizen_is_told_the_lead_case_s_result_once(
    stack: Stack, chat: ChatClient, sender: str
) -> None:
    # A citizen on the REST channel reports a blocked drain; a web-chat neighbour reports the same
    # and files anyway after being shown the open case (「仍然提交」), which links the two.
    await asyncio.to_thread(
        answer_until_readback,
        stack,
        sender,
        f"{PLACE}门口的下水道堵了，污水流得满地都是，臭得不行",
        PLACE,
        "13712345678",
    )
    lead = case_number_in((await asyncio.to_thread(stack.rest, sender, "/affirm"))[0]["text"])
    linked = await file_case(chat, f"{PLACE}门口下水道堵了，污水流得满地都是，太臭了", PLACE)
    assert case_json(stack, linked)["duplicate_of"] == lead

    supervisor = await asyncio.to_thread(signed_in, stack, create_staff(stack, "supervisor", display_name="关联王"))
    await resolve(stack, supervisor, lead)
    department = case_json(stack, lead)["department"]

    first = await asyncio.to_thread(supervisor.post, f"/cases/{lead}/notify-linked", {})
    assert first.status_code == 200 and "已通知 1 件关联工单的市民" in first.text, first.text[-600:]
    told = await notice(chat)
    assert told["text"] == utter(
        "utter_linked_case_resolved_notice",
        case_number=linked,
        lead_case_number=lead,
        department=department,
        result=RESULT,
    )
    second = await asyncio.to_thread(supervisor.post, f"/cases/{lead}/notify-linked", {})
    assert second.status_code == 200 and "已通知：关联工单" in second.text
    await chat.assert_silent(2.0)
    audit = await asyncio.to_thread(supervisor.get, "/audit?action=case.notify_linked")
    assert audit.text.count(lead) >= 2

    # The linked citizen's page, from the link on their case.
    case_page = await asyncio.to_thread(supervisor.get, f"/cases/{linked}")
    found = CITIZEN_LINK.search(case_page.text)
    assert found, "the case page links to its citizen"
    citizen_page = await asyncio.to_thread(supervisor.get, f"/citizens/{found.group(1)}")
    assert citizen_page.status_code == 200
    assert linked in citizen_page.text and "网页" in citizen_page.text
    assert "default-src 'none'" in citizen_page.headers["Content-Security-Policy"]

    other = "A-housing" if "交通" in (case_json(stack, linked)["department"] or "") else "A-transport"
    agent = await asyncio.to_thread(signed_in, stack, create_staff(stack, "agent", other, "别部门"))
    refused = await asyncio.to_thread(agent.get, f"/citizens/{found.group(1)}")
    missing = await asyncio.to_thread(agent.get, "/citizens/999999999")
    assert refused.status_code == missing.status_code == 404
    assert refused.text == missing.text


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (bin/test installs chromium)")
def test_the_citizen_page_in_a_browser(stack: Stack, browser: Any, artifacts_dir: Path) -> None:
    numbers, _ = run_now(citizen_with_cases(stack, "citizen-page-browser", ["A-housing", "A-transport"]))
    username = create_staff(stack, "supervisor", display_name="档案王")
    problems: list[str] = []
    page = new_page(browser, problems)
    sign_in(page, stack, username)
    page.goto(f"{stack.app_url}/console/cases/{numbers[0]}")
    page.click("#citizen-link")
    page.wait_for_url(re.compile(r"/console/citizens/\d+$"))
    for number in numbers:
        expect(page.locator("#citizen-cases")).to_contain_text(number)
    expect(page.locator("#identities")).to_contain_text("网页")
    assert "citizen-page-browser" not in page.content()  # the channel id is masked
    page.screenshot(path=str(artifacts_dir / "citizen_page.png"), full_page=True)
    assert problems == []
