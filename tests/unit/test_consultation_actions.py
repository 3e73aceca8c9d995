"""No dead end for a question: a question the knowledge base cannot answer becomes a 咨询 case.

The no-match reply offers 「登记咨询」, which starts the report intake as a consultation: the
question is the description, the place is not asked (a place the question names is used),
the read-back names the department that will answer and by when, and the filed case is a
咨询 case routed to that department (a city-level one when no district is named).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.dispatch import CONSULTATION_CONFIRM_BUTTONS, ActionAskReportConfirmed
from actions.knowledge import CONSULT_SLOT, ActionAnswerQuestion, KnowledgeAnswers
from actions.report import CONSULTATION, REPORT_SLOTS, ActionStartReport
from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.deadlines import due_at
from crm_backend.dispatch.service import Dispatcher
from crm_backend.models import Department, utcnow
from crm_backend.services.knowledge import KnowledgeBase, recent_misses, seed_knowledge_once
from tests.unit.test_actions import (
    DOMAIN,
    PHONE,
    all_cases,
    all_decisions,
    day_text,
    desk,
    entity,
    make_tracker,
    payload_intent,
    register,
    rendered,
    responses,
    run_report_form,
    seeded,
    slot_state,
    submit,
)

__all__ = ["desk", "seeded"]  # fixtures, imported for the tests below

Sessions = async_sessionmaker[AsyncSession]

# Not in the knowledge base, names no place: a city-wide question.
BEES = "请问在自家阳台养蜜蜂需要去哪里备案"
# Names a district: its department answers.
BEES_IN_A1 = "请问在A1区自家阳台养蜜蜂需要去哪里备案"
OFFER_PAYLOAD = '/report_issue{"case_type": "咨询"}'
# A question letter no entry answers, as the app's letter gate steers it (`bot.letters.Steering`).
BEES_LETTER = (
    "关于家庭养蜂是否需要备案的咨询\n尊敬的领导：您好！我去年开始在自家院子里养了十几箱蜜蜂，"
    "蜂蜜主要是自己吃，偶尔送给亲戚朋友。想请问在自家院子里养蜂是否需要到有关部门备案？谢谢！"
)
STEERED_QUESTION = {"letter": {"intent": "ask_faq", "confidence": 0.91}}


@pytest.fixture
async def answers(sessions: Sessions) -> KnowledgeAnswers:
    assert await seed_knowledge_once(sessions)
    return KnowledgeAnswers(KnowledgeBase(sessions))


def consultation_slots(question: str = BEES, **changes: Any) -> dict[str, Any]:
    """The form's slots once the phone is given, as 「登记咨询」 left them."""
    return {
        "description": question,
        "location": None,
        "district": None,
        "contact_phone": PHONE,
        "case_type_choice": CONSULTATION,
        CONSULT_SLOT: question,
        "report_confirmed": None,
    } | changes


async def test_consultation_is_a_12345_type() -> None:
    assert CONSULTATION in CASE_TYPES
    assert CONSULT_SLOT in DOMAIN["slots"] and CONSULT_SLOT in REPORT_SLOTS


async def test_no_match_offers_a_consultation_and_keeps_the_question(
    sessions: Sessions, answers: KnowledgeAnswers
) -> None:
    citizen = await register(sessions, "bees")
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(citizen.sender_id, text=BEES, intent="ask_faq")
    events = await ActionAnswerQuestion(answers).run(dispatcher, tracker, {})
    assert responses(dispatcher) == ["utter_kb_offer_consultation"]
    assert slot_state(events) == {CONSULT_SLOT: BEES}
    # The offer itself, as the domain says it: no 「换个说法」, a button that registers the consultation.
    offer = DOMAIN["responses"]["utter_kb_offer_consultation"][0]
    assert "换个说法" not in offer["text"] and "咨询工单" in offer["text"]
    assert [(b["title"], b["payload"]) for b in offer["buttons"]] == [
        ("登记咨询", OFFER_PAYLOAD),
        ("转人工客服", "/human_handoff"),
    ]
    assert all(payload_intent(b["payload"]) in DOMAIN["intents"] for b in offer["buttons"])
    assert json.loads(OFFER_PAYLOAD.removeprefix("/report_issue")) == {"case_type": CONSULTATION}
    # The miss is still recorded for staff.
    async with sessions() as session:
        [row] = await recent_misses(session)
    assert row.miss.question == BEES


