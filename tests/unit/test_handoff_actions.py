"""The hand-off actions: asked for, two fallbacks in a row, an answer rejected twice.

Driven as the engine drives them: real rasa_sdk trackers (events as the engine sends them)
and dispatchers, a real migrated database, and a fixed clock so on-duty and off-duty
answers are both pinned.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, time
from typing import Any

import pytest
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.handoff import (
    REJECTIONS_SLOT,
    ActionFallback,
    ActionHandoff,
    ActionRejectAnswer,
    HandoffActionBase,
)
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.duty import DUTY_HOURS_ENV, DutyHours, InvalidDutyHours
from crm_backend.models import ChannelIdentity, Conversation
from crm_backend.services.conversations import current_conversation
from tests.unit.test_actions import DOMAIN, register, rendered, responses

Sessions = async_sessionmaker[AsyncSession]
Event = dict[str, Any]

HOURS = DutyHours(time(9, 0), time(18, 0))
TUESDAY_MORNING = datetime(2026, 11, 24, 10, 0, tzinfo=CHINA_TZ)
TUESDAY_EVENING = datetime(2026, 11, 24, 20, 0, tzinfo=CHINA_TZ)
NATIONAL_DAY = datetime(2026, 10, 1, 10, 0, tzinfo=CHINA_TZ)
HANDOFF_MARKER = {"handoff": True}
ON_DUTY_REPLY = [{"response": "utter_handoff_on_duty"}, {"custom": HANDOFF_MARKER}]


# --- events as the engine records them ----------------------------------------------------


def user(intent: str, text: str = "……") -> Event:
    return {
        "event": "user",
        "timestamp": None,
        "text": text,
        "parse_data": {"intent": {"name": intent, "confidence": 0.45}, "entities": [], "text": text},
        "input_channel": "web",
    }


def bot(response: str | None, custom: dict[str, Any] | None = None) -> Event:
    return {
        "event": "bot",
        "timestamp": None,
        "text": None if custom else "……",
        "data": {"buttons": None, "custom": custom},
        "metadata": {"utter_action": response} if response else {},
    }


def action(name: str) -> Event:
    return {"event": "action", "timestamp": None, "name": name, "policy": None, "confidence": 1.0}


SESSION_START = [
    action("action_session_start"),
    {"event": "session_started", "timestamp": None},
    action("action_listen"),
]


def turn(intent: str, action_name: str, *said: Event) -> list[Event]:
    """One citizen message and what the bot did about it."""
    return [user(intent), action(action_name), *said, action("action_listen")]


def tracker_for(sender_id: str, events: list[Event], slots: dict[str, Any] | None = None) -> Tracker:
    """A tracker whose last event is the citizen's latest message, as when the engine runs an action."""
    latest = events[-1]
    assert latest["event"] == "user"
    return Tracker.from_dict(
        {
            "sender_id": sender_id,
            "slots": slots or {},
            "latest_message": latest["parse_data"],
            "events": events,
            "active_loop": {},
            "latest_action_name": "action_listen",
        }
    )


