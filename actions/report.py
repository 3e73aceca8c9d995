"""Reporting a problem: starting the report form, validating its answers, cancelling."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import entity_value, latest_text, reset_slots, steered_letter
from actions.knowledge import CONSULT_SLOT
from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.location import LocationResult, surface_key
from crm_backend.dispatch.service import Dispatcher
from crm_backend.errors import CaseLimitReached, InvalidInput
from crm_backend.services.conversations import find_identity
from crm_backend.services.intake import check_daily_case_limit
from crm_backend.validation import normalise_mobile

logger = logging.getLogger(__name__)

REPORT_SLOTS = (
    "description",
    "location",
    "district",
    "district_candidates",
    "contact_phone",
    "category_choice",
    "category_requested",
    "report_confirmed",
    "duplicate_warned",
    "duplicate_override",
    "case_type_choice",
    "case_type_requested",
    CONSULT_SLOT,
)
# A consultation (咨询工单, 「登记咨询」 after a question no guide answers) is a report of this type:
# the question is its description and the place is optional (never asked; used if named).
CONSULTATION = "咨询"
PLACE_SLOTS = ("location", "district")
# Words that say "I want to report something" without saying what.
_FILLER = re.compile(
    r"我要|我想|想要|我们|要|想|帮我|帮忙|请问|你好|您好|在吗|一下|一个|这个|那个|问题|事情|情况|"
    r"投诉|反映|反应|举报|报修|报告|提交|工单|诉求|建议|麻烦|谢谢|hello|hi|[\s\W_]",
    re.IGNORECASE,
)
MIN_DESCRIPTION_CHARS = 4
MIN_LOCATION_CHARS = 2
# From this length an opening message is a letter (as `bot.letters.LETTER_MIN_CHARS` reads it):
# its place is read from the whole text with the gazetteer, not only from the NLU's entities.
LETTER_CHARS = 60


def with_district(location: str, district: str) -> str:
    """The location, prefixed with its district unless it already names it (in any width or spacing)."""
    compact = surface_key(location).replace(" ", "")
    return location if surface_key(district) in compact else f"{district}{location}"


def is_consultation(tracker: Tracker) -> bool:
    """Whether the report in progress is a consultation (its type chosen as 咨询)."""
    return tracker.get_slot("case_type_choice") == CONSULTATION


def substantive_description(text: str) -> str | None:
    """The text, if it says more than "I want to report a problem" (a pressed button's payload never does)."""
    text = text.strip()
    if text.startswith("/"):
        return None
    return text if len(_FILLER.sub("", text)) >= MIN_DESCRIPTION_CHARS else None


class ActionStartReport(Action):
    """Starts a fresh report, keeping whatever the opening message already told us.

    A 咨询 report (「登记咨询」, or a question letter no guide answers) starts from the question
    kept in `CONSULT_SLOT`, its place optional. A letter (`LETTER_CHARS` or more) is its own
    description, and the gazetteer reads its place from the whole text (as the dispatch preview
    does), so the form asks only what it lacks.
    A citizen who already filed today's limit of cases is told so here, before the form
    asks a single question, and the form is not opened (the filing checks again).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        *,
        daily_case_limit: int = 0,
        desk: Dispatcher | None = None,
    ) -> None:
        self.sessions = sessions
        self.daily_case_limit = daily_case_limit
        self.desk = desk

    def name(self) -> str:
        return "action_start_report"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        events = reset_slots(*REPORT_SLOTS)
        if await self._limit_reached(tracker):
            dispatcher.utter_message(response="utter_case_limit_reached")
            return [*events, FollowupAction("action_listen")]  # instead of the report form the rules start next
        intent = (tracker.latest_message or {}).get("intent", {}).get("name")
        if intent == "report_issue" and entity_value(tracker, "case_type") == CONSULTATION:
            return [*events, *(await self._consultation(tracker))]
        if intent == "ask_faq" and steered_letter(tracker) == "ask_faq":
            # A question letter no guide answers (`action_answer_question` hands over): no rule
            # follows an ask_faq turn with the form, so it is started here.
            return [*events, *(await self._consultation(tracker)), FollowupAction("report_form")]
        description = substantive_description(latest_text(tracker)) if intent == "report_issue" else None
        if description:
            events.append(SlotSet("description", description))
        district = entity_value(tracker, "district")
        address = entity_value(tracker, "address")
        if description and len(description) >= LETTER_CHARS and (found := await self._locate(description, district)):
            address = found.address or address
            if found.district and not found.ambiguous:
                district = found.district
        if district:
            events.append(SlotSet("district", district))
        if address:
            events.append(SlotSet("location", with_district(address, district) if district else address))
        return events

    async def _locate(self, text: str, district: str | None) -> LocationResult | None:
        """The place a text names, by the dispatch desk's gazetteer (off the event loop)."""
        return await asyncio.to_thread(self.desk.locate, text, district) if self.desk is not None else None

    async def _consultation(self, tracker: Tracker) -> list[dict[str, Any]]:
        """「登记咨询」: a 咨询 report whose description is the question no guide answered.

        The place is not asked; a district the question names routes it (else the category's
        city-level department answers). Without a kept question the form asks for it.
        """
        events = [SlotSet("case_type_choice", CONSULTATION)]
        question = str(tracker.get_slot(CONSULT_SLOT) or "").strip()
        if not question:
            return events
        events += [SlotSet(CONSULT_SLOT, question), SlotSet("description", question)]
        found = await self._locate(question, entity_value(tracker, "district"))
        if found is not None and found.district and not found.ambiguous:
            events.append(SlotSet("district", found.district))
            if found.address:
                events.append(SlotSet("location", with_district(found.address, found.district)))
        return events

    async def _limit_reached(self, tracker: Tracker) -> bool:
        if self.sessions is None or self.daily_case_limit <= 0:
            return False
        async with self.sessions() as session:
            identity = await find_identity(session, tracker.sender_id)
            if identity is None:
                return False
            try:
                await check_daily_case_limit(session, identity.citizen_id, self.daily_case_limit)
            except CaseLimitReached:
                logger.info("daily case limit reached for sender %s: no report started", tracker.sender_id)
                return True
        return False


class ValidateReportForm(FormValidationAction):
    """Checks each answer of the report form and says why one is refused.

    Asks for the district only when the place named does not settle it, and for the
    category only when the citizen wants to correct it.
    """

    def __init__(self, desk: Dispatcher) -> None:
        self.desk = desk

    def name(self) -> str:
        return "validate_report_form"

    async def required_slots(
        self, domain_slots: list[str], dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> list[str]:
        # A slot is validated only while it is listed, so district and the two choices stay
        # listed once they are in play, even after they are filled.
        slots = [slot for slot in domain_slots if slot not in ("district", "category_choice", "case_type_choice")]
        if tracker.get_slot("location"):
            slots.insert(slots.index("location") + 1, "district")
        elif is_consultation(tracker):  # a consultation's place is optional: not asked
            slots = [slot for slot in slots if slot not in PLACE_SLOTS]
        if tracker.get_slot("category_requested") or tracker.get_slot("category_choice"):
            slots.insert(slots.index("report_confirmed"), "category_choice")
        # 「更正类型」 without a type: ask which (action_ask_case_type_choice).
        if tracker.get_slot("case_type_requested") or tracker.get_slot("case_type_choice"):
            slots.insert(slots.index("report_confirmed"), "case_type_choice")
        return slots

    async def validate_description(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:  # cleared by action_start_report, nothing to check
            return {}
        description = substantive_description(str(value))
        if description is None:
            dispatcher.utter_message(response="utter_description_too_short")
        return {"description": description}

    async def validate_location(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            return {}
        location = str(value).strip()[:200]
        if len(re.sub(r"[\s\W_]", "", location)) < MIN_LOCATION_CHARS:
            dispatcher.utter_message(response="utter_location_too_short")
            return {"location": None}
        found = self.desk.locate(f"{location} {tracker.get_slot('description') or ''}", tracker.get_slot("district"))
        if found.district and not found.ambiguous:
            return {"location": with_district(location, found.district), "district": found.district}
        return {"location": location, "district": None, "district_candidates": found.candidates or self.desk.districts}

    async def validate_district(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            return {}
        gazetteer = self.desk.locator.gazetteer
        district = gazetteer.canonical_district(str(value))
        if district is not None and gazetteer.districts[district].is_city:
            district = None  # a city is not a district: its districts are the candidates
        if district is None:
            if tracker.get_slot("requested_slot") == "district":
                dispatcher.utter_message(response="utter_district_invalid")
            return {"district": None}
        location = tracker.get_slot("location")
        return {"district": district, "location": with_district(location, district) if location else None}

    async def validate_contact_phone(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            return {}
        try:
            return {"contact_phone": normalise_mobile(str(value))}
        except InvalidInput as error:
            dispatcher.utter_message(response=f"utter_{error.reason}")
            return {"contact_phone": None}

    async def validate_category_choice(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            return {}
        if str(value) not in CATEGORIES:
            dispatcher.utter_message(response="utter_category_invalid")
            return {"category_choice": None}
        return {"category_choice": str(value), "category_requested": False}

    async def validate_case_type_choice(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            return {}
        if str(value) not in CASE_TYPES:
            dispatcher.utter_message(response="utter_case_type_invalid")
            return {"case_type_choice": None}
        return {"case_type_choice": str(value), "case_type_requested": False}

    async def validate_report_confirmed(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            return {}
        intent = (tracker.latest_message or {}).get("intent", {}).get("name")
        if (
            intent in ("correct_category", "correct_case_type")
            and (kind := entity_value(tracker, "case_type")) in CASE_TYPES
        ):
            # A type button (/correct_case_type{"case_type": "投诉"}, once the domain offers
            # one): the citizen's type replaces the recognised one; the category stays.
            return {"case_type_choice": kind, "report_confirmed": None}
        if intent == "correct_case_type":  # 「更正类型」: ask which type (action_ask_case_type_choice)
            return {"case_type_requested": True, "case_type_choice": None, "report_confirmed": None}
        if intent == "correct_category":
            chosen = entity_value(tracker, "category")
            if chosen in CATEGORIES:
                return {"category_choice": chosen, "category_requested": False, "report_confirmed": None}
            return {"category_requested": True, "category_choice": None, "report_confirmed": None}
        if intent == "correct_location":
            return {"location": None, "district": None, "report_confirmed": None}
        warned = tracker.get_slot("duplicate_warned")
        if value == "yes" and warned:
            # 「仍然提交」 after the duplicate warning: file beside the open case, but only after
            # the citizen has seen and confirmed where the new case goes, like any report.
            return {"report_confirmed": None, "duplicate_override": warned, "duplicate_warned": None}
        if value in ("yes", "no"):
            return {"report_confirmed": value}
        # Free text at the read-back: a new phone number corrects the old one.
        try:
            phone = normalise_mobile(str(value))
        except InvalidInput:
            dispatcher.utter_message(response="utter_confirm_please")
            return {"report_confirmed": None}
        return {"contact_phone": phone, "report_confirmed": None}


class ActionCancelRequest(Action):
    """Confirms that the report or query the citizen abandoned was dropped."""

    def name(self) -> str:
        return "action_cancel_request"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        cancelled_form = next(
            (
                event.get("name")
                for event in reversed(tracker.events)
                if event.get("event") == "active_loop" and event.get("name")
            ),
            None,
        )
        if cancelled_form == "progress_form":
            dispatcher.utter_message(response="utter_progress_cancelled")
            return reset_slots("case_number", "phone_last4")
        dispatcher.utter_message(response="utter_report_cancelled")
        return reset_slots(*REPORT_SLOTS)