async def test_a_question_letter_no_entry_answers_starts_the_consultation_at_once(
    sessions: Sessions, answers: KnowledgeAnswers, desk: Dispatcher
) -> None:
    citizen = await register(sessions, "bees-letter")
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(citizen.sender_id, text=BEES_LETTER, intent="ask_faq", metadata=STEERED_QUESTION)
    events = await ActionAnswerQuestion(answers).run(dispatcher, tracker, {})
    assert responses(dispatcher) == ["utter_kb_consultation_started"]
    assert slot_state(events) == {CONSULT_SLOT: BEES_LETTER}
    assert events[-1] == {"event": "followup", "name": "action_start_report", "timestamp": None}
    said = DOMAIN["responses"]["utter_kb_consultation_started"][0]["text"]
    assert "咨询工单" in said and "换个说法" not in said
    # The engine then runs action_start_report on the same turn: the consultation's intake.
    tracker = make_tracker(
        citizen.sender_id, text=BEES_LETTER, intent="ask_faq", metadata=STEERED_QUESTION, slots=slot_state(events)
    )
    started = await ActionStartReport(desk=desk).run(CollectingDispatcher(), tracker, DOMAIN)
    state = slot_state(started)
    assert (state["description"], state["case_type_choice"]) == (BEES_LETTER, CONSULTATION)
    assert started[-1] == {"event": "followup", "name": "report_form", "timestamp": None}


async def test_a_short_question_no_entry_answers_is_only_offered_the_consultation(
    sessions: Sessions, answers: KnowledgeAnswers, desk: Dispatcher
) -> None:
    citizen = await register(sessions, "bees-short")
    dispatcher = CollectingDispatcher()
    events = await ActionAnswerQuestion(answers).run(
        dispatcher, make_tracker(citizen.sender_id, text=BEES, intent="ask_faq"), {}
    )
    assert responses(dispatcher) == ["utter_kb_offer_consultation"]
    assert all(event["event"] == "slot" for event in events)
    # Nor does an unsteered ask_faq turn start a report.
    started = await ActionStartReport(desk=desk).run(
        CollectingDispatcher(), make_tracker(text=BEES, intent="ask_faq", slots={CONSULT_SLOT: BEES}), DOMAIN
    )
    assert slot_state(started)["case_type_choice"] is None
    assert all(event["event"] == "slot" for event in started)


async def start(desk: Dispatcher, slots: dict[str, Any]) -> dict[str, Any]:
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(
        text=OFFER_PAYLOAD, intent="report_issue", entities=[entity("case_type", CONSULTATION)], slots=slots
    )
    events = await ActionStartReport(desk=desk).run(dispatcher, tracker, DOMAIN)
    assert dispatcher.messages == []
    return slot_state(events)


async def test_registering_a_consultation_starts_the_intake_with_the_question(desk: Dispatcher) -> None:
    state = await start(desk, {CONSULT_SLOT: BEES, "kb_entry": None})
    assert state["description"] == BEES
    assert state["case_type_choice"] == CONSULTATION
    assert state[CONSULT_SLOT] == BEES
    assert state["location"] is None and state["district"] is None


async def test_a_place_the_question_names_is_used_for_the_district(desk: Dispatcher) -> None:
    state = await start(desk, {CONSULT_SLOT: BEES_IN_A1})
    assert state["description"] == BEES_IN_A1
    assert state["district"] == "A1区"


async def test_registering_without_a_kept_question_asks_for_it(desk: Dispatcher) -> None:
    state = await start(desk, {})
    assert state["case_type_choice"] == CONSULTATION and state["description"] is None


async def test_an_ordinary_report_forgets_a_question_offered_earlier(desk: Dispatcher) -> None:
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(text="/report_issue", intent="report_issue", slots={CONSULT_SLOT: BEES})
    state = slot_state(await ActionStartReport(desk=desk).run(dispatcher, tracker, DOMAIN))
    assert state[CONSULT_SLOT] is None and state["case_type_choice"] is None and state["description"] is None


async def test_a_consultation_asks_the_phone_not_the_place(desk: Dispatcher) -> None:
    dispatcher = CollectingDispatcher()
    slots = consultation_slots(contact_phone=None)
    state = await run_report_form(desk, dispatcher, slots, {"description": BEES})
    assert state["requested_slot"] == "contact_phone"
    done = await run_report_form(desk, dispatcher, slots, {"contact_phone": PHONE})
    assert done["requested_slot"] == "report_confirmed"


