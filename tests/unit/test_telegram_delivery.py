"""Delivery to Telegram: retries, the outbox, the final give-up, order per chat.

Telegram's side is a scripted stand-in for PTB's ``Bot.send_message`` (the integration tests
use a fake Bot API server); the database is the real migrated one.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

from bot.channels.telegram_delivery import RetryPolicy, TelegramDelivery
from bot.channels.telegram_format import callback_data_for
from crm_backend.models import TelegramCallbackPayload, TelegramOutbox, utcnow
from crm_backend.services.conversations import OutgoingMessage

Sessions = async_sessionmaker[AsyncSession]
POLICY = RetryPolicy(immediate_delays=(0.5, 1.0, 2.0), max_attempts=5, outbox_first_delay=5.0)


class ScriptedBot:
    """Answers send_message with the scripted errors in turn, then succeeds; records what was sent."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sent: list[dict[str, Any]] = []
        self.tries = 0

    async def send_message(self, *, chat_id: str, text: str, reply_markup: Any = None) -> None:
        self.tries += 1
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append({"chat_id": chat_id, "text": text, "reply_markup": reply_markup})


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def delivery(bot: ScriptedBot, sessions: Sessions, sleeps: Sleeps) -> TelegramDelivery:
    return TelegramDelivery(bot, sessions, POLICY, sleep=sleeps)  # type: ignore[arg-type]


async def outbox(sessions: Sessions) -> list[TelegramOutbox]:
    async with sessions() as session:
        return list((await session.scalars(select(TelegramOutbox).order_by(TelegramOutbox.id))).all())


async def make_due(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        await session.execute(update(TelegramOutbox).values(next_attempt_at=utcnow() - timedelta(seconds=1)))


def said(*texts: str) -> list[OutgoingMessage]:
    return [OutgoingMessage(text) for text in texts]


async def test_a_429_is_waited_out_for_its_retry_after(sessions: Sessions) -> None:
    bot, sleeps = ScriptedBot(RetryAfter(3)), Sleeps()
    assert await delivery(bot, sessions, sleeps).deliver("42", said("您好"))
    assert sleeps.waits == [3.0]
    assert [m["text"] for m in bot.sent] == ["您好"]
    assert await outbox(sessions) == []


async def test_network_errors_back_off_then_succeed(sessions: Sessions) -> None:
    bot, sleeps = ScriptedBot(NetworkError("connection reset"), TimedOut()), Sleeps()
    assert await delivery(bot, sessions, sleeps).deliver("42", said("您好"))
    assert sleeps.waits == [0.5, 1.0]
    assert len(bot.sent) == 1


async def test_what_cannot_go_now_waits_in_the_outbox_in_order_and_goes_later(sessions: Sessions) -> None:
    bot, sleeps = ScriptedBot(*[NetworkError("down")] * 3), Sleeps()
    sender = delivery(bot, sessions, sleeps)
    assert not await sender.deliver("42", said("第一条", "第二条"))
    # A later message to the same chat queues behind them instead of overtaking.
    assert not await sender.deliver("42", said("第三条"))
    kept = await outbox(sessions)
    assert [(row.text, row.status) for row in kept] == [
        ("第一条", "pending"),
        ("第二条", "pending"),
        ("第三条", "pending"),
    ]
    assert kept[0].attempts == 3 and kept[0].next_attempt_at > utcnow()
    assert bot.sent == []

    await sender.flush_outbox()  # nothing due yet
    assert bot.sent == []
    await make_due(sessions)
    await sender.flush_outbox()
    assert [m["text"] for m in bot.sent] == ["第一条", "第二条", "第三条"]
    assert [row.status for row in await outbox(sessions)] == ["sent", "sent", "sent"]


async def test_an_outbox_message_that_keeps_failing_is_given_up_and_logged(
    sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    bot, sleeps = ScriptedBot(*[NetworkError("down")] * 100), Sleeps()
    sender = delivery(bot, sessions, sleeps)
    await sender.deliver("42", said("您好"))
    delays = []
    for _ in range(POLICY.max_attempts - POLICY.immediate_attempts):
        [row] = await outbox(sessions)
        delays.append(round((row.next_attempt_at - utcnow()).total_seconds()))
        await make_due(sessions)
        with caplog.at_level(logging.ERROR):
            await sender.flush_outbox()
    [row] = await outbox(sessions)
    assert (row.status, row.attempts) == ("failed", POLICY.max_attempts)
    assert delays == [5, 10]  # growing delays between outbox attempts
    assert "undeliverable after 5 attempts" in caplog.text


async def test_a_refused_message_is_not_retried_but_recorded(
    sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    bot, sleeps = ScriptedBot(Forbidden("bot was blocked by the user")), Sleeps()
    with caplog.at_level(logging.ERROR):
        assert not await delivery(bot, sessions, sleeps).deliver("42", said("您好"))
    [row] = await outbox(sessions)
    assert row.status == "failed" and "blocked" in row.last_error
    assert bot.tries == 1 and "refused" in caplog.text


async def test_a_bad_request_is_not_taken_for_a_network_error(sessions: Sessions) -> None:
    bot, sleeps = ScriptedBot(BadRequest("message is too long")), Sleeps()
    assert not await delivery(bot, sessions, sleeps).deliver("42", said("您好"))
    assert bot.tries == 1 and sleeps.waits == []


async def test_long_button_payloads_are_stored_for_their_callbacks(sessions: Sessions) -> None:
    long_payload = '/correct_category{"category": "劳动和社会保障", "note": "市民在对话中更正了类别"}'
    buttons = [{"title": "劳动和社会保障", "payload": long_payload}, {"title": "取消", "payload": "/cancel"}]
    bot, sleeps = ScriptedBot(), Sleeps()
    sender = delivery(bot, sessions, sleeps)
    await sender.deliver("42", [OutgoingMessage("请选择：", buttons=buttons)])
    await sender.deliver("43", [OutgoingMessage("请选择：", buttons=buttons)])  # stored once
    markup = bot.sent[0]["reply_markup"]
    data = [row[0].callback_data for row in markup.inline_keyboard]
    assert data == [callback_data_for(long_payload), "/cancel"]
    async with sessions() as session:
        stored = (await session.scalars(select(TelegramCallbackPayload))).all()
    assert [(row.token, row.payload) for row in stored] == [(data[0], long_payload)]


async def test_staff_replies_carry_the_staff_members_name(sessions: Sessions) -> None:
    bot, sleeps = ScriptedBot(), Sleeps()
    await delivery(bot, sessions, sleeps).deliver(
        "42", [OutgoingMessage("您好，已收到。", sender_kind="staff", sender_name="王芳")]
    )
    assert bot.sent[0]["text"] == "王芳：您好，已收到。"
