"""Guessing a case's phone digits from many web chat sessions, and what a progress reply shows,
through the real engine and app; the hourly ceiling of failed proofs in the real app's console.

Opening a web chat session costs one hello frame, so a guesser can use a fresh session per
guess: the case number itself has to count the failures, and its citizen has to hear of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_console import signed_in
from tests.integration.test_webchat import PHONE, ChatClient, file_report, open_chat, texts
from tests.support.console import create_staff
from tests.support.domain_text import utter
from tests.support.moves import send_to_department_via_api
from tests.support.stack import Stack, stop_process_group

SECURITY_BANNER = 'id="security-alert"'
# The documented figures (docs: operators' guide), not imported, so the tests also run on the code before them.
FAILURES_TO_LOCK = 5
PROOF_CEILING_ACTION = "security.proof_ceiling"


@pytest.fixture
async def owner(stack: Stack) -> AsyncIterator[ChatClient]:
    """The citizen who files the case, with their chat left open."""
    async with open_chat(stack) as client:
        await client.hello()
        yield client


async def ask_progress(stack: Stack, number: str, digits: str) -> list[str]:
    """A fresh web chat session asks for the case's progress and answers with these digits."""
    async with open_chat(stack) as chat:
        await chat.hello()
        assert texts(await chat.say(f"查询工单进度 {number}")) == [utter("utter_ask_phone_last4")]
        return texts(await chat.say(digits))


async def system_notice(chat: ChatClient) -> str:
    frame = await chat.expect("reply")
    assert frame["in_reply_to"] is None, frame
    [message] = frame["messages"]
    assert message["sender"]["kind"] == "system", message
    return str(message["text"])


async def link_by_case(stack: Stack, number: str, digits: str) -> list[str]:
    """A fresh web chat session tries to join the case's citizen with these digits."""
    async with open_chat(stack) as chat:
        await chat.hello()
        return texts(await chat.say(f"绑定工单 {number} 手机尾号 {digits}"))


async def test_guessing_from_fresh_sessions_locks_the_case_and_tells_its_citizen(
    stack: Stack, owner: ChatClient
) -> None:
    number = await file_report(owner, "人民公园的长椅坏了好几张，老人没地方坐", "A6区人民公园")
    # Linking by case (the takeover) and progress lookups count together.
    assert await link_by_case(stack, number, "0000") == [utter("utter_link_invalid")]
    for _ in range(FAILURES_TO_LOCK - 1):
        assert await ask_progress(stack, number, "0000") == [utter("utter_case_lookup_failed")]

    assert await system_notice(owner) == utter("utter_case_proof_alert", case_number=number)
    # Another session with the right digits is refused now, for progress and for linking.
    assert await ask_progress(stack, number, PHONE[-4:]) == [utter("utter_case_proof_locked")]
    assert await link_by_case(stack, number, PHONE[-4:]) == [utter("utter_case_proof_locked")]
    # The citizen who filed it still sees it, without digits.
    answer = texts(await owner.say(f"查询工单进度 {number}"))
    assert len(answer) == 1 and answer[0].startswith(f"工单 {number} 当前状态："), answer
    await owner.assert_silent()  # one alert, however many attempts


async def test_progress_shows_the_status_change_but_never_an_internal_note(stack: Stack, owner: ChatClient) -> None:
    number = await file_report(owner, "长江路的人行道护栏被车撞倒了一段", "A4区长江路")
    moved = send_to_department_via_api(stack, number, "A3-commerce", "已转区商务局")
    assert moved.status_code == 200, moved.text
    assert "已转交负责部门" in await system_notice(owner)
    supervisor = await asyncio.to_thread(signed_in, stack, create_staff(stack, "supervisor", display_name="值班长"))
    secret = "内部备注：投诉人是区长亲戚，优先处理"
    noted = await asyncio.to_thread(supervisor.post, f"/cases/{number}/note", {"note": secret})
    assert noted.status_code == 200 and "已添加内部备注" in noted.text, noted.text[-500:]
    remark = "督办：请三日内反馈，处理不力将通报"
    supervised = await asyncio.to_thread(supervisor.post, f"/cases/{number}/supervise", {"on": "1", "note": remark})
    assert supervised.status_code == 200, supervised.text[-500:]

    [answer] = texts(await owner.say(f"查询工单进度 {number}"))
    assert answer.startswith(f"工单 {number} 当前状态：已转交负责部门。"), answer
    assert "A3区商务局" in answer and "已转区商务局" not in answer  # the dispatcher's note is theirs
    assert secret not in answer and remark not in answer


# --- the hourly ceiling, on an app of its own (no engine needed: the actions are called directly) ---


@pytest.fixture
def ceiling_app(tmp_path: Path) -> Iterator[Stack]:
    """An app alone on its own database, whose ceiling is two failed proofs an hour."""
    app = Stack(workdir=tmp_path / "ceiling")
    try:
        app.start_app({"PROOF_FAILURES_ALERT_PER_HOUR": "2"})
        yield app
    finally:
        stop_process_group(app.app_proc)


def call_action(app: Stack, name: str, sender: str, slots: dict[str, Any]) -> requests.Response:
    """What the engine posts to the action endpoint to run an action."""
    tracker = {"sender_id": sender, "slots": slots, "latest_message": {}, "events": [], "active_loop": {}}
    return requests.post(
        f"{app.app_url}/webhook",
        json={"next_action": name, "sender_id": sender, "tracker": tracker, "domain": {}},
        headers={"Authorization": f"Bearer {app.secrets['ACTION_TOKEN']}"},
        timeout=30,
    )


def test_too_many_failed_proofs_in_an_hour_alert_supervisors_once(ceiling_app: Stack) -> None:
    supervisor = signed_in(ceiling_app, create_staff(ceiling_app, "supervisor"))
    agent = signed_in(ceiling_app, create_staff(ceiling_app, "agent", "A-housing"))
    assert SECURITY_BANNER not in supervisor.get("/cases").text
    for i in range(4):
        slots = {"case_number": f"20200101-{i:04d}", "phone_last4": "0000"}
        done = call_action(ceiling_app, "action_check_progress", f"web:spray-{i}", slots)
        assert done.status_code == 200, done.text
        assert done.json()["responses"][0]["response"] == "utter_case_lookup_failed"

    for page in ("/inbox", "/cases", "/audit"):
        assert SECURITY_BANNER in supervisor.get(page).text, page
    assert SECURITY_BANNER not in agent.get("/cases").text
    audit = supervisor.get(f"/audit?action={PROOF_CEILING_ACTION}").text
    assert audit.count(f'data-action="{PROOF_CEILING_ACTION}"') == 1, audit[-2000:]
