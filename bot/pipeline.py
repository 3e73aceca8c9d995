"""The one path every citizen message takes, whatever the channel.

count the message against the sender's limit → log the message → if staff has the
conversation, stop there → else ask the engine (a letter steered by the letter gate,
`bot.letters`, as a report or a question) → log and return the replies. The incoming
message is committed before the engine is asked, so nothing is lost if the engine is down,
and so the actions the engine calls find the citizen's identity and conversation.

A message over the sender's limit is neither logged nor given to the engine: `handle`
raises `TooManyMessages` carrying the citizen-facing text, and each channel tells the
citizen (the web chat an error frame for that message, REST a 429, Telegram a reply).

A citizen cannot name an intent: a button payload (``/intent{...}``) reaches the engine
only if the bot offered that button in the conversation's latest messages, and never an
``EXTERNAL_`` intent (those are the app's own events, such as the 回访). Anything else,
text starting with "/" included, goes to the engine as words, its leading slashes dropped.

A message for the engine is logged as waiting for it (``engine_pending_since``) and cleared
in the transaction that logs the engine's answer. One the engine never answered (it was
down, or the app died) is replayed: before the citizen's next message, or by the replay loop
(`bot.replay`) once the engine is healthy again, in order, each answer introduced by
``utter_replay_intro``. Messages written while staff hold the conversation are theirs, not
the engine's, and are never replayed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.engine import EngineClient, EngineUnavailable
from bot.letters import LetterGate
from bot.responses import Responses
from crm_backend.console.feed import LiveEvent, LiveFeed
from crm_backend.errors import TooManyMessages
from crm_backend.models import ChannelIdentity, Conversation, Message
from crm_backend.services.conversations import (
    OutgoingMessage,
    answers_logged_after,
    current_conversation,
    find_logged_message,
    is_logged_resend,
    log_incoming,
    log_outgoing,
    mark_answered,
    offered_payloads,
    pending_engine_messages,
    resolve_identity,
)
from crm_backend.services.handoff import BOT
from crm_backend.services.intake import APP_MESSAGE_ID
from crm_backend.services.limits import Limit, RateLimiter
from crm_backend.shared import SenderLocks
from crm_backend.shared.local import LocalLocks
from crm_backend.validation import clean_text

logger = logging.getLogger(__name__)

REPLAY_EXCERPT_CHARS = 30  # how much of a replayed message its answer's introduction quotes

# In the caller's transaction: log replies on the conversation (and queue them for the channel);
# returns where to push them after the commit.
Recorder = Callable[[AsyncSession, Conversation, list[OutgoingMessage]], Awaitable[Any]]


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
    # A message sent again that was answered the first time: that answer, as logged (a channel
    # without a history to show, such as REST, gives it again; the web chat's page has it).
    earlier_answers: list[OutgoingMessage] = field(default_factory=list)


@dataclass
class Replayed:
    """What became of replaying a citizen's messages the engine had not answered."""

    conversation_id: int | None = None
    replies: list[OutgoingMessage] = field(default_factory=list)  # every answer, each after its introduction
    deliveries: list[tuple[Any, list[OutgoingMessage]]] = field(default_factory=list)  # what the recorder returned
    handoff_started: bool = False
    engine_down: bool = False  # stopped because the engine failed again: the rest still wait
    in_handoff: bool = False  # stopped because staff hold the conversation: the rest wait for the bot


@dataclass(frozen=True)
class _Accepted:
    conversation_id: int
    channel: str
    sender_id: str
    identity_id: int
    message_id: int | None
    in_handoff: bool
    duplicate: bool
    duplicate_pending: bool  # a message sent again whose first sending the engine never answered
    earlier_answers: list[OutgoingMessage]  # a message sent again: what was logged in answer to it
    department_id: int | None
    engine_input: str | None  # what the engine is given (None: nothing to read)
    truncated: bool  # the text was cut to the engine's limit


