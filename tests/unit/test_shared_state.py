"""What app processes share (`crm_backend.shared`): two instances on one Redis behave as two processes.

Each "process" is its own set of objects with its own Redis client (so its own tokens, locks,
subscriber and presence), over one real migrated database and one real throwaway Redis
(`tests.support.redis_server`). The engine is a scripted stand-in that records when each turn
starts and ends, so overlapping turns of one citizen show.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import WSCloseCode
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from telegram import Update
from telegram.ext import Application

from app.health import HealthCheck
from bot.channels.telegram import TelegramChannel
from bot.channels.telegram_settings import TelegramSettings
from bot.followup import CaseFollowup
from bot.hub import ConversationHub
from bot.notifier import ChannelNotifier
from bot.pipeline import Inbound, MessagePipeline
from bot.responses import Responses
from crm_backend import periodic
from crm_backend.console.feed import LiveEvent, LiveFeed
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import Message, ServiceCase, TelegramUpdate
from crm_backend.services.conversations import resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.settings import PROJECT_ROOT
from crm_backend.shared import ProcessState
from crm_backend.shared.local import LocalState
from crm_backend.shared.redis_state import RedisLocks, RedisState
from tests.support.redis_server import RedisServer

Sessions = async_sessionmaker[AsyncSession]
RESPONSES = Responses.load(PROJECT_ROOT / "domain.yml")
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """Each test its own key space on the module's server."""
    return f"test{next(_prefixes)}:"


@pytest.fixture
async def two_processes(redis_server: RedisServer, prefix: str) -> AsyncIterator[tuple[RedisState, RedisState]]:
    first, second = RedisState.from_url(redis_server.url, prefix), RedisState.from_url(redis_server.url, prefix)
    yield first, second
    await first.close()
    await second.close()


class TimedEngine:
    """Answers 「收到：<text>」 after `turn_seconds`; records each turn's sender, text, start and end."""

    def __init__(self, turn_seconds: float = 0.3) -> None:
        self.turn_seconds = turn_seconds
        self.turns: list[tuple[str, str, float, float]] = []

    async def send(self, sender_id: str, text: str, *, channel: str, metadata: Any = None) -> list[dict[str, Any]]:
        started = time.monotonic()
        await asyncio.sleep(self.turn_seconds)
        self.turns.append((sender_id, text, started, time.monotonic()))
        return [{"recipient_id": sender_id, "text": f"收到：{text}"}]

    def overlapping(self) -> bool:
        """Whether two turns of one sender ran at the same time."""
        turns = sorted(self.turns, key=lambda turn: turn[2])
        return any(a[0] == b[0] and b[2] < a[3] for a, b in itertools.pairwise(turns))

    async def active_form(self, sender_id: str) -> str | None:
        return None


def pipeline_on(sessions: Sessions, engine: TimedEngine, state: ProcessState) -> MessagePipeline:
    return MessagePipeline(
        sessions,
        engine,  # type: ignore[arg-type]
        RESPONSES,
        max_message_chars=2000,
        max_logged_chars=10000,
        locks=state.locks,
    )


async def two_messages_on_two_processes(first: MessagePipeline, second: MessagePipeline) -> None:
    """The citizen's first message reaches one process; their second, a moment later, the other."""
    one = asyncio.create_task(first.handle(Inbound("rest", "citizen-1", "第一条")))
    await asyncio.sleep(0.05)
    two = asyncio.create_task(second.handle(Inbound("rest", "citizen-1", "第二条")))
    await asyncio.gather(one, two)


async def test_in_process_locks_do_not_order_one_senders_messages_across_two_processes(sessions: Sessions) -> None:
    engine = TimedEngine()
    await two_messages_on_two_processes(
        pipeline_on(sessions, engine, LocalState()), pipeline_on(sessions, engine, LocalState())
    )
    assert engine.overlapping()  # why the Redis lock exists


async def test_one_senders_messages_are_handled_in_order_across_two_processes(
    sessions: Sessions, two_processes: tuple[RedisState, RedisState]
) -> None:
    first, second = two_processes
    engine = TimedEngine()
    await two_messages_on_two_processes(pipeline_on(sessions, engine, first), pipeline_on(sessions, engine, second))
    assert not engine.overlapping()
    assert [turn[1] for turn in engine.turns] == ["第一条", "第二条"]


