"""Handing the conversation to a member of staff."""

from __future__ import annotations

from typing import Any

from rasa_sdk import Action, Tracker
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import HANDOFF_MARKER, identity_and_conversation
from crm_backend.services.handoff import request_handoff


class ActionHandoff(Action):
    """Marks the conversation as waiting for staff; the app keeps the bot silent from then on."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def name(self) -> str:
        return "action_handoff"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> list[dict[str, Any]]:
        async with self.sessions.begin() as session:
            _identity, conversation = await identity_and_conversation(session, tracker)
            if conversation is not None:
                await request_handoff(session, conversation)
        dispatcher.utter_message(response="utter_handoff")
        dispatcher.utter_message(json_message=HANDOFF_MARKER)
        return []
