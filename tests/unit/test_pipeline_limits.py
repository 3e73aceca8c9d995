"""The per-sender message limit counts new messages: a resend of a logged message is not one.

A widget or an integrator sends a message again under its id when no answer came (a timeout, a
dropped socket); counting those would refuse a patient citizen during an outage. A flood of new
messages is still refused before anything is stored or asked.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.pipeline import Inbound, MessagePipeline, TooManyMessages
from crm_backend.models import Message
from crm_backend.services.limits import DatabaseRateLimiter, Limit
from tests.unit.test_replay import RESPONSES, ScriptedEngine

Sessions = async_sessionmaker[AsyncSession]
TWO_A_MINUTE = Limit("messages", 2, timedelta(minutes=1))


def limited(sessions: Sessions) -> tuple[MessagePipeline, ScriptedEngine]:
    engine = ScriptedEngine()
    pipeline = MessagePipeline(
        sessions,
        engine,  # type: ignore[arg-type]
        RESPONSES,
        max_message_chars=2000,
        max_logged_chars=10000,
        limiter=DatabaseRateLimiter(sessions),
        message_limit=TWO_A_MINUTE,
    )
    return pipeline, engine


async def logged_in(sessions: Sessions) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).where(Message.direction == "in")) or 0)


async def test_resends_of_a_logged_message_are_not_counted(sessions: Sessions) -> None:
    pipeline, engine = limited(sessions)
    await pipeline.handle(Inbound("rest", "patient", "路灯坏了", client_msg_id="m1"))
    for _ in range(5):
        outcome = await pipeline.handle(Inbound("rest", "patient", "路灯坏了", client_msg_id="m1"))
        assert outcome.duplicate
        assert [reply.text for reply in outcome.earlier_answers] == ["收到：路灯坏了"]
    # The limit still has room for the second new message, and refuses the third.
    await pipeline.handle(Inbound("rest", "patient", "在人民路", client_msg_id="m2"))
    with pytest.raises(TooManyMessages):
        await pipeline.handle(Inbound("rest", "patient", "电话13800000000", client_msg_id="m3"))
    assert engine.received == [("rest:patient", "路灯坏了"), ("rest:patient", "在人民路")]
    assert await logged_in(sessions) == 2


async def test_a_flood_of_new_messages_is_refused_before_anything_is_stored(sessions: Sessions) -> None:
    pipeline, engine = limited(sessions)
    refused = 0
    for number in range(6):
        try:
            await pipeline.handle(Inbound("rest", "flood", f"第{number}条", client_msg_id=f"f{number}"))
        except TooManyMessages:
            refused += 1
    assert refused == 4
    assert len(engine.received) == 2
    assert await logged_in(sessions) == 2