async def test_a_type_corrected_away_from_consultation_asks_the_place(desk: Dispatcher) -> None:
    dispatcher = CollectingDispatcher()
    slots = consultation_slots(requested_slot="case_type_choice")
    state = await run_report_form(desk, dispatcher, slots, {"case_type_choice": "投诉"})
    assert state["case_type_choice"] == "投诉" and state["requested_slot"] == "location"


async def test_the_read_back_says_which_department_answers_the_consultation_by_when(
    seeded: Sessions, desk: Dispatcher
) -> None:
    dispatcher = CollectingDispatcher()
    slots = consultation_slots(category_choice="环境保护", requested_slot="report_confirmed")
    tracker = make_tracker("web:abc", slots=slots, active_loop="report_form")
    assert await ActionAskReportConfirmed(seeded, desk).run(dispatcher, tracker, DOMAIN) == []
    summary, preview = dispatcher.messages
    assert summary["response"] == "utter_consultation_summary"
    assert rendered(summary) == f"请核对您的咨询：\n咨询内容：{BEES}\n联系电话：{PHONE}"
    assert preview["response"] == "utter_consultation_preview"
    due = day_text(due_at(utcnow(), 7))  # the category's deadline (环境保护: 7 working days)
    assert rendered(preview) == (
        f"将为您登记「咨询」工单，属于「环境保护」类，由「A市生态环境局」答复，预计 {due} 前答复，确认提交吗？"
    )
    assert preview["buttons"] == CONSULTATION_CONFIRM_BUTTONS
    assert "更正地点" not in [button["title"] for button in preview["buttons"]]
    assert await all_cases(seeded) == []


async def test_a_consultation_without_a_place_is_filed_and_routed_to_a_city_department(
    seeded: Sessions, desk: Dispatcher
) -> None:
    identity = await register(seeded, "bees-filed")
    dispatcher, state = await submit(
        seeded, desk, identity.sender_id, consultation_slots(category_choice="环境保护", report_confirmed="yes")
    )
    [case] = await all_cases(seeded)
    [decision] = await all_decisions(seeded)
    async with seeded() as session:
        department = await session.get(Department, case.department_id)
    assert department is not None
    assert (case.description, case.location, case.district, case.case_type) == (BEES, "", None, CONSULTATION)
    assert (case.status, department.name, decision.district) == ("dispatched", "A市生态环境局", None)
    [filed] = dispatcher.messages
    assert filed["response"] == "utter_consultation_created"
    assert rendered(filed) == (
        f"已为您登记咨询工单，工单号：{case.case_number}。「A市生态环境局」将在 {day_text(case.due_at)} 前答复，"
        "答复会直接发到这里。您也可以随时凭工单号查询进度。"
    )
    assert state["filed_case_number"] == case.case_number and state[CONSULT_SLOT] is None


async def test_a_consultation_in_a_named_district_goes_to_that_districts_department(
    seeded: Sessions, desk: Dispatcher
) -> None:
    identity = await register(seeded, "bees-a1")
    slots = consultation_slots(BEES_IN_A1, district="A1区", category_choice="环境保护", report_confirmed="yes")
    await submit(seeded, desk, identity.sender_id, slots)
    [case] = await all_cases(seeded)
    async with seeded() as session:
        department = await session.get(Department, case.department_id)
    assert department is not None and department.name == "A1区生态环境分局"
    assert (case.case_type, case.district) == (CONSULTATION, "A1区")


async def test_an_unclear_consultation_goes_to_the_dispatchers_and_says_the_answer_comes_here(
    seeded: Sessions, desk: Dispatcher
) -> None:
    identity = await register(seeded, "bees-queued")
    question = "你好，我有个事情想问问，麻烦尽快回复，谢谢"
    dispatcher, _ = await submit(seeded, desk, identity.sender_id, consultation_slots(question, report_confirmed="yes"))
    [case] = await all_cases(seeded)
    assert case.case_type == CONSULTATION and case.department_id is None
    assert responses(dispatcher) == ["utter_consultation_created_queued"]
    assert "答复会直接发到这里" in rendered(dispatcher.messages[0])
