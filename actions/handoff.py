"""Handing the conversation to a member of staff, and the turns that lead to it.

Four triggers end in the same hand-off (`HandoffActionBase.hand_off`): the citizen asks for a
person (`action_handoff`), complains about the service (a rule: apology, then
`action_handoff`), the bot fails to understand two messages in a row (`action_fallback`),
or the citizen rejects the bot's answers twice in one session (`action_reject_answer`).
The hand-off marks the conversation as waiting, tells the citizen when a person will answer
(staff on duty or not, `crm_backend.duty`) and emits the marker the app's pipeline turns
into `handoff_started`; from then on the app keeps the bot silent.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import HANDOFF_MARKER, identity_and_conversation
from actions.dispatch import due_text
from crm_backend.duty import DutyHours, clock_text, next_duty_start, on_duty
from crm_backend.models import utcnow
from crm_backend.services.handoff import request_handoff

REJECTIONS_SLOT = "answer_rejections"
REJECTIONS_BEFORE_HANDOFF = 2
# Bot turns that end by asking whether the citizen needs anything else (or nothing was asked
# yet): a "no" after them declines more help, it does not reject an answer.
CLOSING_RESPONSES = frozenset(
    {
        "utter_greet",
        "utter_goodbye",
        "utter_anything_else",
        "utter_you_are_welcome",
        "utter_nothing_to_cancel",
        "utter_report_cancelled",
        "utter_progress_cancelled",
    }
)

Event = dict[str, Any]


# --- reading the tracker's events ------------------------------------------------------------


def previous_turn(events: list[Event]) -> tuple[Event, list[Event]] | None:
    """The citizen's previous message and the events after it, up to the latest message.

    None when there is no earlier message in this session.
    """
    user_indexes = [index for index, event in enumerate(events) if event.get("event") == "user"]
    if len(user_indexes) < 2:
        return None
    previous, latest = user_indexes[-2], user_indexes[-1]
    between = events[previous + 1 : latest]
    if any(event.get("event") == "session_started" for event in between):
        return None
    return events[previous], between


def bot_responses(events: list[Event]) -> list[str | None]:
    """The domain responses the bot uttered in these events (None for a message without one)."""
    return [(event.get("metadata") or {}).get("utter_action") for event in events if event.get("event") == "bot"]


def handed_off(events: list[Event]) -> bool:
    """Whether the bot handed the conversation to staff in these events."""
    return any(
        event.get("event") == "bot" and (event.get("data") or {}).get("custom") == HANDOFF_MARKER for event in events
    )


def intent_of(user_event: Event) -> str | None:
    return ((user_event.get("parse_data") or {}).get("intent") or {}).get("name")


def follows_a_fallback(tracker: Tracker) -> bool:
    """Whether the citizen's previous message was not understood either.

    That is: it fell back, the bot asked to rephrase (`utter_default`) and did not hand off.
    A message a form took as an answer does not count, nor one in an earlier session.
    """
    turn = previous_turn(tracker.events)
    if turn is None:
        return False
    message, after = turn
    return intent_of(message) == "nlu_fallback" and "utter_default" in bot_responses(after) and not handed_off(after)


def last_bot_response(tracker: Tracker) -> str | None:
    """The last response the bot gave before the citizen's latest message, if any this session."""
    turn = previous_turn(tracker.events)
    if turn is None:
        return None
    responses = [response for response in bot_responses(turn[1]) if response]
    return responses[-1] if responses else None


# --- the hand-off --------------------------------------------------------------------------


class HandoffActionBase(Action):
    """An action that may hand the conversation to staff."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hours: DutyHours | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """Args:
        sessions: the CRM database.
        hours: staff duty hours; `STAFF_DUTY_HOURS` (read now, so a bad value stops the app
            at start) when omitted.
        clock: the current time (tests fix it).
        """
        self.sessions = sessions
        self.hours = hours or DutyHours.from_env()
        self.clock = clock

    async def hand_off(self, dispatcher: CollectingDispatcher, tracker: Tracker, reason: str) -> list[Event]:
        """Mark the conversation as waiting, say when a person will answer, emit the marker.

        Args:
            dispatcher: where the bot's messages go.
            tracker: the conversation.
            reason: why, one of `crm_backend.services.handoff.REASONS` (staff see it).
        """
        async with self.sessions.begin() as session:
            _identity, conversation = await identity_and_conversation(session, tracker)
            if conversation is not None:
                await request_handoff(session, conversation, reason)
        now = self.clock()
        if on_duty(now, self.hours):
            dispatcher.utter_message(response="utter_handoff_on_duty")
        else:
            start = next_duty_start(now, self.hours)
            dispatcher.utter_message(
                response="utter_handoff_off_duty",
                date=due_text(start),
                start=clock_text(start),
                hours=self.hours.label(),
            )
        dispatcher.utter_message(json_message=HANDOFF_MARKER)
        # A fresh start after staff hand the conversation back.
        return [SlotSet(REJECTIONS_SLOT, None)]


class ActionHandoff(HandoffActionBase):
    """The citizen asked for a person (or complained): hand off."""

    def name(self) -> str:
        return "action_handoff"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[Event]:
        latest_intent = ((tracker.latest_message or {}).get("intent") or {}).get("name")
        reason = "complaint" if latest_intent == "complain_about_service" else "request"
        return await self.hand_off(dispatcher, tracker, reason)


class ActionFallback(HandoffActionBase):
    """A message the bot did not understand: ask to rephrase, or hand off the second in a row."""

    def name(self) -> str:
        return "action_fallback"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[Event]:
        if follows_a_fallback(tracker):
            return await self.hand_off(dispatcher, tracker, "fallback")
        dispatcher.utter_message(response="utter_default")
        return []


class ActionRejectAnswer(HandoffActionBase):
    """A "no" outside a form: a rejected answer is apologised for, the second one handed off.

    A "no" to "anything else?" (or before the bot said anything) only declines more help.
    """

    def name(self) -> str:
        return "action_reject_answer"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[Event]:
        answered_with = last_bot_response(tracker)
        if answered_with is None:
            dispatcher.utter_message(response="utter_anything_else")
            return []
        if answered_with in CLOSING_RESPONSES:
            dispatcher.utter_message(response="utter_goodbye")
            return []
        rejections = int(tracker.get_slot(REJECTIONS_SLOT) or 0) + 1
        if rejections >= REJECTIONS_BEFORE_HANDOFF:
            return await self.hand_off(dispatcher, tracker, "rejected")
        dispatcher.utter_message(response="utter_answer_rejected")
        return [SlotSet(REJECTIONS_SLOT, float(rejections))]