class FakeSocket:
    """What the hub needs of a websocket: frames it was sent."""

    def __init__(self) -> None:
        self.closed = False
        self.close_code: int | None = None
        self.frames: list[dict[str, Any]] = []

    async def send_json(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    async def close(self, *, code: int, message: bytes = b"") -> None:
        self.closed, self.close_code = True, code


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


async def test_a_notice_published_on_one_process_reaches_a_web_chat_open_on_the_other(
    two_processes: tuple[RedisState, RedisState],
) -> None:
    first, second = two_processes
    hub_a, hub_b = ConversationHub(first.fanout), ConversationHub(second.fanout)
    await first.start()
    await second.start()
    socket = FakeSocket()
    hub_a.register(7, socket)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)  # the presence write
    assert await hub_b.publish(7, {"type": "reply", "messages": [{"text": "您的工单已办结"}]})
    await eventually(lambda: socket.frames == [{"type": "reply", "messages": [{"text": "您的工单已办结"}]}])
    assert not await hub_b.publish(8, {"type": "reply", "messages": []})  # nobody has conversation 8 open


async def test_a_console_event_on_one_process_reaches_a_console_held_by_the_other(
    two_processes: tuple[RedisState, RedisState],
) -> None:
    first, second = two_processes
    feed_a, feed_b = LiveFeed(first.fanout), LiveFeed(second.fanout)
    await first.start()
    await second.start()
    console = feed_a.subscribe()
    feed_b.publish(LiveEvent("escalation", 12, 3))
    assert await asyncio.wait_for(console.get(), timeout=5) == LiveEvent("escalation", 12, 3)


async def test_a_lease_is_held_by_exactly_one_of_two_contenders(
    two_processes: tuple[RedisState, RedisState],
) -> None:
    first, second = two_processes
    holders: list[str] = []
    entered = asyncio.Event()

    async def contend(name: str, state: RedisState) -> None:
        async with state.leases.hold("hot-issues", 5) as held:
            if held:
                holders.append(name)
                entered.set()
                await asyncio.sleep(0.2)

    await asyncio.gather(contend("a", first), contend("b", second))
    assert len(holders) == 1
    async with second.leases.hold("hot-issues", 5) as held_again:
        assert held_again == (holders == ["b"])  # the holder keeps it from one pass to the next
    await (first if holders == ["a"] else second).leases.release_all()
    async with (second if holders == ["a"] else first).leases.hold("hot-issues", 5) as taken_over:
        assert taken_over  # given back at stop: the other takes over at once


# --- the 回访 loop on two workers ---------------------------------------------------------------


