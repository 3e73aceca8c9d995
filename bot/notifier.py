"""Delivers what staff say to the citizen's channel, and logs it.

Web chat: to the open page at once (otherwise the citizen sees it on their next visit, from the
log). Telegram: as a Telegram message, sent in the background with retries and the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.telegram_delivery import TelegramDelivery
from bot.channels.webchat import serialise_outgoing
from bot.hub import ConversationHub
from bot.responses import Responses
from crm_backend.errors import NotFound
from crm_backend.models import ChannelIdentity, Conversation
from crm_backend.services.conversations import OutgoingMessage, current_conversation, log_outgoing

TELEGRAM = "telegram"


@dataclass(frozen=True)
class Delivery:
    """Where a logged message goes: the conversation (web chat) and the channel's own address."""

    conversation_id: int
    channel: str
    chat_id: str


class ChannelNotifier:
    """The API's and the console's way to the channels."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hub: ConversationHub,
        responses: Responses,
        telegram: TelegramDelivery | None = None,
    ) -> None:
        self._sessions = sessions
        self._hub = hub
        self._responses = responses
        self._telegram = telegram

    async def staff_reply(self, conversation_id: int, text: str, staff_name: str) -> bool:
        """Log and deliver a staff reply; True if it reached the citizen (or is on its way to Telegram)."""
        reply = OutgoingMessage(text=text, sender_kind="staff", sender_name=staff_name)
        telegram_chat = await self._log(conversation_id, reply)
        if telegram_chat is not None:
            assert self._telegram is not None
            self._telegram.submit(telegram_chat, [reply])
            return True
        frame = {"type": "reply", "in_reply_to": None, "messages": [serialise_outgoing(reply)]}
        return await self._hub.publish(conversation_id, frame) > 0

    async def handoff_ended(self, conversation_id: int, *, closed: bool = False) -> None:
        """Tell the citizen staff are done: back to the bot, or the conversation closed."""
        notice = OutgoingMessage(
            self._responses.text("utter_handoff_closed" if closed else "utter_handoff_released"), sender_kind="system"
        )
        telegram_chat = await self._log(conversation_id, notice)
        if telegram_chat is not None:
            assert self._telegram is not None
            self._telegram.submit(telegram_chat, [notice])
            return
        await self._hub.publish(conversation_id, {"type": "handoff", "active": False})
        await self._hub.publish(
            conversation_id, {"type": "reply", "in_reply_to": None, "messages": [serialise_outgoing(notice)]}
        )

    async def push(self, delivery: Delivery, messages: list[OutgoingMessage]) -> bool:
        """Send messages already logged: live to an open web chat, or to Telegram in the background."""
        if delivery.channel == TELEGRAM and self._telegram is not None:
            self._telegram.submit(delivery.chat_id, messages)
            return True
        frame = {"type": "reply", "in_reply_to": None, "messages": [serialise_outgoing(m) for m in messages]}
        return await self._hub.publish(delivery.conversation_id, frame) > 0

    async def notify_identity(self, identity_id: int, messages: list[OutgoingMessage]) -> bool:
        """Log messages on the identity's current conversation and deliver them on its channel.

        Web chat: live to an open page, else seen on the next visit (the page restores the
        conversation). Telegram: sent in the background. Other channels have no push: the
        log keeps them. True if delivered live or on its way.
        """
        async with self._sessions.begin() as session:
            identity = await session.get(ChannelIdentity, identity_id)
            if identity is None:
                raise NotFound("identity")
            conversation = await current_conversation(session, identity)
            log_outgoing(session, conversation, messages)
            delivery = Delivery(conversation.id, conversation.channel, identity.external_id)
        return await self.push(delivery, messages)

    async def _log(self, conversation_id: int, message: OutgoingMessage) -> str | None:
        """Log the message on the conversation; the Telegram chat to send it to, if that is its channel."""
        async with self._sessions.begin() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                raise NotFound("conversation")
            log_outgoing(session, conversation, [message])
            if conversation.channel != TELEGRAM or self._telegram is None:
                return None
            return await session.scalar(
                select(ChannelIdentity.external_id).where(ChannelIdentity.id == conversation.identity_id)
            )