def fixed(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


async def status_of(sessions: Sessions, identity: ChannelIdentity) -> str:
    async with sessions() as session:
        return (await current_conversation(session, identity)).handoff_status


async def reason_of(sessions: Sessions, identity: ChannelIdentity) -> str | None:
    """Why the conversation was handed off, as staff see it."""
    async with sessions() as session:
        return (await current_conversation(session, identity)).handoff_reason


def said(dispatcher: CollectingDispatcher) -> list[dict[str, Any]]:
    """What the dispatcher was given, without the empty fields (and rasa_sdk's legacy `template` copy)."""
    return [
        {key: value for key, value in message.items() if value and key != "template"} for message in dispatcher.messages
    ]


@pytest.fixture
def dispatcher() -> CollectingDispatcher:
    return CollectingDispatcher()


@pytest.fixture
async def citizen(sessions: Sessions) -> ChannelIdentity:
    return await register(sessions, "handoff-citizen")


# --- the hand-off itself --------------------------------------------------------------------


async def test_handoff_on_duty_marks_the_conversation_waiting_and_says_a_person_answers_soon(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity
) -> None:
    tracker = tracker_for(citizen.sender_id, [*SESSION_START, user("human_handoff")])
    events = await ActionHandoff(sessions, HOURS, fixed(TUESDAY_MORNING)).run(dispatcher, tracker, {})
    async with sessions() as session:
        conversation = await current_conversation(session, citizen)
    assert conversation.handoff_status == "waiting"
    assert conversation.handoff_requested_at is not None
    assert conversation.handoff_reason == "request"
    assert said(dispatcher) == ON_DUTY_REPLY
    assert events == [{"event": "slot", "timestamp": None, "name": REJECTIONS_SLOT, "value": None}]


@pytest.mark.parametrize(
    ("now", "day", "start"),
    [(TUESDAY_EVENING, "11月25日", "9:00"), (NATIONAL_DAY, "10月8日", "9:00")],
    ids=["weekday evening", "national day"],
)
async def test_handoff_off_duty_says_when_staff_will_answer(
    sessions: Sessions,
    dispatcher: CollectingDispatcher,
    citizen: ChannelIdentity,
    now: datetime,
    day: str,
    start: str,
) -> None:
    tracker = tracker_for(citizen.sender_id, [*SESSION_START, user("human_handoff")])
    await ActionHandoff(sessions, HOURS, fixed(now)).run(dispatcher, tracker, {})
    assert await status_of(sessions, citizen) == "waiting"
    assert said(dispatcher) == [
        {"response": "utter_handoff_off_duty", "date": day, "start": start, "hours": "9:00-18:00"},
        {"custom": HANDOFF_MARKER},
    ]
    text = rendered(dispatcher.messages[0])
    assert f"{day} {start} 起" in text and "9:00-18:00" in text


async def test_a_complaint_is_handed_off_as_a_complaint(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity
) -> None:
    events = [*SESSION_START, user("complain_about_service", "你们的服务太差劲了")]
    await ActionHandoff(sessions, HOURS, fixed(TUESDAY_MORNING)).run(
        dispatcher, tracker_for(citizen.sender_id, events), {}
    )
    assert said(dispatcher) == ON_DUTY_REPLY
    assert await reason_of(sessions, citizen) == "complaint"


async def test_handoff_for_an_unknown_sender_still_answers(
    sessions: Sessions, dispatcher: CollectingDispatcher
) -> None:
    tracker = tracker_for("web:never-seen", [user("human_handoff")])
    await ActionHandoff(sessions, HOURS, fixed(TUESDAY_MORNING)).run(dispatcher, tracker, {})
    assert said(dispatcher) == ON_DUTY_REPLY
    async with sessions() as session:
        assert await session.scalar(select(func.count(Conversation.id))) == 0


def test_duty_hours_come_from_the_environment_and_a_bad_value_stops_the_actions(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DUTY_HOURS_ENV, "08:00-16:30")
    assert ActionHandoff(sessions).hours == DutyHours(time(8, 0), time(16, 30))
    monkeypatch.setenv(DUTY_HOURS_ENV, "all day")
    with pytest.raises(InvalidDutyHours, match=DUTY_HOURS_ENV):
        ActionHandoff(sessions)


def test_the_handoff_actions_are_in_the_domain_and_share_one_handoff() -> None:
    for action_class in (ActionHandoff, ActionFallback, ActionRejectAnswer):
        assert issubclass(action_class, HandoffActionBase)
        assert action_class.hand_off is HandoffActionBase.hand_off
    assert {"action_handoff", "action_fallback", "action_reject_answer"} <= set(DOMAIN["actions"])
    assert DOMAIN["slots"][REJECTIONS_SLOT]["influence_conversation"] is False


# --- two fallbacks in a row ---------------------------------------------------------------


async def test_a_first_fallback_asks_to_rephrase(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity
) -> None:
    tracker = tracker_for(citizen.sender_id, [*SESSION_START, user("nlu_fallback")])
    events = await ActionFallback(sessions, HOURS, fixed(TUESDAY_MORNING)).run(dispatcher, tracker, {})
    assert events == []
    assert responses(dispatcher) == ["utter_default"]
    assert await status_of(sessions, citizen) == "bot"


async def test_a_second_fallback_in_a_row_hands_off(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity
) -> None:
    events = [*SESSION_START, *turn("nlu_fallback", "action_fallback", bot("utter_default")), user("nlu_fallback")]
    await ActionFallback(sessions, HOURS, fixed(TUESDAY_MORNING)).run(
        dispatcher, tracker_for(citizen.sender_id, events), {}
    )
    assert said(dispatcher) == ON_DUTY_REPLY
    assert await status_of(sessions, citizen) == "waiting"
    assert await reason_of(sessions, citizen) == "fallback"


async def test_a_second_fallback_off_duty_says_the_same_as_a_request_off_duty(
    sessions: Sessions, citizen: ChannelIdentity
) -> None:
    fallback, request = CollectingDispatcher(), CollectingDispatcher()
    events = [*SESSION_START, *turn("nlu_fallback", "action_fallback", bot("utter_default")), user("nlu_fallback")]
    await ActionFallback(sessions, HOURS, fixed(TUESDAY_EVENING)).run(
        fallback, tracker_for(citizen.sender_id, events), {}
    )
    tracker = tracker_for(citizen.sender_id, [user("human_handoff")])
    await ActionHandoff(sessions, HOURS, fixed(TUESDAY_EVENING)).run(request, tracker, {})
    assert fallback.messages == request.messages
    assert responses(fallback)[0] == "utter_handoff_off_duty"


@pytest.mark.parametrize(
    "before",
    [
        # something understood in between
        [
            *turn("nlu_fallback", "action_fallback", bot("utter_default")),
            *turn("greet", "utter_greet", bot("utter_greet")),
        ],
        # the earlier message was taken by a form as an answer, not answered with utter_default
        [
            *turn("report_issue", "action_start_report", bot("utter_ask_location")),
            *turn("nlu_fallback", "report_form", bot("utter_choose_district")),
        ],
        # the earlier pair already went to staff, who handed the conversation back
        [
            *turn("nlu_fallback", "action_fallback", bot("utter_default")),
            *turn("nlu_fallback", "action_fallback", bot("utter_handoff_on_duty"), bot(None, HANDOFF_MARKER)),
        ],
        # the earlier fallback was in the previous session
        [*turn("nlu_fallback", "action_fallback", bot("utter_default")), *SESSION_START],
    ],
    ids=["understood in between", "taken by a form", "after a hand-back", "previous session"],
)
async def test_a_fallback_not_right_after_another_asks_to_rephrase(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity, before: list[Event]
) -> None:
    events = [*SESSION_START, *before, user("nlu_fallback")]
    await ActionFallback(sessions, HOURS, fixed(TUESDAY_MORNING)).run(
        dispatcher, tracker_for(citizen.sender_id, events), {}
    )
    assert responses(dispatcher) == ["utter_default"]
    assert await status_of(sessions, citizen) == "bot"


# --- an answer rejected twice ---------------------------------------------------------------


async def test_a_first_rejected_answer_gets_an_apology_and_a_hint(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity
) -> None:
    events = [
        *SESSION_START,
        *turn("ask_faq", "action_answer_question", bot("utter_kb_offer_consultation")),
        user("deny"),
    ]
    result = await ActionRejectAnswer(sessions, HOURS, fixed(TUESDAY_MORNING)).run(
        dispatcher, tracker_for(citizen.sender_id, events), {}
    )
    assert responses(dispatcher) == ["utter_answer_rejected"]
    assert "转人工" in DOMAIN["responses"]["utter_answer_rejected"][0]["text"]
    assert result == [{"event": "slot", "timestamp": None, "name": REJECTIONS_SLOT, "value": 1.0}]
    assert await status_of(sessions, citizen) == "bot"


async def test_a_second_rejected_answer_hands_off(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity
) -> None:
    events = [
        *SESSION_START,
        *turn("ask_faq", "action_answer_question", bot("utter_kb_offer_consultation")),
        *turn("deny", "action_reject_answer", bot("utter_answer_rejected")),
        user("deny"),
    ]
    result = await ActionRejectAnswer(sessions, HOURS, fixed(TUESDAY_MORNING)).run(
        dispatcher, tracker_for(citizen.sender_id, events, {REJECTIONS_SLOT: 1.0}), {}
    )
    assert said(dispatcher) == ON_DUTY_REPLY
    assert await status_of(sessions, citizen) == "waiting"
    assert await reason_of(sessions, citizen) == "rejected"
    # The count starts again once staff hand the conversation back.
    assert result == [{"event": "slot", "timestamp": None, "name": REJECTIONS_SLOT, "value": None}]


async def test_rejections_need_not_be_in_a_row_within_a_session(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity
) -> None:
    events = [
        *SESSION_START,
        *turn("ask_faq", "action_answer_question", bot("utter_kb_offer_consultation")),
        *turn("deny", "action_reject_answer", bot("utter_answer_rejected")),
        *turn("out_of_scope", "utter_out_of_scope", bot("utter_out_of_scope")),
        user("deny"),
    ]
    await ActionRejectAnswer(sessions, HOURS, fixed(TUESDAY_MORNING)).run(
        dispatcher, tracker_for(citizen.sender_id, events, {REJECTIONS_SLOT: 1.0}), {}
    )
    assert responses(dispatcher)[0] == "utter_handoff_on_duty"
    assert await status_of(sessions, citizen) == "waiting"


@pytest.mark.parametrize(
    "question", ["utter_you_are_welcome", "utter_anything_else", "utter_report_cancelled", "utter_greet"]
)
async def test_no_to_anything_else_declines_more_help_and_counts_nothing(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity, question: str
) -> None:
    events = [*SESSION_START, *turn("thank", question, bot(question)), user("deny")]
    result = await ActionRejectAnswer(sessions, HOURS, fixed(TUESDAY_MORNING)).run(
        dispatcher, tracker_for(citizen.sender_id, events, {REJECTIONS_SLOT: 1.0}), {}
    )
    assert responses(dispatcher) == ["utter_goodbye"]
    assert result == []
    assert await status_of(sessions, citizen) == "bot"


async def test_no_before_the_bot_said_anything_is_not_a_rejection(
    sessions: Sessions, dispatcher: CollectingDispatcher, citizen: ChannelIdentity
) -> None:
    tracker = tracker_for(citizen.sender_id, [*SESSION_START, user("deny")])
    result = await ActionRejectAnswer(sessions, HOURS, fixed(TUESDAY_MORNING)).run(dispatcher, tracker, {})
    assert responses(dispatcher) == ["utter_anything_else"]
    assert result == []
