"""Messages the engine never answered are replayed in order, citizen by citizen, never while staff hold the
conversation.

The database is the real migrated one and the texts are the domain's; the engine is a scripted
stand-in for `EngineClient` that can be down (the integration test uses the real engine).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.engine import EngineUnavailable
from bot.hub import ConversationHub
from bot.notifier import ChannelNotifier
from bot.pipeline import Inbound, MessagePipeline
from bot.replay import EngineReplay
from bot.responses import Responses
from crm_backend.models import Conversation, Message
from crm_backend.services.conversations import pending_counts
from crm_backend.settings import PROJECT_ROOT

Sessions = async_sessionmaker[AsyncSession]
RESPONSES = Responses.load(PROJECT_ROOT / "domain.yml")
BUSY = RESPONSES.text("utter_system_busy")


class ScriptedEngine:
    """Answers every message with 「收到：<message>」 (转人工: the handoff marker) unless down; records what it got."""

    def __init__(self) -> None:
        self.down = False
        self.received: list[tuple[str, str]] = []

    async def send(self, sender_id: str, text: str, *, channel: str, metadata: Any = None) -> list[dict[str, Any]]:
        if self.down:
            raise EngineUnavailable("connection refused")
        self.received.append((sender_id, text))
        if text == "转人工":
            return [{"recipient_id": sender_id, "custom": {"handoff": True}}]
        return [{"recipient_id": sender_id, "text": f"收到：{text}"}]

    async def status(self) -> dict[str, Any]:
        if self.down:
            raise EngineUnavailable("connection refused")
        return {"model_file": "current.tar.gz"}


def intro(text: str) -> str:
    return RESPONSES.text("utter_replay_intro").format(text=text)


def build(sessions: Sessions) -> tuple[MessagePipeline, EngineReplay, ScriptedEngine]:
    engine = ScriptedEngine()
    pipeline = MessagePipeline(sessions, engine, RESPONSES, max_message_chars=2000, max_logged_chars=10000)  # type: ignore[arg-type]
    notifier = ChannelNotifier(sessions, ConversationHub(), RESPONSES)
    replay = EngineReplay(sessions, engine, pipeline, notifier, interval_seconds=0, settle_seconds=0)  # type: ignore[arg-type]
    return pipeline, replay, engine


async def say(pipeline: MessagePipeline, citizen: str, text: str) -> list[str]:
    outcome = await pipeline.handle(Inbound("web", citizen, text))
    return [reply.text for reply in outcome.replies]


async def waiting(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        return list(
            (
                await session.scalars(
                    select(Message.text).where(Message.engine_pending_since.is_not(None)).order_by(Message.id)
                )
            ).all()
        )


async def logged_out(sessions: Sessions, citizen_conversation: int) -> list[str]:
    async with sessions() as session:
        return list(
            (
                await session.scalars(
                    select(Message.text)
                    .where(Message.conversation_id == citizen_conversation, Message.direction == "out")
                    .order_by(Message.id)
                )
            ).all()
        )


async def test_an_answered_message_is_not_left_waiting(sessions: Sessions) -> None:
    pipeline, _, _ = build(sessions)
    assert await say(pipeline, "a", "路灯坏了") == ["收到：路灯坏了"]
    assert await waiting(sessions) == []


async def test_messages_the_engine_missed_go_first_in_order_when_the_citizen_writes_again(sessions: Sessions) -> None:
    pipeline, _, engine = build(sessions)
    engine.down = True
    assert await say(pipeline, "a", "第一条") == [BUSY]
    assert await say(pipeline, "a", "第二条") == [BUSY]
    assert await waiting(sessions) == ["第一条", "第二条"]
    engine.down = False
    assert await say(pipeline, "a", "第三条") == [
        intro("第一条"),
        "收到：第一条",
        intro("第二条"),
        "收到：第二条",
        "收到：第三条",
    ]
    assert [text for _, text in engine.received] == ["第一条", "第二条", "第三条"]
    assert await waiting(sessions) == []


async def test_the_loop_replays_each_citizen_in_order_once_the_engine_is_back(sessions: Sessions) -> None:
    pipeline, replay, engine = build(sessions)
    engine.down = True
    for citizen, text in (("a", "甲一"), ("b", "乙一"), ("a", "甲二")):
        await say(pipeline, citizen, text)
    assert await replay.run_once() == 0  # still down: nothing is tried
    assert engine.received == []
    engine.down = False
    assert await replay.run_once() == 2
    assert engine.received == [("web:a", "甲一"), ("web:a", "甲二"), ("web:b", "乙一")]
    assert await waiting(sessions) == []
    async with sessions() as session:
        conversation_a = (await session.scalars(select(Conversation.id).order_by(Conversation.id))).first()
    assert conversation_a is not None
    replayed = [intro("甲一"), "收到：甲一", intro("甲二"), "收到：甲二"]
    assert await logged_out(sessions, conversation_a) == [BUSY, BUSY, *replayed]
    assert await replay.run_once() == 0  # replayed once, not again


async def test_a_long_message_is_quoted_by_its_first_thirty_characters(sessions: Sessions) -> None:
    pipeline, replay, engine = build(sessions)
    text = "我家小区门口的路灯已经坏了整整一个星期了，晚上出门一片漆黑，老人孩子都很容易摔倒"
    engine.down = True
    await say(pipeline, "a", text)
    engine.down = False
    await replay.run_once()
    async with sessions() as session:
        intros = (await session.scalars(select(Message.text).where(Message.sender_kind == "system"))).all()
    assert intros[-1] == intro(text[:30] + "…")


async def test_nothing_is_replayed_while_staff_hold_the_conversation(sessions: Sessions) -> None:
    pipeline, replay, engine = build(sessions)
    engine.down = True
    await say(pipeline, "a", "我要投诉")
    async with sessions.begin() as session:
        conversation = (await session.scalars(select(Conversation))).one()
        conversation.handoff_status = "staff"  # staff took the conversation over
    assert await say(pipeline, "a", "有人吗") == []  # staff's message, not the engine's
    engine.down = False
    assert await replay.run_once() == 0
    assert engine.received == []
    assert await waiting(sessions) == ["我要投诉"]  # still marked for staff to see; never 「有人吗」


async def test_staff_are_told_how_many_messages_of_a_conversation_wait_for_the_engine(sessions: Sessions) -> None:
    pipeline, _, engine = build(sessions)
    await say(pipeline, "a", "先说一句")
    engine.down = True
    await say(pipeline, "a", "第一条")
    await say(pipeline, "a", "第二条")
    await say(pipeline, "b", "乙一")
    async with sessions() as session:
        conversations = list((await session.scalars(select(Conversation.id).order_by(Conversation.id))).all())
        assert await pending_counts(session, conversations) == {conversations[0]: 2, conversations[1]: 1}
        assert await pending_counts(session, []) == {}


async def test_when_a_replayed_message_hands_over_to_staff_the_rest_is_left_to_them(sessions: Sessions) -> None:
    pipeline, replay, engine = build(sessions)
    engine.down = True
    for text in ("转人工", "路灯坏了"):
        await say(pipeline, "a", text)
    engine.down = False
    assert await replay.run_once() == 1
    assert engine.received == [("web:a", "转人工")]
    assert await waiting(sessions) == []  # 路灯坏了 is for staff to read, never sent to the engine