class MessagePipeline:
    """Logging, handoff state and the engine, shared by every channel.

    `limiter` counts each sender's messages under `message_limit`; without both, no limit.
    `locks` keeps each citizen's messages in order, one at a time (across every app process
    when they are shared: `crm_backend.shared`); by default, within this process.
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
        letters: LetterGate | None = None,
        locks: SenderLocks | None = None,
    ) -> None:
        self._sessions = sessions
        self._letters = letters
        self._limiter = limiter
        self._message_limit = message_limit
        self._feed = feed
        self._engine = engine
        self._responses = responses
        self._max_message_chars = max_message_chars
        self._max_logged_chars = max_logged_chars
        self._locks: SenderLocks = locks if locks is not None else LocalLocks()

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
        # Counted before waiting for the sender's lock: a flood is refused at once, not queued. A
        # resend of a logged message is not a new one: a client retrying through an outage is
        # answered, not refused.
        if not await self._is_resend(inbound):
            await self.admit(inbound.channel, inbound.external_id)
        async with self._locks.hold(sender_key):
            accepted = await self._accept(inbound)
            if on_logged is not None:
                await on_logged(accepted.conversation_id)
            outcome = Outcome(accepted.conversation_id, accepted.sender_id, duplicate=accepted.duplicate)
            if accepted.duplicate:
                if accepted.duplicate_pending:
                    # Sent again because no answer came: the process that took it died before the
                    # engine answered. Under the citizen's lock nobody else is answering it: now.
                    earlier = await self._replay(accepted.identity_id, accepted.sender_id, inbound.channel)
                    outcome.replies = earlier.replies
                    outcome.handoff_started = earlier.handoff_started
                else:
                    outcome.earlier_answers = accepted.earlier_answers
                return outcome
            if accepted.in_handoff:
                outcome.in_handoff = True
                self._tell_staff("message", accepted.conversation_id, accepted.department_id)
                return outcome
            if accepted.engine_input is None:
                # A photo without a caption is stored; there is nothing for the engine to read.
                empty = "utter_attachment_received" if inbound.attachment else "utter_empty_message"
                outcome.replies = [OutgoingMessage(self._responses.text(empty))]
                await self._log_replies(accepted.conversation_id, outcome.replies, answered=None)
                return outcome
            # What the engine never got from this citizen goes first, in order.
            earlier = await self._replay(
                accepted.identity_id, accepted.sender_id, inbound.channel, before_id=accepted.message_id
            )
            outcome.replies.extend(earlier.replies)
            outcome.handoff_started = earlier.handoff_started
            if earlier.in_handoff or earlier.handoff_started:
                # Staff took over while the earlier messages were answered: this one is theirs.
                await self._hand_to_staff(accepted)
                outcome.in_handoff = True
                return outcome
            replies, handoff_started, answered = await self._answer(
                inbound,
                accepted.sender_id,
                accepted.engine_input,
                accepted.truncated,
                engine_down=earlier.engine_down,
                message_id=accepted.message_id,
            )
            outcome.replies.extend(replies)
            outcome.handoff_started = handoff_started
            # Unanswered (the engine is down), the message stays marked as waiting, for the replay.
            await self._log_replies(
                accepted.conversation_id, replies, answered=accepted.message_id if answered else None
            )
            if handoff_started:
                self._tell_staff("escalation", accepted.conversation_id, accepted.department_id)
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

    async def _is_resend(self, inbound: Inbound) -> bool:
        if inbound.client_msg_id is None or self._limiter is None:
            return False
        async with self._sessions() as session:
            return await is_logged_resend(session, inbound.channel, inbound.external_id, inbound.client_msg_id)

    async def replay(self, identity: ChannelIdentity, record: Recorder) -> Replayed:
        """Replay the identity's messages the engine never answered (the replay loop, engine healthy again).

        Holds the citizen's ordering lock, so a message they send meanwhile waits behind these.
        Each answer is written by ``record`` in the transaction that marks its message answered.
        """
        async with self._locks.hold(identity.sender_id):
            return await self._replay(identity.id, identity.sender_id, identity.channel, record=record)

    async def _replay(
        self,
        identity_id: int,
        sender_id: str,
        channel: str,
        *,
        before_id: int | None = None,
        record: Recorder | None = None,
    ) -> Replayed:
        result = Replayed()
        async with self._sessions() as session:
            pending = await pending_engine_messages(session, identity_id, before_id=before_id)
        for message in pending:
            async with self._sessions() as session:
                latest = await session.scalar(
                    select(Conversation.handoff_status)
                    .where(Conversation.identity_id == identity_id)
                    .order_by(Conversation.id.desc())
                    .limit(1)
                )
            if latest is not None and latest != BOT:
                result.in_handoff = True  # staff hold the conversation now: not the engine's to answer
                return result
            try:
                engine_input = message.engine_input or message.text
                raw = await self._engine.send(
                    sender_id,
                    engine_input,
                    channel=channel,
                    metadata=await self._metadata(sender_id, engine_input, message.id),
                )
            except EngineUnavailable as error:
                logger.info("replay for %s waits, the engine is still unavailable: %s", sender_id, error)
                result.engine_down = True
                return result
            answers, handoff_started = self._convert(raw)
            intro = self._responses.text("utter_replay_intro").format(text=_excerpt(message.text))
            replies = [OutgoingMessage(intro, sender_kind="system"), *answers]
            async with self._sessions.begin() as session:
                stored = await session.get(Message, message.id)
                assert stored is not None
                mark_answered(stored)
                identity = await session.get(ChannelIdentity, identity_id)
                assert identity is not None
                conversation = await current_conversation(session, identity)
                if record is None:
                    log_outgoing(session, conversation, replies)
                else:
                    result.deliveries.append((await record(session, conversation, replies), replies))
                result.conversation_id, department_id = conversation.id, conversation.department_id
            logger.info("replayed message %s of %s to the engine", message.id, sender_id)
            result.replies.extend(replies)
            if handoff_started:
                # Staff take the conversation over: what else waited is theirs to read, not the engine's.
                result.handoff_started = True
                await self._leave_to_staff(identity_id)
                self._tell_staff("escalation", conversation.id, department_id)
                return result
        return result

    async def _leave_to_staff(self, identity_id: int) -> None:
        """Staff now hold the citizen's conversation: their messages still waiting are no longer the engine's."""
        async with self._sessions.begin() as session:
            for message in await pending_engine_messages(session, identity_id):
                mark_answered(message)

    async def _hand_to_staff(self, accepted: _Accepted) -> None:
        """The message arrived for the engine but staff now hold the conversation: it is theirs."""
        await self._leave_to_staff(accepted.identity_id)
        self._tell_staff("message", accepted.conversation_id, accepted.department_id)

    async def _log_replies(self, conversation_id: int, replies: list[OutgoingMessage], answered: int | None) -> None:
        """Log replies and, if ``answered``, mark that message answered by the engine, in one transaction."""
        if not replies and answered is None:
            return
        async with self._sessions.begin() as session:
            conversation = await session.get(Conversation, conversation_id)
            assert conversation is not None
            if replies:
                log_outgoing(session, conversation, replies)
            message = await session.get(Message, answered) if answered is not None else None
            if message is not None:
                mark_answered(message)

    def _tell_staff(self, kind: str, conversation_id: int, department_id: int | None) -> None:
        if self._feed is not None:
            self._feed.publish(LiveEvent(kind, conversation_id, department_id))

    async def _accept(self, inbound: Inbound) -> _Accepted:
        async with self._sessions.begin() as session:
            identity = await resolve_identity(session, inbound.channel, inbound.external_id)
            conversation = await current_conversation(session, identity)
            original = (
                await find_logged_message(session, conversation, inbound.client_msg_id)
                if inbound.client_msg_id
                else None
            )
            duplicate = original is not None
            earlier_answers = (
                [_as_outgoing(logged) for logged in await answers_logged_after(session, original)]
                if original is not None and original.engine_pending_since is None
                else []
            )
            in_handoff = conversation.handoff_status != BOT
            payload = inbound.payload
            if payload is not None and not _acceptable_payload(
                payload, inbound.payload_from_channel or payload in await offered_payloads(session, conversation)
            ):
                logger.info("payload not offered to %s; read as text", identity.sender_id)
                payload = None
            engine_input, truncated = self._engine_input(inbound.text, payload)
            message = None
            if not duplicate:
                message = log_incoming(
                    session,
                    conversation,
                    f"{inbound.attachment_label} {inbound.text}".strip() if inbound.attachment_label else inbound.text,
                    max_chars=self._max_logged_chars,
                    client_msg_id=inbound.client_msg_id,
                    attachment=inbound.attachment,
                    engine_input=None if in_handoff else engine_input,
                )
                await session.flush()
            return _Accepted(
                conversation_id=conversation.id,
                channel=conversation.channel,
                sender_id=identity.sender_id,
                identity_id=identity.id,
                message_id=message.id if message is not None else None,
                in_handoff=in_handoff,
                duplicate=duplicate,
                duplicate_pending=original is not None and original.engine_pending_since is not None,
                earlier_answers=earlier_answers,
                department_id=conversation.department_id,
                engine_input=engine_input,
                truncated=truncated,
            )

    def _engine_input(self, text: str, payload: str | None) -> tuple[str | None, bool]:
        """What the engine is given for a message (None: nothing to read), and whether it was cut short.

        An accepted payload as it is; text as words, never an ``/intent``.
        """
        if payload:
            return payload, False
        text = as_words(text)
        if not text:
            return None, False
        if len(text) > self._max_message_chars:
            return text[: self._max_message_chars], True
        return text, False

    async def _answer(
        self,
        inbound: Inbound,
        sender_id: str,
        engine_input: str,
        truncated: bool,
        *,
        engine_down: bool,
        message_id: int | None = None,
    ) -> tuple[list[OutgoingMessage], bool, bool]:
        """The engine's replies to one message, whether they start a handoff, and whether the engine answered.

        系统繁忙 if the engine is down (or was a moment ago, for an earlier message of the citizen).
        """
        replies: list[OutgoingMessage] = []
        if truncated:
            replies.append(OutgoingMessage(self._responses.text("utter_message_truncated")))
        busy = [*replies, OutgoingMessage(self._responses.text("utter_system_busy"), sender_kind="system")]
        if engine_down:
            return busy, False, False
        try:
            raw = await self._engine.send(
                sender_id,
                engine_input,
                channel=inbound.channel,
                metadata=await self._metadata(sender_id, engine_input, message_id),
            )
        except EngineUnavailable as error:
            logger.warning("engine unavailable for %s: %s", sender_id, error)
            return busy, False, False
        answers, handoff_started = self._convert(raw)
        return [*replies, *answers], handoff_started, True

    async def _metadata(self, sender_id: str, engine_input: str, message_id: int | None) -> dict[str, Any] | None:
        """What the engine is given beside the text: the letter gate's steering, and the logged
        message's id (the same when the message is replayed, unlike the engine's own per-delivery
        id: an action keys what it must do once on it, `intake.filing_key`)."""
        steering = await self._steering(sender_id, engine_input)
        if message_id is None:
            return steering
        return {**(steering or {}), APP_MESSAGE_ID: message_id}

    async def _steering(self, sender_id: str, engine_input: str) -> dict[str, Any] | None:
        """The letter gate's word to the engine on this input (see `bot.letters`); None: the NLU reads it.

        A letter written into an open form (a long description, a 回访 comment) is the form's
        answer: it is left to the form, unsteered.
        """
        steering = self._letters.steer(engine_input) if self._letters is not None else None
        if steering is None:
            return None
        try:
            form = await self._engine.active_form(sender_id)
        except EngineUnavailable:
            return None  # the send that follows meets the same outage
        if form is not None:
            logger.info("a letter of %d characters written into %s: left to the form", len(engine_input), form)
            return None
        logger.info(
            "a letter of %d characters steered to %s (%.2f)", len(engine_input), steering.intent, steering.confidence
        )
        return steering.as_metadata()

    @staticmethod
    def _convert(raw: list[dict[str, Any]]) -> tuple[list[OutgoingMessage], bool]:
        handoff_started = False
        replies: list[OutgoingMessage] = []
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


def _excerpt(text: str) -> str:
    """The start of a message, as the replay's introduction quotes it."""
    text = " ".join(text.split())
    return text if len(text) <= REPLAY_EXCERPT_CHARS else text[:REPLAY_EXCERPT_CHARS] + "…"


def _as_outgoing(message: Message) -> OutgoingMessage:
    return OutgoingMessage(
        message.text, buttons=message.buttons, sender_kind=message.sender_kind, sender_name=message.sender_name
    )


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
