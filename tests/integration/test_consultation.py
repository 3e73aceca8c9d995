"""No dead end for a question, through the real engine and app: a question the knowledge base
cannot answer becomes a 咨询 case, staff answer it through the case, and the answer reaches the
citizen's chat; so does the 办结 result.
"""

from __future__ import annotations

import asyncio

from actions.dispatch import readback_description
from tests.integration.test_console import signed_in
from tests.integration.test_followup import RESULT, act, case_json, dispatched, notice, supervisor
from tests.integration.test_webchat import CASE_NUMBER, ChatClient, texts
from tests.support.domain_text import day_text, utter, utter_buttons
from tests.support.stack import Stack

__all__ = ["supervisor"]  # a fixture, imported for the test below

# Not in the knowledge base, read by the engine as ask_faq; names no place.
QUESTION = "请问在自家阳台养蜜蜂需要去哪里备案"
PHONE = "13698765432"
ANSWER = "家庭养蜂无需备案，如需出售蜂蜜请到区市场监管部门办理食品经营登记"
# A letter asking what no guide answers (the letter gate reads it as a question).
LETTER = (
    "关于家庭养蜂是否需要备案的咨询\n尊敬的领导：您好！我去年开始在自家院子里养了十几箱蜜蜂，"
    "蜂蜜主要是自己吃，偶尔送给亲戚朋友。想请问在自家院子里养蜂是否需要到有关部门备案？谢谢！"
)
LETTER_PHONE = "13698765433"


def test_the_question_is_a_knowledge_question_the_base_cannot_answer(stack: Stack) -> None:
    assert stack.parse(QUESTION)["intent"]["name"] == "ask_faq"


async def test_an_unanswered_question_becomes_a_consultation_answered_on_the_chat(
    stack: Stack, chat: ChatClient, supervisor: str
) -> None:
    [offer] = await chat.say(QUESTION)
    assert offer["text"] == utter("utter_kb_offer_consultation")
    assert offer["buttons"] == utter_buttons("utter_kb_offer_consultation")
    register = next(button for button in offer["buttons"] if button["title"] == "登记咨询")
    # The question is the description and the place is optional: only the phone is asked.
    assert texts(await chat.click(register)) == [utter("utter_ask_contact_phone")]
    summary, preview = await chat.say(PHONE)
    assert summary["text"] == utter("utter_consultation_summary", description=QUESTION, contact_phone=PHONE)
    assert preview["text"].startswith("将为您登记「咨询」工单") and "更正地点" not in str(preview["buttons"])
    confirm = next(button for button in preview["buttons"] if button["payload"] == "/affirm")
    [filed] = await chat.click(confirm)
    match = CASE_NUMBER.search(filed["text"])
    assert match, filed
    number = match.group(0)
    case = case_json(stack, number)
    assert (case["case_type"], case["description"], case["location"]) == ("咨询", QUESTION, "")
    if case["status"] == "received":  # the classifier was unsure: the dispatchers route it
        assert filed["text"] == utter("utter_consultation_created_queued", case_number=number)
    else:
        assert filed["text"] == utter(
            "utter_consultation_created",
            case_number=number,
            department=case["department"],
            due=day_text(case["due_at"]),
        )

    # Staff answer through the case; the answer reaches the citizen's chat.
    console = await asyncio.to_thread(signed_in, stack, supervisor)
    await dispatched(stack, chat, console, number)
    replied = await asyncio.to_thread(console.post, f"/cases/{number}/reply", {"text": ANSWER})
    assert "已回复市民" in replied.text
    [reply] = (await chat.expect("reply"))["messages"]
    assert reply["text"] == f"关于工单 {number}：{ANSWER}"
    # The 咨询 case is listed as one, and its 办结 carries the result to the citizen like any case.
    listed = await asyncio.to_thread(console.get, "/cases?case_type=咨询")
    assert number in listed.text
    department = case_json(stack, number)["department"]
    for action in ("accept", "start"):
        await act(console, number, action)
        await notice(chat)
    await act(console, number, "resolve", RESULT)
    assert (await notice(chat))["text"] == utter(
        "utter_case_resolved_notice", case_number=number, department=department, result=RESULT
    )


async def test_a_question_letter_no_guide_answers_is_filed_as_a_consultation_from_its_first_reply(
    stack: Stack, chat: ChatClient
) -> None:
    # No offer to accept first: the intake starts at once and asks only what the letter lacks.
    assert texts(await chat.say(LETTER)) == [utter("utter_kb_consultation_started"), utter("utter_ask_contact_phone")]
    summary, preview = await chat.say(LETTER_PHONE)
    # Read back as one paragraph (the letter's line break is a space there).
    assert summary["text"] == utter(
        "utter_consultation_summary", description=readback_description(LETTER), contact_phone=LETTER_PHONE
    )
    assert preview["text"].startswith("将为您登记「咨询」工单")
    confirm = next(button for button in preview["buttons"] if button["payload"] == "/affirm")
    [filed] = await chat.click(confirm)
    match = CASE_NUMBER.search(filed["text"])
    assert match, filed
    case = case_json(stack, match.group(0))
    assert (case["case_type"], case["description"], case["location"]) == ("咨询", LETTER, "")
