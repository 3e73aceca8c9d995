"""Delivers what staff (and the app itself) say to the citizen's channel, and logs it.

Everything is written first, in one transaction: the conversation-log entry and, for Telegram,
the outbox rows (`write`). Only after the commit is it pushed (`push`): to the open web chat
page at once (otherwise the citizen sees it on their next visit, from the log), or by waking
the Telegram outbox task. A crash between the two loses nothing: the log keeps the web chat's
copy and the outbox task sends Telegram's after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.webchat import serialise_outgoing
from bot.handoff_banner import HandoffBanner
from bot.hub import ConversationHub
from bot.responses import Responses
from crm_backend.errors import NotFound
from crm_backend.models import ChannelIdentity, Conversation
from crm_backend.services.conversations import OutgoingMessage, current_conversation, log_outgoing

if TYPE_CHECKING:  # python-telegram-bot is imported only by an app with a Telegram channel
    from bot.channels.telegram_delivery import TelegramDelivery

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
        banner: HandoffBanner | None = None,
    ) -> None:
        self._sessions = sessions
        self._hub = hub
        self._responses = responses
        self._telegram = telegram
        self._banner = banner

    async def write(
        self, session: AsyncSession, conversation: Conversation, messages: list[OutgoingMessage]
    ) -> Delivery:
        """In the caller's transaction: log the messages and, for a Telegram chat, put them in the outbox.

        Returns:
            Where to `push` them once the transaction has committed.
        """
        identity = await session.get(ChannelIdentity, conversation.identity_id)
        if identity is None:
            raise NotFound("identity")
        if messages:
            log_outgoing(session, conversation, messages)
            if conversation.channel == TELEGRAM and self._telegram is not None:
                from bot.channels.telegram_delivery import enqueue

                await enqueue(session, identity.external_id, messages)
        return Delivery(conversation.id, conversation.channel, identity.external_id)

    async def push(self, delivery: Delivery, messages: list[OutgoingMessage]) -> bool:
        """After the commit of `write`: live to an open web chat, or wake the Telegram outbox.

        Returns:
            True if delivered live or on its way to Telegram.
        """
        if delivery.channel == TELEGRAM and self._telegram is not None:
            if messages:
                self._telegram.kick()
            return True
        if not messages:
            return False
        frame = {"type": "reply", "in_reply_to": None, "messages": [serialise_outgoing(m) for m in messages]}
        return await self._hub.publish(delivery.conversation_id, frame)

    async def staff_reply(self, conversation_id: int, text: str, staff_name: str) -> bool:
        """Log and deliver a staff reply; True if it reached the citizen (or is on its way to Telegram)."""
        reply = OutgoingMessage(text=text, sender_kind="staff", sender_name=staff_name)
        async with self._sessions.begin() as session:
            delivery = await self.write(session, await self._conversation(session, conversation_id), [reply])
        return await self.push(delivery, [reply])

    async def handoff_ended(self, conversation_id: int, *, closed: bool = False) -> None:
        """Tell the citizen staff are done: back to the bot, or the conversation closed."""
        notice = OutgoingMessage(
            self._responses.text("utter_handoff_closed" if closed else "utter_handoff_released"), sender_kind="system"
        )
        async with self._sessions.begin() as session:
            delivery = await self.write(session, await self._conversation(session, conversation_id), [notice])
        if delivery.channel != TELEGRAM or self._telegram is None:
            await self._hub.publish(conversation_id, {"type": "handoff", "active": False})
        await self.push(delivery, [notice])

    async def handoff_started(self, conversation_id: int) -> None:
        """Tell an open web chat that staff now hold the conversation (Telegram needs no sign)."""
        frame = self._banner.frame() if self._banner is not None else {"type": "handoff", "active": True}
        await self._hub.publish(conversation_id, frame)

    async def notify_identity(self, identity_id: int, messages: list[OutgoingMessage]) -> bool:
        """Log messages on the identity's current conversation and deliver them on its channel.

        Web chat: live to an open page, else seen on the next visit (the page restores the
        conversation). Telegram: through the outbox. Other channels have no push: the log
        keeps them. True if delivered live or on its way.
        """
        async with self._sessions.begin() as session:
            identity = await session.get(ChannelIdentity, identity_id)
            if identity is None:
                raise NotFound("identity")
            conversation = await current_conversation(session, identity)
            delivery = await self.write(session, conversation, messages)
        return await self.push(delivery, messages)

    async def _conversation(self, session: AsyncSession, conversation_id: int) -> Conversation:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None:
            raise NotFound("conversation")
        return conversation