class FollowupEngine:
    """The engine's side of the 回访: puts the question, slowly; counts who was asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def active_form(self, sender_id: str) -> str | None:
        return None

    async def trigger_intent(self, sender_id: str, intent: str, entities: dict[str, Any]) -> list[dict[str, Any]]:
        self.asked.append(sender_id)
        await asyncio.sleep(0.2)
        return [{"recipient_id": sender_id, "text": "请您对办理结果评价"}]


def followup_worker(sessions: Sessions, engine: FollowupEngine) -> CaseFollowup:
    return CaseFollowup(
        sessions,
        engine,  # type: ignore[arg-type]
        ChannelNotifier(sessions, ConversationHub(), RESPONSES),
        RESPONSES,
        remind_after=timedelta(hours=24),
        archive_after=timedelta(hours=48),
        interval_seconds=0,
    )


async def resolved_cases(sessions: Sessions, senders: list[str]) -> None:
    async with sessions.begin() as session:
        for sender in senders:
            identity = await resolve_identity(session, "web", sender)
            case = await file_case(
                session, identity, Report(description="路灯坏了", location="A1区解放路", contact_phone="13812345678")
            )
            case.status = CaseStatus.RESOLVED.value


async def test_a_followup_pass_run_by_two_workers_at_once_asks_each_citizen_once(sessions: Sessions) -> None:
    senders = ["web:c1", "web:c2", "web:c3"]
    await resolved_cases(sessions, [sender.removeprefix("web:") for sender in senders])
    engine = FollowupEngine()
    await asyncio.gather(followup_worker(sessions, engine).run_once(), followup_worker(sessions, engine).run_once())
    assert sorted(engine.asked) == senders
    async with sessions() as session:
        asked = (await session.scalars(select(ServiceCase.followup_asked_at))).all()
        assert all(stamp is not None for stamp in asked)


async def test_a_followup_question_is_marked_asked_before_the_engine_is_called(sessions: Sessions) -> None:
    await resolved_cases(sessions, ["c1"])
    marks: list[bool] = []

    class Recording(FollowupEngine):
        async def trigger_intent(self, sender_id: str, intent: str, entities: dict[str, Any]) -> list[dict[str, Any]]:
            async with sessions() as session:  # what another worker would read now
                marks.append(await session.scalar(select(ServiceCase.followup_asked_at)) is not None)
            return await super().trigger_intent(sender_id, intent, entities)

    await followup_worker(sessions, Recording()).run_once()
    assert marks == [True]


# --- Redis restarted mid-run -------------------------------------------------------------------


async def test_redis_restarted_mid_run_is_survived(sessions: Sessions, prefix: str) -> None:
    server = RedisServer()
    server.start()
    first, second = RedisState.from_url(server.url, prefix), RedisState.from_url(server.url, prefix)
    try:
        engine = TimedEngine(turn_seconds=0.01)
        pipeline = pipeline_on(sessions, engine, first)
        hub_a, hub_b = ConversationHub(first.fanout), ConversationHub(second.fanout)
        feed_a = LiveFeed(first.fanout)
        await first.start()
        await second.start()
        socket = FakeSocket()
        hub_a.register(5, socket)  # type: ignore[arg-type]
        console = feed_a.subscribe()

        server.kill()
        # A citizen's message is handled and stored; the lock is this process's alone meanwhile.
        outcome = await pipeline.handle(Inbound("rest", "citizen-9", "路灯不亮"))
        assert [reply.text for reply in outcome.replies] == ["收到：路灯不亮"]
        # A notice for a page open on this process still reaches it.
        await hub_a.publish(5, {"type": "reply", "n": 1})
        assert socket.frames == [{"type": "reply", "n": 1}]
        # Background work waits for Redis rather than running twice.
        async with first.leases.hold("followup", 5) as held:
            assert not held

        # A notice published on the other process meanwhile is lost to this one's pages...
        await hub_b.publish(5, {"type": "reply", "n": 2})
        server.start()
        await eventually(lambda: first.fanout.subscribed.is_set() and second.fanout.subscribed.is_set(), 10)
        # ...so once it hears Redis again, the page is told to read its conversation again
        # (1012: it reconnects at once) and the console's stream ends (it reconnects and re-reads).
        await eventually(lambda: socket.closed)
        assert socket.close_code == WSCloseCode.SERVICE_RESTART
        assert socket.frames == [{"type": "reply", "n": 1}]
        assert await asyncio.wait_for(console.get(), timeout=5) is None
        # The page back on this process hears what the other one publishes, live again.
        page = FakeSocket()
        hub_a.register(5, page)  # type: ignore[arg-type]
        await hub_b.publish(5, {"type": "reply", "n": 3})
        await eventually(lambda: page.frames == [{"type": "reply", "n": 3}])
        outcome = await pipeline.handle(Inbound("rest", "citizen-9", "在解放路"))
        assert [reply.text for reply in outcome.replies] == ["收到：在解放路"]
        async with first.leases.hold("followup", 5) as held:
            assert held
        async with sessions() as session:
            logged = (await session.scalars(select(Message.text).where(Message.sender_kind == "citizen"))).all()
        assert logged == ["路灯不亮", "在解放路"]
    finally:
        await first.close()
        await second.close()
        server.stop()


class AnsweringEngine:
    async def status(self) -> dict[str, Any]:
        return {"model_file": "current.tar.gz"}


async def test_healthz_names_redis_down_as_degraded_not_down(sessions: Sessions, prefix: str) -> None:
    """Without Redis the apps serve on (each on its own locks): a balancer must not drop them all."""
    server = RedisServer()
    server.start()
    state = RedisState.from_url(server.url, prefix)
    health = HealthCheck(sessions, AnsweringEngine(), state)  # type: ignore[arg-type]
    try:
        up = await health(None)  # type: ignore[arg-type]
        assert up.status == 200
        assert json.loads(up.text or "") == {
            "status": "ok",
            "checks": {"app": "ok", "database": "ok", "engine": "ok", "shared_state": "ok"},
            "down": [],
        }
        server.kill()
        degraded = await health(None)  # type: ignore[arg-type]
        assert degraded.status == 200
        body = json.loads(degraded.text or "")
        assert body["status"] == "ok" and body["checks"]["shared_state"] == "down"
        assert body["degraded"] == ["shared_state"]
    finally:
        await state.close()
        server.stop()


# --- Telegram: an update stored by one process, recovered by another ---------------------------


async def test_a_telegram_update_taken_up_by_two_processes_at_once_is_processed_once(
    sessions: Sessions, two_processes: tuple[RedisState, RedisState], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process that stored it is still at work when another's recovery pass finds it unprocessed."""
    settings = TelegramSettings(
        bot_token="123456:TEST-token",
        mode="webhook",
        webhook_secret="s" * 16,
        webhook_url=None,
        api_base_url="http://127.0.0.1:9/bot",
    )
    processed: list[int] = []

    async def slow_handlers(application: Any, update: Update) -> None:
        processed.append(update.update_id)
        await asyncio.sleep(0.3)

    monkeypatch.setattr(Application, "process_update", slow_handlers)
    channels = [
        TelegramChannel(
            settings, pipeline_on(sessions, TimedEngine(), state), sessions, RESPONSES, 10000, locks=state.locks
        )
        for state in two_processes
    ]
    for channel in channels:
        channel._ready.set()  # as if the Bot API had answered getMe
    payload = {
        "update_id": 900001,
        "message": {"message_id": 1, "date": 0, "chat": {"id": 77, "type": "private"}, "text": "你好"},
    }
    async with sessions.begin() as session:
        row = TelegramUpdate(update_id=900001, chat_id="77", payload=payload)
        session.add(row)
    stored_by, recovered_by = channels
    first = asyncio.create_task(stored_by._process(row.id, "77"))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, recovered_by._process(row.id, "77"))
    assert processed == [900001]


