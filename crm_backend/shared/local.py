"""The in-process implementations: one app process, nothing shared with anyone (the embedded default)."""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from crm_backend.shared import GapHandler, Handler

logger = logging.getLogger(__name__)


class LocalLocks:
    """One `asyncio.Lock` per key; a lock nobody holds or waits for vanishes."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        async with self.lock(key):
            yield


class LocalFanOut:
    """Listeners of this process only; `publish` awaits them in turn.

    A message goes through JSON on the way, as it does through Redis, so what works here works there.
    """

    def __init__(self) -> None:
        self._handlers: defaultdict[str, list[Handler]] = defaultdict(list)
        self._present: Counter[tuple[str, str]] = Counter()
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self._sender: asyncio.Task[None] | None = None

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers[topic].append(handler)

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        await self.deliver(topic, json.loads(json.dumps(message)))

    async def deliver(self, topic: str, message: dict[str, Any]) -> None:
        """Hand a message to this process's listeners of `topic`; one failing listener does not stop the others."""
        for handler in list(self._handlers.get(topic, ())):
            try:
                await handler(message)
            except Exception:  # a listener's bug must not stop delivery to the others
                logger.exception("a listener of %s failed", topic)

    def publish_soon(self, topic: str, message: dict[str, Any]) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
        self._queue.put_nowait((topic, message))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_queued(), name="fanout-publish")

    async def _send_queued(self) -> None:
        assert self._queue is not None
        while not self._queue.empty():
            topic, message = self._queue.get_nowait()
            await self.publish(topic, message)

    def on_gap(self, handler: GapHandler) -> None:
        """Nothing is lost within one process: `handler` is never called."""

    def join(self, topic: str, key: str) -> None:
        self._present[(topic, key)] += 1

    def leave(self, topic: str, key: str) -> None:
        self._present[(topic, key)] -= 1
        if self._present[(topic, key)] <= 0:
            del self._present[(topic, key)]

    def here(self, topic: str, key: str) -> bool:
        """Whether this process has a listener for `key` of `topic`."""
        return self._present[(topic, key)] > 0

    def present_keys(self) -> list[tuple[str, str]]:
        return [pair for pair, count in self._present.items() if count > 0]

    async def listening(self, topic: str, key: str) -> bool:
        return self.here(topic, key)

    async def close(self) -> None:
        """Let queued publishes go out."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)


class LocalLeases:
    """One process holds every lease."""

    @asynccontextmanager
    async def hold(self, name: str, ttl_seconds: float) -> AsyncIterator[bool]:
        yield True


class LocalState:
    """Sender locks, fan-out and leases of one process."""

    def __init__(self) -> None:
        self._locks = LocalLocks()
        self._fanout = LocalFanOut()
        self._leases = LocalLeases()

    @property
    def locks(self) -> LocalLocks:
        return self._locks

    @property
    def fanout(self) -> LocalFanOut:
        return self._fanout

    @property
    def leases(self) -> LocalLeases:
        return self._leases

    async def start(self) -> None:
        return None

    async def reachable(self) -> bool:
        return True

    async def close(self) -> None:
        await self._fanout.close()
