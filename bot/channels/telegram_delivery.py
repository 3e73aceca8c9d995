"""Getting messages to Telegram chats: retried, kept when they cannot go, never dropped silently.

Each send is tried a few times at once (Telegram's 429 is waited out for its ``retry_after``;
network errors and 5xx back off). What still fails goes to the ``telegram_outbox`` table and a
background task retries it with growing delays until it goes or has used ``max_attempts``;
the final failure is logged as an error and the row stays as ``failed``. Messages to one chat
leave in order: a chat with messages waiting in the outbox gets its new ones queued behind them,
and a chat's sends (now or from the outbox) hold the chat's lock, shared by every app process when
the locks are (`crm_backend.shared.SenderLocks`). An outbox row is claimed before it is sent (its
due time pushed past a send's duration by a conditional update), so one process sends it.

What staff say and what the app tells a citizen by itself (case notices, hand-backs, replayed
answers) is not sent from memory: `enqueue` writes it to the outbox in the same transaction as
its conversation-log entry, and `kick` wakes the outbox task once that transaction committed. A
crash between the commit and the send leaves the row, which the outbox task sends after restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError
from telegram.warnings import PTBDeprecationWarning

from bot.channels.telegram_format import Chunk, callback_data_for, chunks_for, needs_storing
from crm_backend.errors import describe_error
from crm_backend.models import TelegramCallbackPayload, TelegramOutbox, utcnow
from crm_backend.services.conversations import OutgoingMessage
from crm_backend.shared import SenderLocks
from crm_backend.shared.local import LocalLocks

logger = logging.getLogger(__name__)

PENDING, SENT, FAILED = "pending", "sent", "failed"


class SendFailed(Exception):
    """A send that may work later; ``wait`` is how long Telegram asked us to wait, if it said."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class SendRefused(Exception):
    """A send that will never work (the chat blocked the bot, a malformed message)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: at once, then from the outbox."""

    immediate_attempts: int = 3
    immediate_delays: tuple[float, ...] = (0.5, 1.0, 2.0)  # between the immediate attempts
    max_immediate_wait: float = 30.0  # a longer retry_after goes to the outbox instead of blocking the chat
    max_attempts: int = 10  # all attempts, immediate and from the outbox
    outbox_first_delay: float = 5.0
    outbox_max_delay: float = 600.0
    poll_interval: float = 1.0
    send_lease: float = 120.0  # an outbox row being sent is not taken by another process for this long

    def outbox_delay(self, attempts: int) -> float:
        """Seconds before the next outbox attempt, after ``attempts`` attempts so far."""
        extra = max(0, attempts - self.immediate_attempts)
        return float(min(self.outbox_first_delay * 2**extra, self.outbox_max_delay))


class KeyedSequencer:
    """Runs jobs one at a time per key, in the order submitted, different keys concurrently."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queues: dict[str, asyncio.Queue[Callable[[], Awaitable[object]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, key: str, job: Callable[[], Awaitable[object]]) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            task = asyncio.create_task(self._drain(key, queue), name=f"{self._name}:{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.put_nowait(job)

    async def _drain(self, key: str, queue: asyncio.Queue[Callable[[], Awaitable[object]]]) -> None:
        try:
            while True:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    await job()
                except Exception as error:  # one failed job must not stop the chat's later ones
                    logger.error("%s job for %s failed: %s", self._name, key, describe_error(error))
        finally:
            self._queues.pop(key, None)

    async def close(self, grace_seconds: float = 5.0) -> None:
        """Let running jobs finish for a moment, then cancel what is left."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def outbox_row(chat_id: str, chunk: Chunk, *, status: str, attempts: int, at: datetime, reason: str) -> TelegramOutbox:
    """An outbox row for one chunk of a message, next tried (or finished) at `at`."""
    return TelegramOutbox(
        chat_id=chat_id,
        text=chunk.text,
        keyboard=chunk.keyboard,
        status=status,
        attempts=attempts,
        next_attempt_at=at,
        last_error=reason[:1000],
    )


async def store_long_payloads(session: AsyncSession, messages: Iterable[OutgoingMessage]) -> None:
    """In the caller's transaction: keep button payloads too long for callback_data under their token."""
    payloads = {b["payload"] for m in messages for b in m.buttons or [] if needs_storing(b["payload"])}
    for payload in sorted(payloads):
        token = callback_data_for(payload)
        if await session.get(TelegramCallbackPayload, token) is not None:
            continue
        try:
            async with session.begin_nested():
                session.add(TelegramCallbackPayload(token=token, payload=payload))
        except IntegrityError:  # stored at the same moment for another chat
            pass