async def test_a_periodic_job_on_two_processes_runs_its_passes_in_one_of_them(
    two_processes: tuple[RedisState, RedisState],
) -> None:
    passes: list[str] = []

    def job(name: str) -> Any:
        async def run_once() -> None:
            passes.append(name)

        return run_once

    loops = [
        asyncio.create_task(periodic.every(0.05, job(name), "hot-issue ranking", leases=state.leases, lease="hot"))
        for name, state in zip("ab", two_processes, strict=True)
    ]
    await asyncio.sleep(0.6)
    for loop in loops:
        await periodic.cancel(loop)
    assert len(passes) >= 5 and len(set(passes)) == 1


# --- a renewal that loses its cancellation -----------------------------------------------------


class SwallowingLock:
    """A redis-py lock whose renewal loses a cancellation that reaches it, as the client was seen to."""

    def __init__(self) -> None:
        self.renewals = 0

    async def acquire(self) -> bool:
        return True

    async def reacquire(self) -> bool:
        self.renewals += 1
        with contextlib.suppress(asyncio.CancelledError):  # lost
            await asyncio.sleep(0.2)
        return True

    async def release(self) -> None:
        return None


class SwallowingClient:
    def __init__(self) -> None:
        self.made: list[SwallowingLock] = []

    def lock(self, name: str, **options: Any) -> SwallowingLock:
        self.made.append(SwallowingLock())
        return self.made[-1]


@pytest.mark.timeout(20)  # the old code waited for good
async def test_a_senders_lock_is_given_up_even_when_its_renewal_loses_the_cancellation() -> None:
    """Before: the block's end waited for the renewal task for good, and the sender was never served again."""
    client = SwallowingClient()
    locks = RedisLocks(client, "test:", timeout=0.3)  # type: ignore[arg-type]

    async def one_block() -> None:
        async with locks.hold("rest:citizen-15"):
            await asyncio.sleep(0.15)  # ends while the renewal (every 0.1 s) is under way

    await asyncio.wait_for(one_block(), 3)
    await asyncio.wait_for(one_block(), 3)  # the sender's next message gets the lock
    await asyncio.sleep(0.5)
    assert [lock.renewals for lock in client.made] == [1, 1]  # and nothing renews a lock given up
