"""Several Rasa engines behind one client: each conversation sticks to one engine.

The engines share the tracker store (PostgreSQL) and Rasa's `RedisLockStore` (see
`bot.engine_launcher`), so any engine can carry on any conversation. Why send a conversation
to one engine anyway? Rasa's open-source `RedisLockStore` issues a conversation's tickets with
a read-modify-write that is not atomic between servers (RasaHQ/rasa#9213): two engines that
receive messages of one conversation at the same moment can both take the lock and work on the
same tracker, each writing its own events over the other's. Sticky routing (a consistent hash
of the sender over the engines, with the app's per-sender ordering in front of it) means one
conversation is only ever in one engine at a time, so the race has nothing to race on; the
lock store is the second line of defence.

A conversation moves only when its engine is gone (connection refused or dropped,
`EngineUnreachable`): that engine is marked down for a short backoff and the message is sent
once more, to the next engine on the ring. When the backoff is over (or a health probe finds it
answering again) the conversation goes home. A *timeout* does not move the message: the slow
engine may still be working on it, and a second engine would answer it twice; the pipeline
tells the citizen the system is busy and `bot.replay` sends it again later, as with one engine.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bot.engine import DEFAULT_MAX_IN_FLIGHT, EngineClient, EngineUnavailable, EngineUnreachable, HttpSource

logger = logging.getLogger(__name__)

T = TypeVar("T")

VIRTUAL_NODES = 160  # points per engine on the ring: shares within about 10 % of fair
BACKOFF_SECONDS = 10.0
MAX_TRACKED_MOVES = 10_000  # conversations remembered as away from home (for the log only)


def _point(key: str) -> int:
    """A fixed 64-bit position on the ring (not Python's `hash`, which differs per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing with virtual nodes: removing a node moves only that node's keys."""

    def __init__(self, nodes: Sequence[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        if not nodes:
            raise ValueError("a hash ring needs at least one node")
        ring = sorted((_point(f"{node}#{replica}"), node) for node in set(nodes) for replica in range(virtual_nodes))
        self._points = [point for point, _node in ring]
        self._nodes = [node for _point, node in ring]
        self._count = len(set(nodes))

    def preference(self, key: str) -> list[str]:
        """Every node once, in the order the ring meets them clockwise from the key: home first."""
        start = bisect.bisect(self._points, _point(key))
        order: list[str] = []
        for offset in range(len(self._nodes)):
            node = self._nodes[(start + offset) % len(self._nodes)]
            if node not in order:
                order.append(node)
                if len(order) == self._count:
                    break
        return order

    def home(self, key: str) -> str:
        """The node a key belongs to while every node lives."""
        return self.preference(key)[0]


class EnginePool(EngineClient):
    """Several engines with `EngineClient`'s interface: the pipeline, the 回访 loop, the replay
    and the console take it unchanged.

    Conversation calls (`send`, `trigger_intent`, `slots`, `active_form`) go to the sender's
    engine on the ring; `status` answers for the pool (ok while one engine answers).
    """

    def __init__(
        self,
        http: HttpSource,
        base_urls: Sequence[str],
        token: str,
        timeout_seconds: float,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        backoff_seconds: float = BACKOFF_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            base_urls: the engines (``http://host:port``), in any order: every app process
                builds the same ring from the same set.
            max_in_flight: turns this process lets each engine work on at once (`EngineClient`).
            backoff_seconds: how long an engine that refused is left alone before it is tried again.
            clock: monotonic seconds (tests move it).
        """
        self._engines = {url: EngineClient(http, url, token, timeout_seconds, max_in_flight) for url in base_urls}
        self._ring = HashRing(list(self._engines))
        self._backoff = backoff_seconds
        self._clock = clock
        self._down_until: dict[str, float] = {}
        self._away: OrderedDict[str, str] = OrderedDict()  # sender -> engine, while not at home

    @property
    def base_url(self) -> str:
        """The engines' addresses, comma-separated (as ``RASA_URLS`` names them)."""
        return ",".join(self._engines)

    def home(self, sender_id: str) -> str:
        """The engine a conversation belongs to while every engine lives."""
        return self._ring.home(sender_id)

    # --- the conversation calls ---------------------------------------------------------------

    async def send(
        self, sender_id: str, text: str, *, channel: str, metadata: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """`EngineClient.send` on the sender's engine (the next one if it is gone)."""
        return await self._on_engine_of(
            sender_id, lambda engine: engine.send(sender_id, text, channel=channel, metadata=metadata)
        )

    async def trigger_intent(self, sender_id: str, intent: str, entities: dict[str, str]) -> list[dict[str, Any]]:
        """`EngineClient.trigger_intent` on the sender's engine (the next one if it is gone)."""
        return await self._on_engine_of(sender_id, lambda engine: engine.trigger_intent(sender_id, intent, entities))

    async def slots(self, sender_id: str) -> dict[str, Any]:
        """`EngineClient.slots` from the sender's engine (any engine reads the shared tracker)."""
        return await self._on_engine_of(sender_id, lambda engine: engine.slots(sender_id))

    async def active_form(self, sender_id: str) -> str | None:
        """`EngineClient.active_form` from the sender's engine."""
        return await self._on_engine_of(sender_id, lambda engine: engine.active_form(sender_id))

    async def status(self) -> dict[str, Any]:
        """Probe every engine: the first healthy one's /status, plus ``engines_down``.

        Also the health probe: an engine that answers is up again before its backoff ends.

        Raises:
            EngineUnavailable: no engine answers with a model loaded.
        """
        urls = list(self._engines)
        results = await asyncio.gather(*(self._engines[url].status() for url in urls), return_exceptions=True)
        healthy: dict[str, Any] | None = None
        down: list[str] = []
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, EngineUnavailable):
                self._mark_down(url, result)
                down.append(url)
            elif isinstance(result, BaseException):
                raise result
            else:
                self._mark_up(url)
                healthy = healthy or result
        if healthy is None:
            raise EngineUnavailable(f"no engine answers: {', '.join(down)}")
        return {**healthy, "engines_down": down}

    # --- routing ---------------------------------------------------------------------------------

    async def _on_engine_of(self, sender_id: str, call: Callable[[EngineClient], Awaitable[T]]) -> T:
        """Run `call` on the sender's engine; if that engine is gone, once more on the next one.

        Raises:
            EngineUnavailable: the engine timed out or answered an error, or no engine is left.
        """
        order = self._ring.preference(sender_id)
        candidates = [url for url in order if not self._is_down(url)] or order[:1]
        for attempt, url in enumerate(candidates[:2]):
            self._note_route(sender_id, url, order[0])
            try:
                return await call(self._engines[url])
            except EngineUnreachable as error:
                self._mark_down(url, error)
                if attempt == 1 or len(candidates) < 2:
                    raise
        raise AssertionError("unreachable: the loop returns or raises")

    def _is_down(self, url: str) -> bool:
        return self._down_until.get(url, 0.0) > self._clock()

    def _mark_down(self, url: str, error: Exception) -> None:
        if not self._is_down(url):
            logger.warning("engine %s is down for %.0fs: %s", url, self._backoff, error)
        self._down_until[url] = self._clock() + self._backoff

    def _mark_up(self, url: str) -> None:
        if self._down_until.pop(url, None) is not None:
            logger.info("engine %s answers again", url)

    def _note_route(self, sender_id: str, url: str, home: str) -> None:
        """Log a conversation leaving its home engine, and coming back."""
        if url != home:
            if self._away.get(sender_id) != url:
                logger.info("conversation %s moved from %s to %s", sender_id, self._away.get(sender_id, home), url)
            self._away[sender_id] = url
            self._away.move_to_end(sender_id)
            if len(self._away) > MAX_TRACKED_MOVES:
                self._away.popitem(last=False)
        elif self._away.pop(sender_id, None) is not None:
            logger.info("conversation %s back on its home engine %s", sender_id, home)


def engine_for(
    http: HttpSource,
    base_urls: Sequence[str],
    token: str,
    timeout_seconds: float,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> EngineClient:
    """The app's way to the dialogue: one engine's client, or a pool when several are named."""
    if len(base_urls) == 1:
        return EngineClient(http, base_urls[0], token, timeout_seconds, max_in_flight)
    return EnginePool(http, base_urls, token, timeout_seconds, max_in_flight=max_in_flight)
