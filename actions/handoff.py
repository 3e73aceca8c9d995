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
from actions.knowledge import FEEDBACK_QUESTIONS, KnowledgeAnswers, off_topic_reply, record_answer_feedback
from actions.turns import follows_a_fallback, last_bot_response
from crm_backend.duty import DutyHours, handoff_response
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
        response, slots = handoff_response(self.clock(), self.hours)
        dispatcher.utter_message(response=response, **slots)
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
    """A message the bot did not understand: ask to rephrase, or hand off the second in a row.

    Before either, the knowledge base gets a look: a clear question (or a follow-up on the
    entry just answered) the NLU could not place is answered like any other. A message whose
    best guess was off-topic or small talk gets that reply (and is no misunderstanding to hand
    off for).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hours: DutyHours | None = None,
        clock: Callable[[], datetime] = utcnow,
        answers: KnowledgeAnswers | None = None,
    ) -> None:
        super().__init__(sessions, hours, clock)
        self.answers = answers

    def name(self) -> str:
        return "action_fallback"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[Event]:
        if self.answers is not None and (answered := await self.answers.answer_if_clear(dispatcher, tracker, domain)):
            return answered
        if off_topic := off_topic_reply(tracker, runner_up=False):  # unsure, but its best guess is off-topic
            dispatcher.utter_message(response=off_topic)
            return []
        if follows_a_fallback(tracker):
            return await self.hand_off(dispatcher, tracker, "fallback")
        dispatcher.utter_message(response="utter_default")
        return []


class ActionRejectAnswer(HandoffActionBase):
    """A "no" outside a form: a rejected answer is apologised for, the second one handed off.

    A "no" to "这个回答有帮助吗？" is also counted against the entry. A "no" to "anything
    else?" (or before the bot said anything) only declines more help.
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
        from_knowledge = answered_with in FEEDBACK_QUESTIONS
        if from_knowledge:
            await record_answer_feedback(self.sessions, tracker, helpful=False)
        rejections = int(tracker.get_slot(REJECTIONS_SLOT) or 0) + 1
        if rejections >= REJECTIONS_BEFORE_HANDOFF:
            return await self.hand_off(dispatcher, tracker, "rejected")
        dispatcher.utter_message(response="utter_kb_not_helpful" if from_knowledge else "utter_answer_rejected")
        return [SlotSet(REJECTIONS_SLOT, float(rejections))]
