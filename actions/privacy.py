"""「我的个人信息」 and the requests that follow it: what is held (masked), a copy, an erasure.

Thin: `crm_backend.services.privacy` does the work. The periods the citizen is told come from the
app's retention settings, the same the daily retention job enforces.
"""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import identity_and_conversation
from crm_backend.services import privacy
from crm_backend.settings import RetentionSettings

MAX_CASES_NAMED = 5


class ActionMyPersonalData(Action):
    """我的个人信息: what is held about this citizen, masked, and the buttons for a copy or erasure."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], retention: RetentionSettings) -> None:
        self.sessions = sessions
        self.retention = retention

    def name(self) -> str:
        return "action_my_personal_data"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        async with self.sessions() as session:
            identity, _ = await identity_and_conversation(session, tracker)
            held = await privacy.held_data(session, identity.citizen_id) if identity else None
        if held is None:
            dispatcher.utter_message(response="utter_default")
            return []
        named = "、".join(held.case_numbers[-MAX_CASES_NAMED:])
        if len(held.case_numbers) > MAX_CASES_NAMED:
            named += f"等{len(held.case_numbers)}件"
        dispatcher.utter_message(
            response="utter_my_data",
            phone=held.phone or "未留存",
            channels="、".join(held.channels) or "无",
            cases=f"{named}（未办结{held.open_cases}件）" if held.case_numbers else "无",
            conversations=held.conversations,
            messages=held.messages,
            notices="开启" if held.notices_enabled else "已关闭",
            **self.retention.stated(),
        )
        return []


class ActionRequestPrivacy(Action):
    """A confirmed erasure, or a copy: filed once for staff (asking again is the same request)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], kind: str) -> None:
        self.sessions = sessions
        self.kind = kind

    def name(self) -> str:
        return "action_request_erasure" if self.kind == privacy.ERASURE else "action_request_data_copy"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        async with self.sessions.begin() as session:
            identity, _ = await identity_and_conversation(session, tracker)
            if identity is None:
                dispatcher.utter_message(response="utter_default")
                return []
            _, new = await privacy.file_request(session, identity, self.kind)
        word = "erasure" if self.kind == privacy.ERASURE else "copy"
        dispatcher.utter_message(response=f"utter_{word}_requested" if new else f"utter_{word}_already_requested")
        return []
