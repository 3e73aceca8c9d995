"""Answering "where is my case?": the progress form and the lookup."""

from __future__ import annotations

import json
import logging
from typing import Any

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import ProofWatcher, StatusWords, entity_value, latest_text, reset_slots
from crm_backend.errors import CaseProofLocked, LookupThrottled
from crm_backend.models import ServiceCase
from crm_backend.services.conversations import find_identity
from crm_backend.services.intake import CHINA_TZ
from crm_backend.services.lookup import case_filed_by, lookup_progress
from crm_backend.validation import parse_case_number, parse_phone_last4

logger = logging.getLogger(__name__)
RECENT_CASES_OFFERED = 3


class ActionStartProgress(Action):
    """Starts a fresh progress query, keeping a case number the opening message gave."""

    def name(self) -> str:
        return "action_start_progress"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        case_number = parse_case_number(latest_text(tracker)) or parse_case_number(
            entity_value(tracker, "case_number") or ""
        )
        return [*reset_slots("phone_last4"), SlotSet("case_number", case_number)]


class ValidateProgressForm(FormValidationAction):
    """Asks for the phone's last four digits only when this citizen did not file the case."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def name(self) -> str:
        return "validate_progress_form"

    async def required_slots(
        self,
        domain_slots: list[str],
        dispatcher: CollectingDispatcher,
        tracker: Tracker,
        domain: DomainDict,
    ) -> list[str]:
        case_number = tracker.get_slot("case_number")
        if case_number and parse_case_number(str(case_number)):
            async with self.sessions() as session:
                identity = await find_identity(session, tracker.sender_id)
                if await case_filed_by(session, str(case_number), identity):
                    return [slot for slot in domain_slots if slot != "phone_last4"]
        return domain_slots

    async def validate_case_number(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:  # cleared after the last query, nothing to check
            return {}
        case_number = parse_case_number(str(value))
        if case_number is None:
            dispatcher.utter_message(response="utter_case_number_invalid")
        return {"case_number": case_number}

    async def validate_phone_last4(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> dict[str, Any]:
        if value is None:
            return {}
        digits = parse_phone_last4(str(value))
        if digits is None:
            dispatcher.utter_message(response="utter_phone_last4_invalid")
        return {"phone_last4": digits}


class ActionAskCaseNumber(Action):
    """Asks for a case number, offering the citizen's own recent cases as buttons."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def name(self) -> str:
        return "action_ask_case_number"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            identity = await find_identity(session, tracker.sender_id)
            numbers: list[str] = []
            if identity is not None:
                rows = await session.scalars(
                    select(ServiceCase.case_number)
                    .where(ServiceCase.citizen_id == identity.citizen_id)
                    .order_by(ServiceCase.id.desc())
                    .limit(RECENT_CASES_OFFERED)
                )
                numbers = list(rows.all())
        if not numbers:
            dispatcher.utter_message(response="utter_ask_case_number")
            return []
        buttons = [
            {"title": number, "payload": "/give_case_number" + json.dumps({"case_number": number})}
            for number in numbers
        ]
        dispatcher.utter_message(response="utter_ask_case_number_choices", buttons=buttons)
        return []


class ActionCheckProgress(Action):
    """Looks the case up and tells the citizen where it stands, or the same neutral refusal.

    A failed proof is told to the `watcher` in its own transaction (it may have locked the case,
    whose citizen is then alerted) and delivered after the commit.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], watcher: ProofWatcher, status_words: StatusWords
    ) -> None:
        self.sessions = sessions
        self.watcher = watcher
        self.status_words = status_words

    def name(self) -> str:
        return "action_check_progress"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        events = reset_slots("case_number", "phone_last4")
        case_number = tracker.get_slot("case_number")
        if not case_number:
            dispatcher.utter_message(response="utter_case_lookup_failed")
            return events
        notice = None
        try:
            async with self.sessions.begin() as session:
                identity = await find_identity(session, tracker.sender_id)
                outcome = await lookup_progress(
                    session,
                    sender_key=tracker.sender_id,
                    case_number=str(case_number),
                    phone_last4=tracker.get_slot("phone_last4"),
                    identity=identity,
                )
                if outcome.failure is not None:
                    notice = await self.watcher.record(session, outcome.failure)
        except CaseProofLocked:
            logger.warning("progress lookup of a locked case number from sender %s", tracker.sender_id)
            dispatcher.utter_message(response="utter_case_proof_locked")
            return events
        except LookupThrottled:
            logger.warning("progress lookups throttled for sender %s", tracker.sender_id)
            dispatcher.utter_message(response="utter_lookup_throttled")
            return events
        if notice is not None:
            self.watcher.deliver(notice)
        progress = outcome.progress
        if progress is None:
            dispatcher.utter_message(response="utter_case_lookup_failed")
            return events
        status = self.status_words(progress.status)
        department = progress.department or "待分派"
        updated_at = progress.updated_at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M")
        if progress.result is not None:
            dispatcher.utter_message(
                response="utter_case_progress_result",
                case_number=progress.case_number,
                status=status,
                department=department,
                result=progress.result,
                updated_at=updated_at,
            )
        else:
            dispatcher.utter_message(
                response="utter_case_progress",
                case_number=progress.case_number,
                status=status,
                department=department,
                latest=progress.latest_reply or status,
                updated_at=updated_at,
            )
        return events
