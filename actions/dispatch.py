"""The end of the report form: where the case will go, the read-back, and filing it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import identity_and_conversation, reset_slots
from actions.report import REPORT_SLOTS, is_consultation
from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.dispatch.service import Dispatcher, Preview
from crm_backend.errors import CaseLimitReached, CrmError
from crm_backend.services.intake import Report, file_report, filing_key

logger = logging.getLogger(__name__)

CONFIRM_BUTTONS = [
    {"title": "确认提交", "payload": "/affirm"},
    {"title": "更正类别", "payload": "/correct_category"},
    {"title": "更正类型", "payload": "/correct_case_type"},
    {"title": "更正地点", "payload": "/correct_location"},
    {"title": "取消", "payload": "/deny"},
]
# A consultation has no place to correct (it is optional and never asked).
CONSULTATION_CONFIRM_BUTTONS = [button for button in CONFIRM_BUTTONS if button["payload"] != "/correct_location"]
# The read-back quotes a letter's first characters; the case keeps the whole description.
READBACK_DESCRIPTION_CHARS = 200
DUPLICATE_BUTTONS = [
    {"title": "仍然提交", "payload": "/affirm"},
    {"title": "不用了", "payload": "/deny"},
]


def due_text(due: datetime | None) -> str:
    """A deadline as citizens read it: 11月30日."""
    if due is None:
        return ""
    local = due.astimezone(CHINA_TZ)
    return f"{local.month}月{local.day}日"


def readback_description(description: str) -> str:
    """A description as the read-back quotes it, on one line: whole, or its first
    `READBACK_DESCRIPTION_CHARS` characters and 「…」."""
    description = " ".join(description.split())
    if len(description) <= READBACK_DESCRIPTION_CHARS:
        return description
    return description[:READBACK_DESCRIPTION_CHARS] + "…"


def choice_buttons(intent: str, entity: str, values: Sequence[str]) -> list[dict[str, str]]:
    """One button per value, each sending `intent` with the value as `entity`."""
    return [
        {"title": value, "payload": f"/{intent}" + json.dumps({entity: value}, ensure_ascii=False)} for value in values
    ]


def report_from(tracker: Tracker) -> Report:
    return Report(
        description=tracker.get_slot("description") or "",
        location=tracker.get_slot("location") or "",
        contact_phone=tracker.get_slot("contact_phone") or "",
        district=tracker.get_slot("district"),
    )


async def preview_report(desk: Dispatcher, session: AsyncSession, tracker: Tracker) -> Preview:
    report = report_from(tracker)
    return await desk.preview(
        session,
        description=report.description,
        location_text=report.location,
        district_hint=report.district,
        category_override=chosen if (chosen := tracker.get_slot("category_choice")) in CATEGORIES else None,
        # The citizen's correction of the type (「更正类型」 and its buttons).
        case_type_override=kind if (kind := tracker.get_slot("case_type_choice")) in CASE_TYPES else None,
    )


class ActionAskDistrict(Action):
    """Asks which district, offering the candidates as buttons."""

    def __init__(self, desk: Dispatcher) -> None:
        self.desk = desk

    def name(self) -> str:
        return "action_ask_district"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        candidates = tracker.get_slot("district_candidates") or self.desk.districts
        dispatcher.utter_message(
            response="utter_choose_district", buttons=choice_buttons("give_location", "district", candidates[:12])
        )
        return []


class ActionAskCategoryChoice(Action):
    """Offers the first-level categories as buttons."""

    def name(self) -> str:
        return "action_ask_category_choice"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        dispatcher.utter_message(
            response="utter_choose_category", buttons=choice_buttons("correct_category", "category", CATEGORIES)
        )
        return []


class ActionAskCaseTypeChoice(Action):
    """Offers the six 12345 types as buttons (「更正类型」)."""

    def name(self) -> str:
        return "action_ask_case_type_choice"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        dispatcher.utter_message(
            response="utter_choose_case_type", buttons=choice_buttons("correct_case_type", "case_type", CASE_TYPES)
        )
        return []


class ActionAskReportConfirmed(Action):
    """Reads the report back with where it will go and by when, or with the open case it repeats."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], desk: Dispatcher) -> None:
        self.sessions = sessions
        self.desk = desk

    def name(self) -> str:
        return "action_ask_report_confirmed"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            preview = await preview_report(self.desk, session, tracker)
        report = report_from(tracker)
        consultation = is_consultation(tracker)
        dispatcher.utter_message(
            response="utter_consultation_summary" if consultation else "utter_report_summary",
            description=readback_description(report.description),
            location=report.location,
            contact_phone=report.contact_phone,
        )
        plan = preview.plan
        duplicate = preview.duplicate
        if duplicate is not None and tracker.get_slot("duplicate_override") != duplicate.case_number:
            # 「仍然提交」 is read by validate_report_confirmed as "file beside this case": the
            # form then asks again and the citizen confirms the category and department below.
            dispatcher.utter_message(
                response="utter_duplicate_found", case_number=duplicate.case_number, buttons=DUPLICATE_BUTTONS
            )
            return [SlotSet("duplicate_warned", duplicate.case_number)]
        if consultation:
            # Which department answers, by when (the category's deadline; same day if urgent).
            dispatcher.utter_message(
                response="utter_consultation_preview_manual" if plan.queued else "utter_consultation_preview",
                suggestions="、".join(plan.suggestions),
                category=plan.category,
                department=plan.department_name,
                due="今天" if plan.urgent else due_text(plan.due_at),
                buttons=CONSULTATION_CONFIRM_BUTTONS,
            )
        elif plan.queued:
            dispatcher.utter_message(
                response="utter_dispatch_preview_manual",
                suggestions="、".join(plan.suggestions),
                case_type=preview.case_type or "",
                buttons=CONFIRM_BUTTONS,
            )
        else:
            dispatcher.utter_message(
                response="utter_dispatch_preview_urgent" if plan.urgent else "utter_dispatch_preview",
                category=plan.category,
                department=plan.department_name,
                due=due_text(plan.due_at),
                case_type=preview.case_type or "",
                buttons=CONFIRM_BUTTONS,
            )
        return [SlotSet("duplicate_warned", None)] if tracker.get_slot("duplicate_warned") else []


