"""回访: the satisfaction question after a case is 已办结, and the citizen's answer.

The app starts it by triggering the ``EXTERNAL_followup`` intent with the case number
through the engine's API; the answer, a button or free text, fills ``followup_form``.
"""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import entity_value, identity_and_conversation, latest_text
from crm_backend.services import followup

SKIP = "skip"


class ActionAskFollowup(Action):
    """Remembers which case the question is about; the form then asks it (utter_ask_rating)."""

    def name(self) -> str:
        return "action_ask_followup"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        if entity_value(tracker, "reminder"):
            dispatcher.utter_message(response="utter_followup_reminder")
        return [SlotSet("followup_case", entity_value(tracker, "case_number")), SlotSet("rating", None)]


class ValidateFollowupForm(FormValidationAction):
    """Reads a 1-5 rating from a button or from the citizen's own words; asks once more if it cannot."""

    def name(self) -> str:
        return "validate_followup_form"

    async def validate_rating(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            # Not an answer: the slot was cleared when the question was put (action_ask_followup),
            # and rasa_sdk validates every slot set since the citizen last spoke.
            return {"rating": None}
        rating = followup.rating_from_text(str(value))
        if rating is not None:
            return {"rating": str(rating)}
        asked_again = any(
            event.get("event") == "bot"
            and (event.get("metadata") or {}).get("utter_action") == "utter_rating_not_understood"
            for event in tracker.events_after_latest_restart()[-8:]
        )
        if asked_again:  # twice not understood: leave it for now; the reminder will ask again
            return {"rating": SKIP}
        dispatcher.utter_message(response="utter_rating_not_understood")
        return {"rating": None}


class ActionRecordRating(Action):
    """Stores the rating and reopens (1-2) or closes (3-5) the case."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def name(self) -> str:
        return "action_record_rating"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        events = [SlotSet("rating", None), SlotSet("followup_case", None)]
        raw = tracker.get_slot("rating") or latest_text(tracker)
        if raw == SKIP:
            dispatcher.utter_message(response="utter_rating_later")
            return events
        rating = followup.rating_from_text(str(raw))
        async with self.sessions.begin() as session:
            identity, _ = await identity_and_conversation(session, tracker)
            case = (
                await followup.case_awaiting_rating(session, identity.citizen_id, tracker.get_slot("followup_case"))
                if identity
                else None
            )
            if identity is None or case is None or rating is None:
                dispatcher.utter_message(response="utter_no_rating_pending")
                return events
            comment = _comment(latest_text(tracker))
            result = await followup.record_rating(session, case, rating, comment, channel=identity.channel)
        if result.reopened:
            dispatcher.utter_message(
                response="utter_rating_reopened", rating=result.rating, case_number=result.case_number
            )
        else:
            dispatcher.utter_message(response="utter_rating_thanks", rating=result.rating)
        return events


def _comment(text: str) -> str:
    """What the citizen wrote besides the score: nothing for a button or a bare 「4分」."""
    text = text.strip()
    if text.startswith("/") or text.rstrip("分星颗").strip().isdigit():
        return ""
    return text
