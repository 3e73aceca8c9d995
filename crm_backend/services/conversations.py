"""Channel identities, conversations and the message log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.models import ChannelIdentity, Citizen, Conversation, Message, utcnow

CONVERSATION_IDLE_LIMIT = timedelta(hours=24)
# How far back a pressed button may come from: its payload must be on one of these latest
# messages to the citizen.
RECENT_OUTGOING_FOR_BUTTONS = 20


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to a citizen, from the bot or a member of staff."""

    text: str
    buttons: list[dict[str, str]] | None = None
    sender_kind: str = "bot"
    sender_name: str | None = None


async def resolve_identity(session: AsyncSession, channel: str, external_id: str) -> ChannelIdentity:
    """Find the identity for (channel, external id), creating it and its citizen if new."""
    stmt = select(ChannelIdentity).where(ChannelIdentity.channel == channel, ChannelIdentity.external_id == external_id)
    identity = await session.scalar(stmt)
    if identity is not None:
        return identity
    citizen = Citizen()
    identity = ChannelIdentity(channel=channel, external_id=external_id, citizen=citizen)
    try:
        async with session.begin_nested():
            session.add(identity)
    except IntegrityError:  # created concurrently by another request
        found = await session.scalar(stmt)
        assert found is not None
        return found
    return identity


async def find_identity(session: AsyncSession, sender_id: str) -> ChannelIdentity | None:
    """The identity behind a dialogue-engine sender id (``channel:external_id``)."""
    channel, _, external_id = sender_id.partition(":")
    if not external_id:
        return None
    return await session.scalar(
        select(ChannelIdentity).where(ChannelIdentity.channel == channel, ChannelIdentity.external_id == external_id)
    )


async def current_conversation(
    session: AsyncSession, identity: ChannelIdentity, now: datetime | None = None
) -> Conversation:
    """The identity's open conversation; a new one after a day of silence or once staff closed it.

    A conversation handed to staff stays current however long it waits.
    """
    now = now or utcnow()
    conversation = await session.scalar(
        select(Conversation).where(Conversation.identity_id == identity.id).order_by(Conversation.id.desc()).limit(1)
    )
    if (
        conversation is not None
        and conversation.closed_at is None
        and (conversation.handoff_status != "bot" or now - conversation.last_message_at < CONVERSATION_IDLE_LIMIT)
    ):
        return conversation
    conversation = Conversation(identity_id=identity.id, channel=identity.channel, started_at=now, last_message_at=now)
    session.add(conversation)
    await session.flush()
    return conversation


async def find_logged_message(session: AsyncSession, conversation: Conversation, client_msg_id: str) -> Message | None:
    """A citizen message already logged under this client-side id (a resend after reconnect)."""
    return await session.scalar(
        select(Message).where(Message.conversation_id == conversation.id, Message.client_msg_id == client_msg_id)
    )


