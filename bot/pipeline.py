"""The one path every citizen message takes, whatever the channel.

count the message against the sender's limit → log the message → if staff has the
conversation, stop there → else ask the engine → log and return the replies. The incoming
message is committed before the engine is asked, so nothing is lost if the engine is down,
and so the actions the engine calls find the citizen's identity and conversation.

A message over the sender's limit is neither logged nor given to the engine: `handle`
raises `TooManyMessages` carrying the citizen-facing text, and each channel tells the
citizen (the web chat an error frame for that message, REST a 429, Telegram a reply).

A citizen cannot name an intent: a button payload (``/intent{...}``) reaches the engine
only if the bot offered that button in the conversation's latest messages, and never an
``EXTERNAL_`` intent (those are the app's own events, such as the 回访). Anything else,
text starting with "/" included, goes to the engine as words, its leading slashes dropped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.engine import EngineClient, EngineUnavailable
from bot.responses import Responses
from crm_backend.console.feed import LiveEvent, LiveFeed
from crm_backend.errors import TooManyMessages
from crm_backend.models import Conversation
from crm_backend.services.conversations import (
    OutgoingMessage,
    current_conversation,
    find_logged_message,
    log_incoming,
    log_outgoing,
    offered_payloads,
    resolve_identity,
)
from crm_backend.services.handoff import BOT
from crm_backend.services.limits import Limit, RateLimiter
from crm_backend.validation import clean_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inbound:
    """A citizen's message as a channel received it."""

    channel: str
    external_id: str
    text: str
    payload: str | None = None  # a button's payload, sent to the engine instead of the text if the bot offered it
    client_msg_id: str | None = None
    # Something sent besides text (a photo's file id, a location's coordinates), stored with
    # the message; the label says in the log what it was ("[图片]"), before any caption.
    attachment: dict[str, Any] | None = None
    attachment_label: str = ""
    # The channel made the payload itself (Telegram's /start), not the citizen's client: it is
    # sent without looking for it among the buttons offered.
    payload_from_channel: bool = False


@dataclass
class Outcome:
    """What became of one inbound message."""

    conversation_id: int
    sender_id: str
    replies: list[OutgoingMessage] = field(default_factory=list)
    handoff_started: bool = False
    in_handoff: bool = False
    duplicate: bool = False


@dataclass(frozen=True)
class _Accepted:
    conversation_id: int
    channel: str
    sender_id: str
    in_handoff: bool
    duplicate: bool
    department_id: int | None
    payload: str | None  # the inbound payload if it may reach the engine, else None


