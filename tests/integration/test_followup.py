"""Progress notices and 回访 over the web chat, with staff working the case in the console.

A citizen files a case in the real dialogue; a supervisor moves it through its life cycle
in the console; each move reaches the citizen's open chat; at 已办结 the engine asks the
satisfaction question (an external event) and the citizen's answer — a button, their own
words, or a single star — closes or reopens the case.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_console import department_option, signed_in
from tests.integration.test_webchat import CASE_NUMBER, ChatClient, open_chat, texts
from tests.support.console import ConsoleClient, create_staff
from tests.support.domain_text import utter
from tests.support.naming import unique
from tests.support.stack import Stack

PHONE = "13698765432"


@pytest.fixture(scope="module")
def supervisor(stack: Stack) -> str:
    return create_staff(stack, "supervisor", display_name="回访王")


async def file_case(chat: ChatClient, problem: str, location: str) -> str:
    """Report a problem through the dialogue, answering whatever the form asks; the case number."""
    replies = await chat.say(problem)
    for _ in range(8):
        last = replies[-1]
        payloads = [button["payload"] for button in last.get("buttons", [])]
        if "/affirm" in payloads:
            replies = await chat.click(next(b for b in last["buttons"] if b["payload"] == "/affirm"))
            if match := CASE_NUMBER.search(replies[-1]["text"]):
                return match.group(0)
            continue  # 仍然提交 beside an open case: the read-back comes again
        if last["text"] == utter("utter_ask_description"):
            replies = await chat.say(problem)
        elif last["text"] == utter("utter_ask_location"):
            replies = await chat.say(location)
        elif last["text"] == utter("utter_ask_contact_phone"):
            replies = await chat.say(PHONE)
        elif last.get("buttons"):  # a district or a category to choose: the first will do
            replies = await chat.click(last["buttons"][0])
        else:
            raise AssertionError(f"unexpected question: {last}")
    raise AssertionError("the report was never read back")


async def act(console: ConsoleClient, number: str, action: str, note: str = "", **extra: str) -> None:
    """A life-cycle step in the console, as the browser posts it."""
    form = {"action": action, "note": note, **extra}
    response = await asyncio.to_thread(console.post, f"/cases/{number}/action", form)
    assert response.status_code == 200 and "工单已变为" in response.text, response.text[-800:]


async def dispatched(stack: Stack, chat: ChatClient, console: ConsoleClient, number: str) -> None:
    """A case the classifier was unsure of waits in the manual queue: the supervisor dispatches it."""
    if case_json(stack, number)["status"] != "received":
        return
    queue = await asyncio.to_thread(console.get, "/queue")
    await act(console, number, "dispatch", department_id=department_option(queue.text, "A市住房和城乡建设局"))
    assert "已转交负责部门" in (await notice(chat))["text"]


async def notice(chat: ChatClient) -> dict[str, Any]:
    frame = await chat.expect("reply")
    [message] = frame["messages"]
    assert message["sender"]["kind"] == "system", message
    return message


def case_json(stack: Stack, number: str) -> dict[str, Any]:
    response = stack.api("GET", f"/cases/{number}")
    assert response.status_code == 200, response.text
    return response.json()


RESULT = "已安排人员处理完毕，现场已恢复正常"


async def resolve_and_get_question(
    stack: Stack, chat: ChatClient, console: ConsoleClient, number: str
) -> dict[str, Any]:
    """Staff take the case from 已派单 to 已办结; the notices arrive, then the 回访 question."""
    await dispatched(stack, chat, console, number)
    department = case_json(stack, number)["department"]
    for action, label in (("accept", "负责部门已接单"), ("start", "负责部门正在办理")):
        await act(console, number, action)
        assert (await notice(chat))["text"] == utter(
            "utter_case_notice", case_number=number, status=label, detail=f"（{department}）"
        )
    await act(console, number, "resolve", RESULT)
    # The department's result first (what a 12345 centre owes the citizen), then the question alone.
    assert (await notice(chat))["text"] == utter(
        "utter_case_resolved_notice", case_number=number, department=department, result=RESULT
    )
    # Then the question alone: nothing said before it that the citizen did not ask for.
    [question] = (await chat.expect("reply"))["messages"]
    assert question["text"] == utter("utter_ask_rating", followup_case=number)
    return question


async def test_each_move_is_told_and_a_button_rating_closes_the_case(
    stack: Stack, chat: ChatClient, supervisor: str
) -> None:
    number = await file_case(chat, "幸福路公交站的候车亭顶棚塌了一块，很危险", "A6区幸福路公交站")
    console = await asyncio.to_thread(signed_in, stack, supervisor)
    question = await resolve_and_get_question(stack, chat, console, number)
    four = next(button for button in question["buttons"] if button["title"].startswith("4分"))
    assert texts(await chat.click(four)) == [utter("utter_rating_thanks", rating="4")]
    assert case_json(stack, number)["status"] == "reviewed"
    # Asked afterwards, the case tells its result, not the citizen's own rating.
    [progress] = texts(await chat.say(f"查询工单 {number}"))
    assert f"办理结果：{RESULT}" in progress and "评价" not in progress and "4 分" not in progress


async def test_a_free_text_answer_is_understood(stack: Stack, chat: ChatClient, supervisor: str) -> None:
    number = await file_case(chat, "学校门口的人行道地砖松动好几块，孩子容易绊倒", "A8区实验小学门口")
    console = await asyncio.to_thread(signed_in, stack, supervisor)
    replied = await asyncio.to_thread(console.post, f"/cases/{number}/reply", {"text": "已联系施工队，明天上午修复"})
    assert "已回复市民" in replied.text
    [reply] = (await chat.expect("reply"))["messages"]
    assert reply["text"] == f"关于工单 {number}：已联系施工队，明天上午修复"
    assert reply["sender"] == {"kind": "staff", "name": "回访王"}
    await resolve_and_get_question(stack, chat, console, number)
    assert texts(await chat.say("还行吧，挺快的")) == [utter("utter_rating_thanks", rating="4")]
    case = case_json(stack, number)
    assert case["status"] == "reviewed"
    assert "市民评价 4 分：还行吧，挺快的" in case["events"][-1]["note"]


async def test_one_star_reopens_the_case_for_supervisor_review(stack: Stack, chat: ChatClient, supervisor: str) -> None:
    number = await file_case(chat, "小区垃圾桶好几天没人清运，臭味很大", "A5区花园小区3号楼")
    console = await asyncio.to_thread(signed_in, stack, supervisor)
    await resolve_and_get_question(stack, chat, console, number)
    assert texts(await chat.say("1分，根本没人来清运")) == [
        utter("utter_rating_reopened", rating="1", case_number=number)
    ]
    case = case_json(stack, number)
    assert case["status"] == "in_progress"
    supervised = await asyncio.to_thread(console.get, "/cases?supervised=1")
    assert number in supervised.text


async def test_a_citizen_can_turn_notices_off(stack: Stack, chat: ChatClient, supervisor: str) -> None:
    number = await file_case(chat, "路口的交通信号灯一直闪黄灯，车辆乱成一团", "A2区人民路与解放路路口")
    console = await asyncio.to_thread(signed_in, stack, supervisor)
    await dispatched(stack, chat, console, number)
    assert texts(await chat.say("不要再通知我")) == [utter("utter_notices_off")]
    await act(console, number, "accept")
    await chat.assert_silent(1.5)
    assert texts(await chat.say("恢复通知")) == [utter("utter_notices_on")]
    await act(console, number, "start")
    assert "负责部门正在办理" in (await notice(chat))["text"]


async def test_linking_a_second_channel_lists_the_first_channels_cases(stack: Stack, chat: ChatClient) -> None:
    number = await file_case(chat, "公园里的健身器材断了一根，有安全隐患", "A4区滨江公园")
    [issued] = await chat.say("绑定账号")
    code = re.search(r"\d{6}", issued["text"])
    assert code and issued["text"] == utter("utter_link_code", code=code.group(0))

    other = unique("partner")  # a second channel (the REST channel of an integrator)
    [unknown] = stack.rest(other, "我的工单")
    assert unknown["text"] == utter("utter_my_cases_none")
    [wrong] = stack.rest(other, "绑定 000000" if code.group(0) != "000000" else "绑定 111111")
    assert wrong["text"] == utter("utter_link_invalid")
    [linked] = stack.rest(other, f"绑定 {code.group(0)}")
    assert linked["text"] == utter("utter_link_done")
    [again] = stack.rest(unique("partner"), f"绑定 {code.group(0)}")
    assert again["text"] == utter("utter_link_invalid")  # single use
    [listed] = stack.rest(other, "我的工单")
    assert number in listed["text"] and "已转交负责部门" in listed["text"]


# --- the 回访 loop: a question that had to wait, one reminder, then 未回访 ----------------------------


@pytest.fixture(scope="module")
def loop_app(stack: Stack) -> Iterator[Stack]:
    """An app whose 回访 loop runs every second, with a reminder after ~2 s and 未回访 ~2 s later."""
    app = stack.sibling("followup-loop-app")
    app.start_app(
        extra_env={
            "FOLLOWUP_CHECK_SECONDS": "1",
            "FOLLOWUP_REMIND_HOURS": str(2 / 3600),
            "FOLLOWUP_ARCHIVE_HOURS": str(2 / 3600),
        }
    )
    try:
        yield app
    finally:
        app.stop_app()


async def test_a_question_waits_for_a_form_then_is_reminded_once_and_the_case_archived_unanswered(
    stack: Stack, loop_app: Stack, supervisor: str
) -> None:
    async with open_chat(loop_app) as chat:
        await chat.hello()
        number = await file_case(chat, "菜市场门口的下水道堵了，污水漫到路上", "A1区东风菜市场门口")
        console = await asyncio.to_thread(signed_in, loop_app, supervisor)
        await dispatched(stack, chat, console, number)
        for action in ("accept", "start"):
            await act(console, number, action)
            await notice(chat)
        # The citizen is in the middle of another report when the case is resolved.
        assert texts(await chat.say("另外我还要反映一个问题，楼道里的灯坏了")) == [utter("utter_ask_location")]
        await act(console, number, "resolve", "已疏通")
        assert "已办结" in (await notice(chat))["text"]
        await chat.assert_silent(2.5)  # not put in the middle of the form
        assert texts(await chat.say("取消")) != []
        question = (await chat.expect("reply", timeout=15))["messages"][-1]
        assert question["text"] == utter("utter_ask_rating", followup_case=number)
        reminder = await chat.expect("reply", timeout=15)
        assert texts(reminder["messages"])[0] == utter("utter_followup_reminder")
        for _ in range(40):
            if case_json(stack, number)["status"] == "archived":
                break
            await asyncio.sleep(0.5)
        case = case_json(stack, number)
        assert case["status"] == "archived" and case["events"][-1]["note"].startswith("未回访")
        await chat.assert_silent(2.5)  # one reminder only


async def test_a_notice_sent_while_the_page_was_closed_is_there_on_the_next_visit(
    stack: Stack, supervisor: str
) -> None:
    async with open_chat(stack) as chat:
        await chat.hello()
        number = await file_case(chat, "广场的音乐喷泉坏了，水一直往外冒", "A3区人民广场")
        session = chat.session
        console = await asyncio.to_thread(signed_in, stack, supervisor)
        await dispatched(stack, chat, console, number)
    await act(console, number, "accept")  # nobody is connected now
    await asyncio.sleep(1.0)
    async with open_chat(stack) as chat:
        welcome = await chat.hello(session)
        told = [m["text"] for m in welcome["history"] if m["text"].startswith(f"您的工单 {number}")]
        assert told and "负责部门已接单" in told[-1]


async def test_two_quick_changes_are_told_as_they_happened(stack: Stack, chat: ChatClient, supervisor: str) -> None:
    number = await file_case(chat, "天桥上的照明灯全都不亮了，晚上过天桥很吓人", "A6区中山路天桥")
    console = await asyncio.to_thread(signed_in, stack, supervisor)
    await dispatched(stack, chat, console, number)
    await act(console, number, "accept")
    await act(console, number, "start")  # before the first notice is necessarily out
    told = [(await notice(chat))["text"], (await notice(chat))["text"]]
    assert ["负责部门已接单" in told[0], "负责部门正在办理" in told[1]] == [True, True], told