async def is_logged_resend(session: AsyncSession, channel: str, external_id: str, client_msg_id: str) -> bool:
    """Whether the sender's current conversation already logged a message under this client-side id.

    Read-only (creates no identity or conversation): a channel asks it before counting a message
    against the sender's limit.
    """
    latest = (
        select(Conversation.id)
        .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
        .where(ChannelIdentity.channel == channel, ChannelIdentity.external_id == external_id)
        .order_by(Conversation.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    found = await session.scalar(
        select(Message.id).where(Message.conversation_id == latest, Message.client_msg_id == client_msg_id)
    )
    return found is not None


async def answers_logged_after(session: AsyncSession, message: Message, limit: int = 50) -> list[Message]:
    """What the conversation logged after a citizen's message, up to their next one: its answer."""
    following = await session.scalars(
        select(Message)
        .where(Message.conversation_id == message.conversation_id, Message.id > message.id)
        .order_by(Message.id)
        .limit(limit)
    )
    answers: list[Message] = []
    for logged in following:
        if logged.direction == "in":
            break
        answers.append(logged)
    return answers


def log_incoming(
    session: AsyncSession,
    conversation: Conversation,
    text: str,
    *,
    max_chars: int,
    client_msg_id: str | None = None,
    attachment: dict[str, Any] | None = None,
    engine_input: str | None = None,
) -> Message:
    """Record a citizen's message, truncated to ``max_chars`` if huge, with what came with it
    (a photo's file id, a location's coordinates).

    ``engine_input`` is what the dialogue engine is to be given for it (the text, or a button's
    payload): the message is then marked as waiting for the engine until `mark_answered`.
    """
    message = Message(
        conversation_id=conversation.id,
        channel=conversation.channel,
        direction="in",
        sender_kind="citizen",
        text=text[:max_chars],
        original_length=len(text),
        truncated=len(text) > max_chars,
        client_msg_id=client_msg_id,
        attachment=attachment,
        engine_input=engine_input,
        engine_pending_since=utcnow() if engine_input is not None else None,
    )
    session.add(message)
    conversation.last_message_at = utcnow()
    return message


def log_outgoing(session: AsyncSession, conversation: Conversation, outgoing: list[OutgoingMessage]) -> list[Message]:
    """Record what the bot or staff sent to the citizen."""
    rows = [
        Message(
            conversation_id=conversation.id,
            channel=conversation.channel,
            direction="out",
            sender_kind=item.sender_kind,
            sender_name=item.sender_name,
            text=item.text,
            original_length=len(item.text),
            truncated=False,
            buttons=item.buttons or None,
        )
        for item in outgoing
    ]
    session.add_all(rows)
    conversation.last_message_at = utcnow()
    return rows


async def offered_payloads(
    session: AsyncSession, conversation: Conversation, recent: int = RECENT_OUTGOING_FOR_BUTTONS
) -> set[str]:
    """The button payloads on the conversation's ``recent`` latest messages to the citizen."""
    rows = await session.scalars(
        select(Message.buttons)
        .where(Message.conversation_id == conversation.id, Message.direction == "out")
        .order_by(Message.id.desc())
        .limit(recent)
    )
    return {
        button["payload"]
        for buttons in rows
        if isinstance(buttons, list)
        for button in buttons
        if isinstance(button, dict) and isinstance(button.get("payload"), str)
    }


async def conversation_history(session: AsyncSession, conversation: Conversation, limit: int = 200) -> list[Message]:
    """The latest ``limit`` messages of a conversation, oldest first."""
    rows = await session.scalars(
        select(Message).where(Message.conversation_id == conversation.id).order_by(Message.id.desc()).limit(limit)
    )
    return list(reversed(rows.all()))


def mark_answered(message: Message) -> None:
    """The engine has answered the message (call in the transaction that logs its answer)."""
    message.engine_pending_since = None


async def pending_engine_messages(
    session: AsyncSession, identity_id: int, *, before_id: int | None = None
) -> list[Message]:
    """The identity's messages the engine has not answered yet, oldest first (only those before ``before_id``)."""
    stmt = (
        select(Message)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Conversation.identity_id == identity_id, Message.engine_pending_since.is_not(None))
        .order_by(Message.id)
    )
    if before_id is not None:
        stmt = stmt.where(Message.id < before_id)
    return list((await session.scalars(stmt)).all())


async def identities_with_pending_messages(
    session: AsyncSession, *, waiting_since: datetime, limit: int = 100
) -> list[ChannelIdentity]:
    """Identities with a message waiting for the engine since before ``waiting_since``, longest-waiting first.

    Conversations staff hold are left out: their messages wait for the bot's turn, and must not
    keep the others from being replayed.
    """
    oldest = func.min(Message.id)
    rows = await session.execute(
        select(ChannelIdentity, oldest)
        .join(Conversation, Conversation.identity_id == ChannelIdentity.id)
        .join(Message, Message.conversation_id == Conversation.id)
        .where(
            Message.engine_pending_since.is_not(None),
            Message.engine_pending_since < waiting_since,
            Conversation.handoff_status == "bot",
        )
        .group_by(ChannelIdentity.id)
        .order_by(oldest)
        .limit(limit)
    )
    return [identity for identity, _ in rows.all()]


async def pending_counts(session: AsyncSession, conversation_ids: list[int]) -> dict[int, int]:
    """How many messages of each conversation wait for the engine (conversations with none are left out)."""
    if not conversation_ids:
        return {}
    rows = await session.execute(
        select(Message.conversation_id, func.count())
        .where(Message.conversation_id.in_(conversation_ids), Message.engine_pending_since.is_not(None))
        .group_by(Message.conversation_id)
    )
    return {conversation_id: count for conversation_id, count in rows.all()}
