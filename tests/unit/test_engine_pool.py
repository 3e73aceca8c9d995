"""Several engines: each conversation goes to one by consistent hashing and moves only when it must.

The ring is checked on 1,000 fixed sender ids; failover and return on local aiohttp servers
that speak the engine's channel webhook, /status and tracker API (the integration test
`tests/integration/test_engine_pool.py` does it with two real engines).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.engine import EngineClient, EngineUnavailable
from bot.engine_pool import EnginePool, HashRing, engine_for

SENDERS = [f"citizen-{number:04d}" for number in range(1000)]
TOKEN = "engine-token-for-tests-0123456789"


def test_the_ring_gives_each_sender_the_same_engine_whatever_the_order_of_the_list() -> None:
    first = HashRing(["http://e1", "http://e2", "http://e3"])
    second = HashRing(["http://e3", "http://e1", "http://e2"])
    assert [first.home(sender) for sender in SENDERS] == [second.home(sender) for sender in SENDERS]
    # Fixed, not per process (Python's hash() is salted): every app process agrees.
    assert first.home("citizen-0000") == HashRing(["http://e1", "http://e2", "http://e3"]).home("citizen-0000")


@pytest.mark.parametrize("engines", [2, 3])
def test_the_ring_gives_each_engine_a_fair_share_of_conversations(engines: int) -> None:
    ring = HashRing([f"http://127.0.0.1:{5005 + n}" for n in range(engines)])
    shares = Counter(ring.home(sender) for sender in SENDERS)
    assert len(shares) == engines
    fair = len(SENDERS) / engines
    assert all(0.8 * fair <= count <= 1.2 * fair for count in shares.values()), shares


def test_removing_an_engine_moves_only_its_own_conversations() -> None:
    urls = ["http://e1", "http://e2", "http://e3"]
    before = HashRing(urls)
    after = HashRing(urls[:2])
    moved = [sender for sender in SENDERS if before.home(sender) != after.home(sender)]
    assert moved and all(before.home(sender) == "http://e3" for sender in moved)
    assert len(moved) == sum(before.home(sender) == "http://e3" for sender in SENDERS)


def test_the_preference_list_is_the_home_then_every_other_engine_once() -> None:
    ring = HashRing(["http://e1", "http://e2", "http://e3"])
    for sender in SENDERS[:50]:
        order = ring.preference(sender)
        assert order[0] == ring.home(sender) and sorted(order) == ["http://e1", "http://e2", "http://e3"]


# --- failover on local servers speaking the engine's API -------------------------------------


@dataclass
class FakeEngine:
    """A stand-in engine: answers with its name, remembers who it served; can be stopped and slowed."""

    name: str
    port: int = 0
    senders: list[str] = field(default_factory=list)
    arrivals: list[str] = field(default_factory=list)  # in the order the messages reached it
    delay_seconds: float = 0.0
    in_flight: int = 0
    most_in_flight: int = 0
    server: TestServer | None = None

    def app(self) -> web.Application:
        async def webhook(request: web.Request) -> web.Response:
            body = await request.json()
            self.arrivals.append(body["sender"])
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay_seconds)
            finally:
                self.in_flight -= 1
            self.senders.append(body["sender"])
            return web.json_response([{"recipient_id": body["sender"], "text": f"{self.name}: {body['message']}"}])

        async def status(_request: web.Request) -> web.Response:
            return web.json_response({"model_file": "current.tar.gz"})

        async def tracker(request: web.Request) -> web.Response:
            return web.json_response({"slots": {"engine": self.name}, "active_loop": {"name": f"{self.name}_form"}})

        app = web.Application()
        app.router.add_post("/webhooks/app/webhook", webhook)
        app.router.add_get("/status", status)
        app.router.add_get("/conversations/{sender}/tracker", tracker)
        return app

    async def start(self) -> None:
        self.server = TestServer(self.app(), host="127.0.0.1", port=self.port or None)
        await self.server.start_server()
        self.port = self.server.port or 0

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engines() -> AsyncIterator[list[FakeEngine]]:
    started = [FakeEngine("a"), FakeEngine("b")]
    for engine in started:
        await engine.start()
    yield started
    for engine in started:
        if engine.server is not None and not engine.server.closed:
            await engine.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _sender_at_home_on(pool: EnginePool, engine: FakeEngine) -> str:
    return next(sender for sender in SENDERS if pool.home(sender) == engine.url)


async def test_a_conversation_stays_on_its_home_engine(engines: list[FakeEngine], http: aiohttp.ClientSession) -> None:
    pool = EnginePool(http, [e.url for e in engines], TOKEN, timeout_seconds=2)
    for engine in engines:
        sender = _sender_at_home_on(pool, engine)
        for text in ("你好", "路灯坏了", "在人民路"):
            replies = await pool.send(sender, text, channel="rest")
            assert replies[0]["text"] == f"{engine.name}: {text}"
        assert engine.senders == [sender] * 3


async def test_when_its_engine_stops_a_conversation_moves_to_the_next_and_back_when_it_returns(
    engines: list[FakeEngine], http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = engines
    clock = Clock()
    pool = EnginePool(http, [a.url, b.url], TOKEN, timeout_seconds=2, backoff_seconds=10, clock=clock)
    sender = _sender_at_home_on(pool, a)
    await a.stop()
    caplog.set_level(logging.INFO, logger="bot.engine_pool")

    # Refused by its home: the same message is sent once more, to the next engine on the ring.
    assert (await pool.send(sender, "路灯坏了", channel="rest"))[0]["text"] == "b: 路灯坏了"
    assert b.senders == [sender]
    assert f"moved from {a.url} to {b.url}" in caplog.text
    # While the home is marked down, the conversation goes straight to the other engine.
    assert await pool.slots(sender) == {"engine": "b"}
    assert await pool.active_form(sender) == "b_form"

    await a.start()  # back on the same port
    clock.now += 5  # still inside the backoff: stays where it is
    await pool.send(sender, "在人民路", channel="rest")
    assert a.senders == [] and b.senders == [sender, sender]

    clock.now += 6  # the backoff is over: its home is tried again, and answers
    assert (await pool.send(sender, "13800000000", channel="rest"))[0]["text"] == "a: 13800000000"
    assert a.senders == [sender]
    assert f"back on its home engine {a.url}" in caplog.text


async def test_a_health_probe_brings_an_engine_back_before_its_backoff_ends(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    a, b = engines
    pool = EnginePool(http, [a.url, b.url], TOKEN, timeout_seconds=2, backoff_seconds=3600, clock=Clock())
    sender = _sender_at_home_on(pool, a)
    await a.stop()
    await pool.send(sender, "你好", channel="rest")
    assert (await pool.status())["engines_down"] == [a.url]
    await a.start()
    assert (await pool.status())["engines_down"] == []
    await pool.send(sender, "路灯坏了", channel="rest")
    assert a.senders == [sender]


async def test_status_is_ok_while_one_engine_answers_and_down_when_none_does(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    a, b = engines
    pool = EnginePool(http, [a.url, b.url], TOKEN, timeout_seconds=2)
    await b.stop()
    status = await pool.status()
    assert status["model_file"] == "current.tar.gz" and status["engines_down"] == [b.url]
    await a.stop()
    with pytest.raises(EngineUnavailable):
        await pool.status()
    with pytest.raises(EngineUnavailable):
        await pool.send("citizen-0001", "你好", channel="rest")


async def test_a_message_that_timed_out_is_not_sent_to_a_second_engine(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    """The slow engine may still be working on it: a second engine would answer it twice."""
    a, b = engines
    pool = EnginePool(http, [a.url, b.url], TOKEN, timeout_seconds=0.3)
    sender = _sender_at_home_on(pool, a)
    a.delay_seconds = 1.0
    with pytest.raises(EngineUnavailable):
        await pool.send(sender, "你好", channel="rest")
    assert b.senders == []
    # It still answers its status: it stays the conversation's engine.
    a.delay_seconds = 0.0
    await asyncio.sleep(1.0)
    await pool.send(sender, "路灯坏了", channel="rest")
    assert b.senders == [] and a.senders[-1] == sender


async def test_one_url_gives_the_plain_client_and_several_a_pool(http: aiohttp.ClientSession) -> None:
    single = engine_for(http, ["http://127.0.0.1:5005"], TOKEN, 5)
    assert type(single) is EngineClient
    assert isinstance(engine_for(http, ["http://127.0.0.1:5005", "http://127.0.0.1:5006"], TOKEN, 5), EnginePool)


# --- turns in flight -------------------------------------------------------------------------


async def test_an_engine_works_on_at_most_max_in_flight_messages_taken_first_come_first_served(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    engine = engines[0]
    engine.delay_seconds = 0.05
    client = EngineClient(http, engine.url, TOKEN, timeout_seconds=5, max_in_flight=2)
    senders = [f"rest:c{number}" for number in range(8)]
    replies = await asyncio.gather(*(client.send(sender, "你好", channel="rest") for sender in senders))
    assert [reply[0]["text"] for reply in replies] == ["a: 你好"] * 8
    assert engine.most_in_flight == 2
    assert engine.arrivals == senders


async def test_without_a_limit_every_message_goes_to_the_engine_at_once(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    engine = engines[0]
    engine.delay_seconds = 0.1
    client = EngineClient(http, engine.url, TOKEN, timeout_seconds=5, max_in_flight=0)
    await asyncio.gather(*(client.send(f"rest:c{number}", "你好", channel="rest") for number in range(6)))
    assert engine.most_in_flight == 6


async def test_the_time_a_message_waits_for_a_turn_counts_against_its_timeout(
    engines: list[FakeEngine], http: aiohttp.ClientSession
) -> None:
    """A citizen hears 系统繁忙 after ENGINE_TIMEOUT_SECONDS however long the queue, not after a multiple of it."""
    engine = engines[0]
    engine.delay_seconds = 2.0  # stuck
    client = EngineClient(http, engine.url, TOKEN, timeout_seconds=0.5, max_in_flight=1)
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(client.send(f"rest:c{number}", "你好", channel="rest") for number in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, EngineUnavailable) for outcome in outcomes)
    assert time.monotonic() - started < 0.9  # one budget, where queueing outside it would take 1.5 s
    assert engine.arrivals[0] == "rest:c0"