class ActionSubmitReport(Action):
    """Files the confirmed report as a case, routes it, and tells the citizen where it went.

    Files nothing past the citizen's daily case limit (0: no limit) and says so.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], desk: Dispatcher, *, daily_case_limit: int = 0
    ) -> None:
        self.sessions = sessions
        self.desk = desk
        self.daily_case_limit = daily_case_limit

    def name(self) -> str:
        return "action_submit_report"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        events = reset_slots(*REPORT_SLOTS)
        try:
            async with self.sessions.begin() as session:
                preview = await preview_report(self.desk, session, tracker)
                if tracker.get_slot("report_confirmed") != "yes":
                    if preview.duplicate is not None:
                        dispatcher.utter_message(
                            response="utter_duplicate_not_filed", case_number=preview.duplicate.case_number
                        )
                    else:
                        dispatcher.utter_message(response="utter_report_cancelled")
                    return events
                identity, conversation = await identity_and_conversation(session, tracker)
                if identity is None:
                    raise CrmError(f"unknown sender {tracker.sender_id!r}")
                case = await file_report(
                    session,
                    self.desk,
                    identity,
                    report_from(tracker),
                    preview,
                    conversation_id=conversation.id if conversation else None,
                    daily_limit=self.daily_case_limit,
                    filing_key=filing_key(tracker.sender_id, tracker.latest_message),
                )
        except CaseLimitReached as error:
            logger.info("not filed for sender %s: %s", tracker.sender_id, error)
            dispatcher.utter_message(response="utter_case_limit_reached")
            return events
        except CrmError:
            logger.exception("filing a case failed for sender %s", tracker.sender_id)
            dispatcher.utter_message(response="utter_case_failed")
            return events
        consultation = is_consultation(tracker)
        if preview.plan.queued:
            dispatcher.utter_message(
                response="utter_consultation_created_queued" if consultation else "utter_case_created_queued",
                case_number=case.case_number,
            )
        else:
            dispatcher.utter_message(
                response="utter_consultation_created" if consultation else "utter_case_created_routed",
                case_number=case.case_number,
                department=preview.plan.department_name,
                due="今天" if preview.plan.urgent else due_text(preview.plan.due_at),
            )
        return [*events, SlotSet("filed_case_number", case.case_number)]
