"""The knowledge-base actions against a real, seeded database: answers, follow-ups, no match, feedback."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

import pytest
from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.handoff import REJECTIONS_SLOT, ActionFallback, ActionRejectAnswer
from actions.knowledge import (
    ENTRY_SLOT,
    MISSING_ASPECT_RESPONSE,
    ActionAcceptAnswer,
    ActionAnswerQuestion,
    KnowledgeAnswers,
)
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.duty import DutyHours
from crm_backend.models import ChannelIdentity, KnowledgeFeedback
from crm_backend.services.conversations import current_conversation
from crm_backend.services.knowledge import KnowledgeBase, recent_misses, seed_knowledge_once
from tests.unit.test_actions import DOMAIN, entity, make_tracker, payload_intent, register, rendered, responses
from tests.unit.test_handoff_actions import SESSION_START, bot, tracker_for, turn, user

Sessions = async_sessionmaker[AsyncSession]
Event = dict[str, Any]

HOURS = DutyHours(time(9, 0), time(18, 0))
TUESDAY_MORNING = datetime(2026, 11, 24, 10, 0, tzinfo=CHINA_TZ)


@pytest.fixture
async def answers(sessions: Sessions) -> KnowledgeAnswers:
    assert await seed_knowledge_once(sessions)
    return KnowledgeAnswers(KnowledgeBase(sessions))


@pytest.fixture
async def citizen(sessions: Sessions) -> ChannelIdentity:
    return await register(sessions, "kb-citizen")


async def ask(
    answers: KnowledgeAnswers, text: str, *, slots: dict[str, Any] | None = None, **latest: Any
) -> tuple[CollectingDispatcher, list[Event]]:
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(text=text, intent="ask_faq", slots=slots, **latest)
    events = await ActionAnswerQuestion(answers).run(dispatcher, tracker, {})
    return dispatcher, events


def entry_set(events: list[Event]) -> str | None:
    values = [event["value"] for event in events if event.get("name") == ENTRY_SLOT]
    return values[-1] if values else None


async def test_a_clear_question_is_answered_naming_its_entry(answers: KnowledgeAnswers) -> None:
    dispatcher, events = await ask(answers, "身份证丢了怎么补办")
    assert responses(dispatcher) == ["utter_kb_answer", "utter_kb_helpful"]
    text = rendered(dispatcher.messages[0])
    assert "依据：《居民身份证挂失与补领" in text or ("依据：《" in text and "身份证" in text)
    assert "申请材料" in text or "材料" in text
    assert entry_set(events) == "id-card-reissue"


async def test_an_unclear_question_offers_the_two_nearest_other_entries(answers: KnowledgeAnswers) -> None:
    dispatcher, events = await ask(answers, "请问公积金怎么提取出来")
    assert responses(dispatcher) == ["utter_kb_answer", "utter_kb_helpful_unclear"]
    offered = dispatcher.messages[1]["buttons"]
    assert len(offered) == 2
    answered = entry_set(events)
    assert all(payload_intent(b["payload"]) == "ask_faq" and answered not in b["payload"] for b in offered)
    assert all("公积金" in b["title"] for b in offered)


async def test_an_entry_button_answers_that_entry(answers: KnowledgeAnswers) -> None:
    dispatcher, events = await ask(
        answers, '/ask_faq{"kb_entry": "hpf-withdraw-retire"}', entities=[entity(ENTRY_SLOT, "hpf-withdraw-retire")]
    )
    assert responses(dispatcher) == ["utter_kb_answer", "utter_kb_helpful"]
    assert entry_set(events) == "hpf-withdraw-retire"


async def test_a_follow_up_is_answered_from_the_same_entry(answers: KnowledgeAnswers) -> None:
    _, events = await ask(answers, "第一次申请居住证")
    assert entry_set(events) == "residence-permit-apply"
    dispatcher, events = await ask(answers, "那需要带什么材料？", slots={ENTRY_SLOT: "residence-permit-apply"})
    assert responses(dispatcher) == ["utter_kb_followup", "utter_kb_helpful"]
    text = rendered(dispatcher.messages[0])
    assert text.startswith("关于「居住证办理指南」的材料：身份证原件")
    assert entry_set(events) == "residence-permit-apply"
    dispatcher, _ = await ask(answers, "网上能办吗", slots={ENTRY_SLOT: "residence-permit-apply"})
    online = rendered(dispatcher.messages[0])  # 【本市政务服务网】 not filled in: left out
    assert "公安政务小程序" in online and "【" not in online


async def test_a_sloppy_question_then_how_long_gets_the_time_limit_alone(answers: KnowledgeAnswers) -> None:
    """Issue 12: 「社保咋转到这边来」 found the wrong guide and 「那要多久能弄好」 repeated it whole."""
    _, events = await ask(answers, "社保咋转到这边来")
    assert entry_set(events) == "social-insurance-transfer"
    dispatcher, events = await ask(answers, "那要多久能弄好", slots={ENTRY_SLOT: "social-insurance-transfer"})
    assert responses(dispatcher) == ["utter_kb_followup", "utter_kb_helpful"]
    text = rendered(dispatcher.messages[0])
    assert text.startswith("关于「养老保险关系转移接续」的时限：") and "45个工作日" in text
    assert "申请材料" not in text
    assert entry_set(events) == "social-insurance-transfer"


async def test_an_aspect_the_entry_lacks_is_said_plainly_with_the_nearest_part_not_the_whole_answer(
    answers: KnowledgeAnswers,
) -> None:
    entry = await answers.knowledge.entry("flexible-employment-insurance")
    assert entry is not None
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(text="那要多久能弄好", intent="ask_faq", slots={ENTRY_SLOT: entry.slug})
    events = await ActionAnswerQuestion(answers).run(dispatcher, tracker, DOMAIN)
    assert responses(dispatcher) == [MISSING_ASPECT_RESPONSE, "utter_kb_helpful"]
    said = dispatcher.messages[0]
    assert said["kb_title"] == entry.title and said["kb_aspect"] == "时限"
    assert said["kb_answer"] in entry.answer or said["kb_answer"] in entry.follow_ups.values()
    assert len(said["kb_answer"]) < len(entry.answer) / 2
    assert entry_set(events) == entry.slug


async def test_a_follow_up_naming_another_service_is_a_new_question(answers: KnowledgeAnswers) -> None:
    dispatcher, events = await ask(
        answers, "那身份证丢了补办要带什么材料", slots={ENTRY_SLOT: "residence-permit-apply"}
    )
    assert responses(dispatcher)[0] == "utter_kb_answer"
    assert entry_set(events) == "id-card-reissue"


async def test_a_follow_up_with_nothing_answered_before_asks_which_service(answers: KnowledgeAnswers) -> None:
    dispatcher, events = await ask(answers, "那需要带什么材料？")
    assert responses(dispatcher) == ["utter_kb_which_service"]
    assert "材料" in rendered(dispatcher.messages[0])
    assert events == []


async def test_no_match_offers_a_consultation_and_keeps_the_question_for_staff(
    sessions: Sessions, answers: KnowledgeAnswers, citizen: ChannelIdentity
) -> None:
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(citizen.sender_id, text="无人机在公园飞需要报备吗", intent="ask_faq")
    events = await ActionAnswerQuestion(answers).run(dispatcher, tracker, {})
    assert responses(dispatcher) == ["utter_kb_offer_consultation"]
    assert events == [
        {"event": "slot", "timestamp": None, "name": "consult_question", "value": "无人机在公园飞需要报备吗"}
    ]
    async with sessions() as session:
        [row] = await recent_misses(session)
        conversation = await current_conversation(session, citizen)
    assert row.miss.question == "无人机在公园飞需要报备吗"
    assert row.miss.conversation_id == conversation.id
    assert row.miss.evidence < 0.25 and row.nearest is not None


async def test_off_topic_and_which_service_replies_are_no_gap_in_the_knowledge_base(
    sessions: Sessions, answers: KnowledgeAnswers
) -> None:
    await ask(answers, "那需要带什么材料？")
    tracker = make_tracker(text="红烧肉怎么做才好吃", intent="ask_faq")
    tracker.latest_message["intent_ranking"] = [{"name": "out_of_scope", "confidence": 0.3}]
    await ActionAnswerQuestion(answers).run(CollectingDispatcher(), tracker, {})
    async with sessions() as session:
        assert await recent_misses(session) == []


async def test_no_match_the_nlu_thought_off_topic_gets_the_out_of_scope_reply(answers: KnowledgeAnswers) -> None:
    ranking = [{"name": "ask_faq", "confidence": 0.6}, {"name": "out_of_scope", "confidence": 0.3}]
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(text="红烧肉怎么做才好吃", intent="ask_faq")
    tracker.latest_message["intent_ranking"] = ranking
    await ActionAnswerQuestion(answers).run(dispatcher, tracker, {})
    assert responses(dispatcher) == ["utter_out_of_scope"]


async def test_the_consult_button_asks_for_the_question(answers: KnowledgeAnswers) -> None:
    dispatcher, _ = await ask(answers, "/ask_faq")
    assert responses(dispatcher) == ["utter_kb_ask_question"]


async def test_the_fallback_answers_a_clear_question_the_nlu_missed(
    sessions: Sessions, answers: KnowledgeAnswers, citizen: ChannelIdentity
) -> None:
    dispatcher = CollectingDispatcher()
    events = [*SESSION_START, user("nlu_fallback", "居主证怎么办")]
    result = await ActionFallback(sessions, HOURS, lambda: TUESDAY_MORNING, answers=answers).run(
        dispatcher, tracker_for(citizen.sender_id, events), {}
    )
    assert responses(dispatcher) == ["utter_kb_answer", "utter_kb_helpful"]
    assert entry_set(result) == "residence-permit-apply"


async def test_the_fallback_still_asks_to_rephrase_what_is_no_question(
    sessions: Sessions, answers: KnowledgeAnswers, citizen: ChannelIdentity
) -> None:
    dispatcher = CollectingDispatcher()
    events = [*SESSION_START, user("nlu_fallback", "asdf qwer")]
    await ActionFallback(sessions, HOURS, lambda: TUESDAY_MORNING, answers=answers).run(
        dispatcher, tracker_for(citizen.sender_id, events), {}
    )
    assert responses(dispatcher) == ["utter_default"]


async def feedback_rows(sessions: Sessions) -> list[tuple[bool, str]]:
    async with sessions() as session:
        rows = (await session.scalars(select(KnowledgeFeedback).order_by(KnowledgeFeedback.id))).all()
    return [(row.helpful, row.question) for row in rows]


def answered_turn(question: str) -> list[Event]:
    return [
        *SESSION_START,
        user("ask_faq", question),
        *turn("ask_faq", "action_answer_question", bot("utter_kb_answer"), bot("utter_kb_helpful"))[1:],
    ]


async def test_yes_after_an_answer_counts_it_as_helpful(
    sessions: Sessions, answers: KnowledgeAnswers, citizen: ChannelIdentity
) -> None:
    dispatcher = CollectingDispatcher()
    events = [*answered_turn("身份证丢了怎么补办"), user("affirm", "有帮助")]
    tracker = tracker_for(citizen.sender_id, events, {ENTRY_SLOT: "id-card-reissue"})
    await ActionAcceptAnswer(sessions).run(dispatcher, tracker, {})
    assert responses(dispatcher) == ["utter_kb_glad"]
    assert await feedback_rows(sessions) == [(True, "身份证丢了怎么补办")]


async def test_a_plain_yes_elsewhere_is_no_feedback(sessions: Sessions, citizen: ChannelIdentity) -> None:
    dispatcher = CollectingDispatcher()
    events = [*SESSION_START, *turn("greet", "utter_greet", bot("utter_greet")), user("affirm", "好的")]
    await ActionAcceptAnswer(sessions).run(dispatcher, tracker_for(citizen.sender_id, events), {})
    assert responses(dispatcher) == ["utter_anything_else"]
    assert await feedback_rows(sessions) == []


async def test_no_after_an_answer_counts_it_and_the_second_no_hands_off(
    sessions: Sessions, answers: KnowledgeAnswers, citizen: ChannelIdentity
) -> None:
    dispatcher = CollectingDispatcher()
    events = [*answered_turn("身份证丢了怎么补办"), user("deny", "没帮助")]
    tracker = tracker_for(citizen.sender_id, events, {ENTRY_SLOT: "id-card-reissue"})
    result = await ActionRejectAnswer(sessions, HOURS, lambda: TUESDAY_MORNING).run(dispatcher, tracker, {})
    assert responses(dispatcher) == ["utter_kb_not_helpful"]
    assert [payload_intent(b["payload"]) for b in dispatcher.messages[0].get("buttons") or []] == []
    assert result == [{"event": "slot", "timestamp": None, "name": REJECTIONS_SLOT, "value": 1.0}]
    assert await feedback_rows(sessions) == [(False, "身份证丢了怎么补办")]

    dispatcher = CollectingDispatcher()
    events = [*answered_turn("身份证丢了要带什么"), user("deny", "还是没用")]
    tracker = tracker_for(citizen.sender_id, events, {ENTRY_SLOT: "id-card-reissue", REJECTIONS_SLOT: 1.0})
    await ActionRejectAnswer(sessions, HOURS, lambda: TUESDAY_MORNING).run(dispatcher, tracker, {})
    assert responses(dispatcher)[0] == "utter_handoff_on_duty"
    assert [helpful for helpful, _ in await feedback_rows(sessions)] == [False, False]


async def test_an_unsure_message_whose_best_guess_is_off_topic_gets_the_off_topic_reply(
    sessions: Sessions, answers: KnowledgeAnswers, citizen: ChannelIdentity
) -> None:
    dispatcher = CollectingDispatcher()
    message = user("nlu_fallback", "给我讲个冷笑话")
    message["parse_data"]["intent_ranking"] = [
        {"name": "nlu_fallback", "confidence": 0.45},
        {"name": "out_of_scope", "confidence": 0.41},
        {"name": "ask_faq", "confidence": 0.2},
    ]
    events = [*SESSION_START, *turn("nlu_fallback", "action_fallback", bot("utter_default")), message]
    await ActionFallback(sessions, HOURS, lambda: TUESDAY_MORNING, answers=answers).run(
        dispatcher, tracker_for(citizen.sender_id, events), {}
    )
    # Not a second misunderstanding in a row: no hand-off.
    assert responses(dispatcher) == ["utter_out_of_scope"]