async def enqueue(session: AsyncSession, chat_id: str, messages: Iterable[OutgoingMessage]) -> int:
    """In the caller's transaction: put messages to a chat in the outbox, due now; how many rows.

    They go out with the transaction or not at all; `TelegramDelivery.kick` after the commit
    sends them at once, else the outbox task finds them on its next pass.
    """
    messages = list(messages)
    await store_long_payloads(session, messages)
    now = utcnow()
    rows = [
        outbox_row(chat_id, chunk, status=PENDING, attempts=0, at=now, reason="")
        for message in messages
        for chunk in chunks_for(_signed(message), message.buttons)
    ]
    session.add_all(rows)
    return len(rows)


class TelegramDelivery:
    """Sends replies to Telegram chats, with retries and the outbox."""

    def __init__(
        self,
        bot: Bot,
        sessions: async_sessionmaker[AsyncSession],
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        locks: SenderLocks | None = None,
    ) -> None:
        self._bot = bot
        self._sessions = sessions
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._locks: SenderLocks = locks if locks is not None else LocalLocks()
        self._wake = asyncio.Event()

    def _lock(self, chat_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locks.hold(f"telegram-send:{chat_id}")

    def kick(self) -> None:
        """After a commit that `enqueue`d messages: have the outbox task send them now."""
        self._wake.set()

    async def deliver(self, chat_id: str, messages: Iterable[OutgoingMessage]) -> bool:
        """Send messages to a chat now, keeping what cannot go in the outbox.

        Returns:
            True if everything was sent now; False if some of it waits in the outbox (or was refused).
        """
        messages = list(messages)
        chunks = [chunk for message in messages for chunk in chunks_for(_signed(message), message.buttons)]
        if not chunks:
            return True
        await self._store_long_payloads(messages)
        async with self._lock(chat_id):
            if await self._has_waiting(chat_id):
                await self._keep(chat_id, chunks, attempts=0, wait=0.0, reason="earlier messages still waiting")
                return False
            for index, chunk in enumerate(chunks):
                try:
                    await self._send_now(chat_id, chunk)
                except SendRefused as error:
                    logger.error("telegram refused a message to chat %s: %s", chat_id, error)
                    await self._record_refused(chat_id, chunk, str(error))
                    return False
                except SendFailed as error:
                    logger.warning("telegram message to chat %s kept in the outbox: %s", chat_id, error)
                    wait = error.wait if error.wait is not None else self._policy.outbox_delay(1)
                    await self._keep(
                        chat_id, chunks[index:], attempts=self._policy.immediate_attempts, wait=wait, reason=str(error)
                    )
                    return False
        return True

    async def _send_now(self, chat_id: str, chunk: Chunk) -> None:
        """A few immediate attempts; raises SendFailed or SendRefused if none worked."""
        policy = self._policy
        last: SendFailed | None = None
        for attempt in range(policy.immediate_attempts):
            try:
                await self._send_once(chat_id, chunk)
                return
            except SendFailed as error:
                last = error
                if attempt == policy.immediate_attempts - 1:
                    break
                if error.wait is not None:
                    if error.wait > policy.max_immediate_wait:
                        break
                    logger.info("telegram asked to wait %.1fs before writing to chat %s", error.wait, chat_id)
                    await self._sleep(error.wait)
                else:
                    await self._sleep(policy.immediate_delays[min(attempt, len(policy.immediate_delays) - 1)])
        assert last is not None
        raise last

    async def _send_once(self, chat_id: str, chunk: Chunk) -> None:
        markup = None
        if chunk.keyboard:
            markup = InlineKeyboardMarkup(
                [[InlineKeyboardButton(b["text"], callback_data=b["callback_data"])] for [b] in chunk.keyboard]
            )
        try:
            await self._bot.send_message(chat_id=chat_id, text=chunk.text, reply_markup=markup)
        except RetryAfter as error:
            raise SendFailed(str(error), wait=retry_after_seconds(error)) from error
        except BadRequest as error:  # a NetworkError subclass, but retrying will not help
            raise SendRefused(str(error)) from error
        except NetworkError as error:  # connection failures, timeouts, 5xx
            raise SendFailed(f"{type(error).__name__}: {error}") from error
        except TelegramError as error:  # Forbidden (blocked by the citizen), InvalidToken, ...
            raise SendRefused(f"{type(error).__name__}: {error}") from error

    async def _store_long_payloads(self, messages: list[OutgoingMessage]) -> None:
        """Keep payloads too long for callback_data under their token, so a press can be resolved."""
        async with self._sessions.begin() as session:
            await store_long_payloads(session, messages)

    # --- the outbox ---------------------------------------------------------------------------

    async def _has_waiting(self, chat_id: str) -> bool:
        async with self._sessions() as session:
            found = await session.scalar(
                select(TelegramOutbox.id).where(TelegramOutbox.chat_id == chat_id, TelegramOutbox.status == PENDING)
            )
        return found is not None

    async def _keep(self, chat_id: str, chunks: list[Chunk], *, attempts: int, wait: float, reason: str) -> None:
        due = utcnow() + timedelta(seconds=wait)
        async with self._sessions.begin() as session:
            session.add_all(
                outbox_row(chat_id, chunk, status=PENDING, attempts=attempts, at=due, reason=reason) for chunk in chunks
            )
        self._wake.set()

    async def _record_refused(self, chat_id: str, chunk: Chunk, reason: str) -> None:
        now = utcnow()
        async with self._sessions.begin() as session:
            row = outbox_row(chat_id, chunk, status=FAILED, attempts=1, at=now, reason=reason)
            row.finished_at = now
            session.add(row)

    async def run_outbox(self) -> None:
        """The background task: retry what is due, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._policy.poll_interval)
            self._wake.clear()
            try:
                await self.flush_outbox()
            except Exception:  # a database hiccup must not end the retries
                logger.exception("telegram outbox pass failed")

    async def flush_outbox(self) -> None:
        """One pass over the outbox: every chat with a due message gets its waiting messages retried in order."""
        async with self._sessions() as session:
            chats = (
                await session.scalars(
                    select(TelegramOutbox.chat_id)
                    .where(TelegramOutbox.status == PENDING, TelegramOutbox.next_attempt_at <= utcnow())
                    .distinct()
                    .limit(200)
                )
            ).all()
        for chat_id in chats:
            async with self._lock(chat_id):
                await self._flush_chat(chat_id)

    async def _flush_chat(self, chat_id: str) -> None:
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(TelegramOutbox)
                    .where(TelegramOutbox.chat_id == chat_id, TelegramOutbox.status == PENDING)
                    .order_by(TelegramOutbox.id)
                )
            ).all()
        for row in rows:
            if row.next_attempt_at > utcnow():
                return  # the chat's oldest waiting message is not due: the later ones wait behind it
            if not await self._claim(row):
                return  # another app process on this database is sending it
            chunk = Chunk(row.text, row.keyboard)
            try:
                await self._send_once(chat_id, chunk)
            except SendRefused as error:
                logger.error("telegram refused outbox message %s to chat %s: %s", row.id, chat_id, error)
                await self._finish(row.id, FAILED, str(error))
                continue
            except SendFailed as error:
                await self._retry_later(row, error)
                return
            await self._finish(row.id, SENT, "")
            logger.info("telegram outbox message %s to chat %s sent on attempt %s", row.id, chat_id, row.attempts + 1)

    async def _claim(self, row: TelegramOutbox) -> bool:
        """Take the row for one send: push its due time past a send's duration, if nobody else did.

        Should the process die mid-send, the row is due again after the lease (and sent twice
        at worst, never lost).
        """
        lease = utcnow() + timedelta(seconds=self._policy.send_lease)
        async with self._sessions.begin() as session:
            taken = await session.execute(
                update(TelegramOutbox)
                .where(
                    TelegramOutbox.id == row.id,
                    TelegramOutbox.status == PENDING,
                    TelegramOutbox.next_attempt_at <= utcnow(),
                )
                .values(next_attempt_at=lease)
            )
        return bool(taken.rowcount)  # type: ignore[attr-defined]

    async def _retry_later(self, row: TelegramOutbox, error: SendFailed) -> None:
        attempts = row.attempts + 1
        async with self._sessions.begin() as session:
            stored = await session.get(TelegramOutbox, row.id)
            assert stored is not None
            stored.attempts = attempts
            stored.last_error = str(error)[:1000]
            if attempts >= self._policy.max_attempts:
                stored.status = FAILED
                stored.finished_at = utcnow()
                logger.error(
                    "telegram message %s to chat %s undeliverable after %s attempts, giving up: %s",
                    row.id,
                    row.chat_id,
                    attempts,
                    error,
                )
            else:
                wait = error.wait if error.wait is not None else self._policy.outbox_delay(attempts)
                stored.next_attempt_at = utcnow() + timedelta(seconds=wait)

    async def _finish(self, row_id: int, status: str, error: str) -> None:
        async with self._sessions.begin() as session:
            stored = await session.get(TelegramOutbox, row_id)
            assert stored is not None
            stored.status = status
            stored.attempts += 1
            stored.finished_at = utcnow()
            if error:
                stored.last_error = error[:1000]


def retry_after_seconds(error: RetryAfter) -> float:
    """Telegram's retry_after in seconds (PTB 22 returns an int or a timedelta, warning about the int)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _signed(message: OutgoingMessage) -> str:
    """A staff member's reply carries their display name, as the web chat shows it."""
    if message.sender_kind == "staff" and message.sender_name:
        return f"{message.sender_name}：{message.text}"
    return message.text
