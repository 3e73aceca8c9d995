"""One citizen across channels: their cases, linking another channel, and notices on or off."""

from __future__ import annotations

import logging
import re
from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import ProofWatcher, StatusWords, entity_value, identity_and_conversation, latest_text
from crm_backend.errors import CaseProofLocked, LookupThrottled
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import Citizen
from crm_backend.services import linking
from crm_backend.validation import parse_case_number, parse_link_code

logger = logging.getLogger(__name__)

LAST_FOUR = re.compile(r"(?:后四位|尾号|后4位)\D{0,3}(\d{4})(?!\d)")
MAX_LISTED = 10


class ActionListMyCases(Action):
    """我的工单: the citizen's cases from every linked channel."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], status_words: StatusWords) -> None:
        self.sessions = sessions
        self.status_words = status_words

    def name(self) -> str:
        return "action_list_my_cases"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            identity, _ = await identity_and_conversation(session, tracker)
            cases = await linking.citizen_cases(session, identity.citizen_id, MAX_LISTED) if identity else []
        if not cases:
            dispatcher.utter_message(response="utter_my_cases_none")
            return []
        lines = [
            f"• {case.case_number} {self.status_words(CaseStatus(case.status))}"
            + (f" · {case.department}" if case.department else "")
            + f" · {case.description[:20]}{'…' if len(case.description) > 20 else ''}"
            for case in cases
        ]
        dispatcher.utter_message(response="utter_my_cases", cases="\n".join(lines))
        return []


class ActionLinkAccount(Action):
    """绑定账号: with a six-digit code (or a case number and the phone's last four digits)
    this channel joins the citizen who was shown it; without, this channel gets a code.

    A failed attempt is told to the `watcher` in its own transaction, delivered after the commit."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], watcher: ProofWatcher) -> None:
        self.sessions = sessions
        self.watcher = watcher

    def name(self) -> str:
        return "action_link_account"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        text = latest_text(tracker)
        case_number = parse_case_number(text)
        last_four = LAST_FOUR.search(text)
        code = None if case_number else parse_link_code(entity_value(tracker, "link_code") or text)
        notice = None
        async with self.sessions.begin() as session:
            identity, _ = await identity_and_conversation(session, tracker)
            if identity is None:
                dispatcher.utter_message(response="utter_link_invalid")
                return []
            if not code and not (case_number and last_four):
                issued = await linking.issue_code(session, identity)
                dispatcher.utter_message(response="utter_link_code", code=issued.code)
                return []
            try:  # inside the transaction, so a failed attempt is recorded for the throttle
                if code:
                    await linking.redeem_code(session, identity, code)
                else:
                    assert case_number is not None and last_four is not None
                    await linking.link_by_case(session, identity, case_number, last_four.group(1))
                outcome = "utter_link_done"
            except linking.LinkRefused as refused:
                outcome = "utter_link_same" if refused.reason == "same_citizen" else "utter_link_invalid"
                if refused.failure is not None:
                    notice = await self.watcher.record(session, refused.failure)
            except CaseProofLocked:
                logger.warning("link to a locked case number from sender %s", tracker.sender_id)
                outcome = "utter_case_proof_locked"
            except LookupThrottled:
                logger.warning("link attempts throttled for sender %s", tracker.sender_id)
                outcome = "utter_lookup_throttled"
        if notice is not None:
            self.watcher.deliver(notice)
        dispatcher.utter_message(response=outcome)
        return []


class ActionSetNotices(Action):
    """不要再通知我 / 恢复通知: whether staff's progress notices reach this citizen."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def name(self) -> str:
        return "action_set_notices"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        enable = ((tracker.latest_message or {}).get("intent") or {}).get("name") == "resume_notices"
        async with self.sessions.begin() as session:
            identity, _ = await identity_and_conversation(session, tracker)
            citizen = await session.get(Citizen, identity.citizen_id) if identity else None
            if citizen is not None:
                citizen.notices_enabled = enable
        dispatcher.utter_message(response="utter_notices_on" if enable else "utter_notices_off")
        return []
