"""Reporting a problem: the report form, its validation, filing the case, cancelling."""

from __future__ import annotations

import logging
import re
from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import (
    entity_value,
    identity_and_conversation,
    latest_text,
    reset_slots,
)
from crm_backend.errors import CrmError, InvalidInput
from crm_backend.services.intake import Report, file_case
from crm_backend.validation import normalise_mobile

logger = logging.getLogger(__name__)

REPORT_SLOTS = ("description", "location", "district", "contact_phone", "report_confirmed")
# Words that say "I want to report something" without saying what.
_FILLER = re.compile(
    r"我要|我想|想要|我们|要|想|帮我|帮忙|请问|你好|您好|在吗|一下|一个|这个|那个|问题|事情|情况|"
    r"投诉|反映|反应|举报|报修|报告|提交|工单|诉求|建议|麻烦|谢谢|hello|hi|[\s\W_]",
    re.IGNORECASE,
)
MIN_DESCRIPTION_CHARS = 4
MIN_LOCATION_CHARS = 2


def substantive_description(text: str) -> str | None:
    """The text, if it says more than "I want to report a problem"."""
    text = text.strip()
    return text if len(_FILLER.sub("", text)) >= MIN_DESCRIPTION_CHARS else None


class ActionStartReport(Action):
    """Starts a fresh report, keeping whatever the opening message already told us."""

    def name(self) -> str:
        return "action_start_report"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        events = reset_slots(*REPORT_SLOTS)
        intent = (tracker.latest_message or {}).get("intent", {}).get("name")
        if intent == "report_issue" and (description := substantive_description(latest_text(tracker))):
            events.append(SlotSet("description", description))
        district = entity_value(tracker, "district")
        address = entity_value(tracker, "address")
        if district:
            events.append(SlotSet("district", district))
        if address:
            location = address if not district or district in address else f"{district}{address}"
            events.append(SlotSet("location", location))
        return events


class ValidateReportForm(FormValidationAction):
    """Checks each answer of the report form and says why one is refused."""

    def name(self) -> str:
        return "validate_report_form"

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
        location = str(value).strip()
        if len(re.sub(r"[\s\W_]", "", location)) < MIN_LOCATION_CHARS:
            dispatcher.utter_message(response="utter_location_too_short")
            return {"location": None}
        district = tracker.get_slot("district")
        if district and district not in location:
            location = f"{district}{location}"
        return {"location": location[:200]}

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

    async def validate_report_confirmed(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            return {}
        if value in ("yes", "no"):
            return {"report_confirmed": value}
        # Free text at the read-back: a new phone number corrects the old one.
        try:
            phone = normalise_mobile(str(value or ""))
        except InvalidInput:
            dispatcher.utter_message(response="utter_confirm_please")
            return {"report_confirmed": None}
        return {"contact_phone": phone, "report_confirmed": None}


class ActionSubmitReport(Action):
    """Files the confirmed report as a case and tells the citizen its number."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def name(self) -> str:
        return "action_submit_report"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        events = reset_slots(*REPORT_SLOTS)
        if tracker.get_slot("report_confirmed") != "yes":
            dispatcher.utter_message(response="utter_report_cancelled")
            return events
        report = Report(
            description=tracker.get_slot("description") or "",
            location=tracker.get_slot("location") or "",
            contact_phone=tracker.get_slot("contact_phone") or "",
            district=tracker.get_slot("district"),
        )
        try:
            async with self.sessions.begin() as session:
                identity, conversation = await identity_and_conversation(session, tracker)
                if identity is None:
                    raise CrmError(f"unknown sender {tracker.sender_id!r}")
                case = await file_case(
                    session, identity, report, conversation_id=conversation.id if conversation else None
                )
        except CrmError:
            logger.exception("filing a case failed for sender %s", tracker.sender_id)
            dispatcher.utter_message(response="utter_case_failed")
            return events
        dispatcher.utter_message(response="utter_case_created", case_number=case.case_number)
        return [*events, SlotSet("filed_case_number", case.case_number)]


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