class MessagePipeline:
    """Logging, handoff state and the engine, shared by every channel.

    `limiter` counts each sender's messages under `message_limit`; without both, no limit.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: EngineClient,
        responses: Responses,
        *,
        max_message_chars: int,
        max_logged_chars: int,
        feed: LiveFeed | None = None,
        limiter: RateLimiter | None = None,
        message_limit: Limit | None = None,
    ) -> None:
        self._sessions = sessions
        self._limiter = limiter
        self._message_limit = message_limit
        self._feed = feed
        self._engine = engine
        self._responses = responses
        self._max_message_chars = max_message_chars
        self._max_logged_chars = max_logged_chars
        # One lock per sender keeps each citizen's messages in order; unused locks vanish.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def handle(self, inbound: Inbound, on_logged: Callable[[int], Awaitable[None]] | None = None) -> Outcome:
        """Take one citizen message all the way through.

        Args:
            inbound: the message.
            on_logged: called with the conversation id once the message is safely stored
                (the web chat acknowledges it then).

        Raises:
            TooManyMessages: the sender is over the message limit; nothing was stored or asked.
        """
        inbound = replace(
            inbound,
            external_id=clean_text(inbound.external_id),
            text=clean_text(inbound.text),
            payload=inbound.payload and clean_text(inbound.payload),
        )
        sender_key = f"{inbound.channel}:{inbound.external_id}"
        # Counted before waiting for the sender's lock: a flood is refused at once, not queued.
        await self.admit(inbound.channel, inbound.external_id)
        async with self._lock(sender_key):
            accepted = await self._accept(inbound)
            if on_logged is not None:
                await on_logged(accepted.conversation_id)
            outcome = Outcome(accepted.conversation_id, accepted.sender_id, duplicate=accepted.duplicate)
            if accepted.duplicate:
                return outcome
            if accepted.in_handoff:
                outcome.in_handoff = True
                self._tell_staff("message", accepted.conversation_id, accepted.department_id)
                return outcome
            outcome.replies, outcome.handoff_started = await self._ask_engine(
                inbound, accepted.sender_id, accepted.payload
            )
            if outcome.replies or outcome.handoff_started:
                async with self._sessions.begin() as session:
                    conversation = await session.get(Conversation, accepted.conversation_id)
                    assert conversation is not None
                    log_outgoing(session, conversation, outcome.replies)
                    department_id = conversation.department_id
                if outcome.handoff_started:
                    self._tell_staff("escalation", accepted.conversation_id, department_id)
            return outcome

    async def admit(self, channel: str, external_id: str) -> None:
        """Count one message of this sender against the message limit.

        `handle` does it; a channel answering a message itself (a sticker, /help) calls it first.

        Raises:
            TooManyMessages: the sender is over the limit; its text is the citizen's answer.
        """
        if self._limiter is None or self._message_limit is None:
            return
        sender_key = f"{channel}:{external_id}"
        if not await self._limiter.acquire(self._message_limit, sender_key):
            logger.warning("message limit reached for %s: message not processed", sender_key)
            raise TooManyMessages(self._responses.text("utter_too_many_messages"))

    def _tell_staff(self, kind: str, conversation_id: int, department_id: int | None) -> None:
        if self._feed is not None:
            self._feed.publish(LiveEvent(kind, conversation_id, department_id))

    async def _accept(self, inbound: Inbound) -> _Accepted:
        async with self._sessions.begin() as session:
            identity = await resolve_identity(session, inbound.channel, inbound.external_id)
            conversation = await current_conversation(session, identity)
            duplicate = bool(
                inbound.client_msg_id and await find_logged_message(session, conversation, inbound.client_msg_id)
            )
            if not duplicate:
                log_incoming(
                    session,
                    conversation,
                    f"{inbound.attachment_label} {inbound.text}".strip() if inbound.attachment_label else inbound.text,
                    max_chars=self._max_logged_chars,
                    client_msg_id=inbound.client_msg_id,
                    attachment=inbound.attachment,
                )
            payload = inbound.payload
            if payload is not None and not _acceptable_payload(
                payload, inbound.payload_from_channel or payload in await offered_payloads(session, conversation)
            ):
                logger.info("payload not offered to %s; read as text", identity.sender_id)
                payload = None
            return _Accepted(
                conversation_id=conversation.id,
                channel=conversation.channel,
                sender_id=identity.sender_id,
                in_handoff=conversation.handoff_status != BOT,
                duplicate=duplicate,
                department_id=conversation.department_id,
                payload=payload,
            )

    async def _ask_engine(
        self, inbound: Inbound, sender_id: str, payload: str | None
    ) -> tuple[list[OutgoingMessage], bool]:
        text = as_words(inbound.text)
        if not text and not payload:
            # A photo without a caption is stored; there is nothing for the engine to read.
            empty = "utter_attachment_received" if inbound.attachment else "utter_empty_message"
            return [OutgoingMessage(self._responses.text(empty))], False
        replies: list[OutgoingMessage] = []
        if len(text) > self._max_message_chars and not payload:
            replies.append(OutgoingMessage(self._responses.text("utter_message_truncated")))
            text = text[: self._max_message_chars]
        try:
            raw = await self._engine.send(sender_id, payload or text, channel=inbound.channel)
        except EngineUnavailable as error:
            logger.warning("engine unavailable for %s: %s", sender_id, error)
            return [OutgoingMessage(self._responses.text("utter_system_busy"), sender_kind="system")], False
        handoff_started = False
        for reply in raw:
            if _is_handoff_marker(reply):
                handoff_started = True
                continue
            converted = to_outgoing(reply)
            if converted is not None:
                replies.append(converted)
        return replies, handoff_started


_LEADING_SLASHES = re.compile(r"^[\s/]+")
_EXTERNAL_INTENT = re.compile(r"^/\s*EXTERNAL_", re.IGNORECASE)


def as_words(text: str) -> str:
    """A citizen's text as the engine should read it: words, never an ``/intent`` (leading slashes dropped)."""
    return _LEADING_SLASHES.sub("", text).strip()


def _acceptable_payload(payload: str, offered: bool) -> bool:
    """A payload reaches the engine only if offered, and never as an ``EXTERNAL_`` intent."""
    return offered and payload.startswith("/") and not _EXTERNAL_INTENT.match(payload)


def _is_handoff_marker(reply: dict[str, Any]) -> bool:
    custom = reply.get("custom")
    return isinstance(custom, dict) and custom.get("handoff") is True


def to_outgoing(reply: dict[str, Any]) -> OutgoingMessage | None:
    """A reply in the engine's REST format as a message to deliver; None if it carries nothing."""
    text = reply.get("text")
    buttons = [
        {"title": str(button.get("title", "")), "payload": str(button.get("payload", ""))}
        for button in reply.get("buttons") or []
        if isinstance(button, dict)
    ]
    if not isinstance(text, str) and not buttons:
        return None
    return OutgoingMessage(text=text if isinstance(text, str) else "", buttons=buttons or None)
