"""Delivers what staff say to the citizen's open web chat, and logs it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.webchat import serialise_outgoing
from bot.hub import ConversationHub
from bot.responses import Responses
from crm_backend.errors import NotFound
from crm_backend.models import Conversation
from crm_backend.services.conversations import OutgoingMessage, log_outgoing


class ChannelNotifier:
    """The API's way to the channels (web chat today; Telegram when it lands)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], hub: ConversationHub, responses: Responses) -> None:
        self._sessions = sessions
        self._hub = hub
        self._responses = responses

    async def staff_reply(self, conversation_id: int, text: str, staff_name: str) -> bool:
        reply = OutgoingMessage(text=text, sender_kind="staff", sender_name=staff_name)
        async with self._sessions.begin() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound("conversation")
            log_outgoing(session, conversation, [reply])
        frame = {"type": "reply", "in_reply_to": None, "messages": [serialise_outgoing(reply)]}
        return await self._hub.publish(conversation_id, frame) > 0

    async def handoff_ended(self, conversation_id: int, *, closed: bool = False) -> None:
        """Tell the citizen staff are done: back to the bot, or the conversation closed."""
        notice = OutgoingMessage(
            self._responses.text("utter_handoff_closed" if closed else "utter_handoff_released"), sender_kind="system"
        )
        async with self._sessions.begin() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound("conversation")
            log_outgoing(session, conversation, [notice])
        await self._hub.publish(conversation_id, {"type": "handoff", "active": False})
        await self._hub.publish(
            conversation_id, {"type": "reply", "in_reply_to": None, "messages": [serialise_outgoing(notice)]}
        )
