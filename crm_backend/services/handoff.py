"""Handing a conversation from the bot to staff and back."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import NotFound
from crm_backend.models import Conversation, utcnow

BOT = "bot"
WAITING = "waiting"


async def request_handoff(session: AsyncSession, conversation: Conversation) -> None:
    """Mark a conversation as waiting for staff; the bot stays silent from now on."""
    if conversation.handoff_status == BOT:
        conversation.handoff_status = WAITING
        conversation.handoff_requested_at = utcnow()


async def release_to_bot(session: AsyncSession, conversation_id: int) -> Conversation:
    """Give a conversation back to the bot.

    Raises:
        NotFound: no such conversation.
    """
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"conversation {conversation_id}")
    conversation.handoff_status = BOT
    conversation.handoff_requested_at = None
    return conversation


async def waiting_conversations(session: AsyncSession, limit: int = 100) -> list[Conversation]:
    """Conversations waiting for staff, longest-waiting first."""
    rows = await session.scalars(
        select(Conversation)
        .where(Conversation.handoff_status != BOT)
        .order_by(Conversation.handoff_requested_at)
        .limit(limit)
    )
    return list(rows.all())
