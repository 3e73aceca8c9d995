"""The Redis implementations, chosen by ``REDIS_URL``: several app processes share one Redis.

Per-sender ordering is a Redis lock per sender (redis-py's `Lock`: ``SET NX PX`` with a random
token, released by a script that checks the token), not a PostgreSQL advisory lock, because:

* a citizen's message holds its lock for the engine's whole turn (seconds; a replay of several
  waiting messages longer). A session-level advisory lock would pin one pooled database
  connection per waiting and per answering citizen for that long, so a peak of conversations
  would drain the pool that the work itself needs; a Redis lock costs no connection while held
  and its waiters poll;
* it expires by itself (``timeout``) if its holder dies, and is kept alive while the holder
  works (renewed every third of it), so no dead process blocks a citizen for long;
* the embedded default runs on SQLite, which has no advisory locks, and ``REDIS_URL`` is what
  says "several processes" in the first place;
* it fails soft: with Redis down the block runs under this process's lock alone (ordered within
  the process, which is all one process ever had).

Live fan-out is Redis pub/sub on one channel (``<prefix>fanout``) carrying ``{topic, message}``;
each process has one subscriber task that hands messages to its local listeners (the hub's
websockets, the console feed's queues). A publish that cannot reach Redis, or made while this
process's subscriber is reconnecting, is delivered to this process's listeners directly: a
citizen on this process still gets it live. Pub/sub delivers at most once, so what was
published while a subscriber was away is lost to it: when it subscribes again it tells its
listeners (`FanOut.on_gap`), and they make their open pages re-read the database.

Who listens where (an open web chat page) is a sorted set per key, member the process, score
the time its claim ends, renewed while the page stays open.

Leases of background work are ``SET NX PX`` keys holding the owner's token, taken or renewed by
one script and kept alive while the work runs; a process that stops gives its leases back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import LockError, RedisError

from crm_backend.shared import GapHandler, Handler
from crm_backend.shared.local import LocalFanOut, LocalLocks

logger = logging.getLogger(__name__)

PREFIX = "crm12345:"
LOCK_TIMEOUT_SECONDS = 30.0  # a holder that died frees its sender after this; a live one renews it
LOCK_WAIT_SECONDS = 120.0  # a message waits this long for its sender's earlier one, then goes on (logged)
LOCK_POLL_SECONDS = 0.05
PRESENCE_TTL_SECONDS = 60.0  # an open page's claim, renewed every third of it
RECONNECT_SECONDS = 1.0
SOCKET_TIMEOUT_SECONDS = 5.0
HEALTH_TIMEOUT_SECONDS = 1.0  # /healthz waits no longer for Redis
FAILURES = (RedisError, OSError, asyncio.TimeoutError)
KEEPER_STOP_SECONDS = 1.0  # how long a block's end waits for its renewal task to finish

# Take the lease if free, renew it if ours: 1 when held by ARGV[1] afterwards.
_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_GIVE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Keeper:
    """Renews something held in Redis every `every` seconds until `stop`.

    A renewal cancelled inside the Redis client can lose the cancellation (the keeper of a
    sender's lock went on renewing after its block ended, and the block waited for it for good:
    the citizen's messages were never answered again). So the keeper also stops on a flag, and
    `stop` waits for it a bounded time.
    """

    def __init__(self, renew: Callable[[], Awaitable[Any]], every: float) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(renew, every))

    async def _run(self, renew: Callable[[], Awaitable[Any]], every: float) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), every)
                return
            except TimeoutError:
                await renew()

    async def stop(self) -> None:
        """Stop renewing; returns within `KEEPER_STOP_SECONDS` whatever the renewal does."""
        self._stopping.set()
        self._task.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=KEEPER_STOP_SECONDS)
        if not done:
            logger.warning("a renewal of a Redis lock or lease did not stop at once; it ends at its next turn")


class RedisLocks:
    """A Redis lock per key, behind this process's own lock for the key (see the module docstring)."""

    def __init__(
        self,
        client: Redis,
        prefix: str = PREFIX,
        *,
        timeout: float = LOCK_TIMEOUT_SECONDS,
        wait: float = LOCK_WAIT_SECONDS,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._timeout = timeout
        self._wait = wait
        self._local = LocalLocks()

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        # Contenders of this process queue here first, so Redis sees one of them at a time.
        async with self._local.hold(key):
            lock = self._client.lock(
                f"{self._prefix}lock:{key}",
                timeout=self._timeout,
                blocking_timeout=self._wait,
                sleep=LOCK_POLL_SECONDS,
                thread_local=False,
            )
            try:
                acquired = bool(await lock.acquire())
                if not acquired:
                    logger.warning("lock %s still held elsewhere after %.0fs; going on without it", key, self._wait)
            except FAILURES as error:
                logger.warning("lock %s not taken in Redis (%s); held in this process only", key, error)
                acquired = False
            keeper = Keeper(lambda: self._renew(lock, key), self._timeout / 3) if acquired else None
            try:
                yield
            finally:
                if keeper is not None:
                    await keeper.stop()
                    try:
                        await lock.release()
                    except (LockError, *FAILURES) as error:
                        logger.warning("lock %s not released in Redis (%s); it expires by itself", key, error)

    @staticmethod
    async def _renew(lock: Any, key: str) -> None:
        """Renew the lock while its block runs (a long replay, a slow engine)."""
        try:
            await lock.reacquire()
        except (LockError, *FAILURES) as error:
            logger.warning("lock %s not renewed (%s)", key, error)


class RedisFanOut:
    """Pub/sub between processes; each process's subscriber delivers to its local listeners."""

    def __init__(self, client: Redis, prefix: str = PREFIX, *, presence_ttl: float = PRESENCE_TTL_SECONDS) -> None:
        self._client = client
        self._prefix = prefix
        self._channel = f"{prefix}fanout"
        self._local = LocalFanOut()
        self._process = secrets.token_hex(8)  # this process, in the presence sets
        self._presence_ttl = presence_ttl
        self._subscribed = asyncio.Event()
        self._presence_changed = asyncio.Event()
        self._gone: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._gap_handlers: list[GapHandler] = []

    @property
    def subscribed(self) -> asyncio.Event:
        """Set while this process's subscriber is connected."""
        return self._subscribed

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._local.subscribe(topic, handler)

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        data = json.dumps({"topic": topic, "message": message}, ensure_ascii=False)
        try:
            await self._client.publish(self._channel, data)
        except FAILURES as error:
            logger.warning("fan-out of %s not published (%s); delivered in this process only", topic, error)
            await self._local.deliver(topic, json.loads(data)["message"])
            return
        if not self._subscribed.is_set():
            # Our own subscriber is reconnecting and will not hear it: this process's listeners get it now.
            await self._local.deliver(topic, json.loads(data)["message"])

    def publish_soon(self, topic: str, message: dict[str, Any]) -> None:
        self._queue.put_nowait((topic, message))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_queued(), name="fanout-publish")

    async def _send_queued(self) -> None:
        while not self._queue.empty():
            topic, message = self._queue.get_nowait()
            await self.publish(topic, message)

    def on_gap(self, handler: GapHandler) -> None:
        self._gap_handlers.append(handler)

    def join(self, topic: str, key: str) -> None:
        self._local.join(topic, key)
        self._gone.discard((topic, key))
        self._presence_changed.set()

    def leave(self, topic: str, key: str) -> None:
        self._local.leave(topic, key)
        if not self._local.here(topic, key):
            self._gone.add((topic, key))
            self._presence_changed.set()

    async def listening(self, topic: str, key: str) -> bool:
        if self._local.here(topic, key):
            return True
        try:
            found = await self._client.zcount(self._presence_key(topic, key), time.time(), "+inf")
        except FAILURES as error:
            logger.warning("presence of %s %s unknown (%s)", topic, key, error)
            return False
        return int(found) > 0

    def _presence_key(self, topic: str, key: str) -> str:
        return f"{self._prefix}presence:{topic}:{key}"

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="fanout-subscriber"),
            asyncio.create_task(self._keep_presence(), name="fanout-presence"),
        ]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout=SOCKET_TIMEOUT_SECONDS)
        if not self._subscribed.is_set():
            logger.warning("fan-out: Redis not reached at start; delivering in this process until it is")

    async def _listen(self) -> None:
        """Hand every message of the channel to this process's listeners; reconnect when Redis goes away."""
        outage = False
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed.set()
                if outage:
                    logger.info("fan-out: subscribed to Redis again; listeners resync")
                    outage = False
                    self._presence_changed.set()  # a restarted Redis forgot who listens where
                    await self._tell_gap()
                while True:
                    raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if raw is None or raw.get("type") != "message":
                        continue
                    envelope = json.loads(raw["data"])
                    await self._local.deliver(envelope["topic"], envelope["message"])
            except asyncio.CancelledError:
                raise
            except Exception as error:  # Redis gone (or a bad message): resubscribe, never stop
                if not outage:
                    logger.warning("fan-out: subscriber lost Redis (%s); delivering in this process meanwhile", error)
                outage = True
            finally:
                self._subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _tell_gap(self) -> None:
        """What was published while this subscriber was away is lost: listeners resync from the database."""
        for handler in list(self._gap_handlers):
            try:
                await handler()
            except Exception:  # one listener's bug must not keep the others stale
                logger.exception("fan-out: a listener failed to resync")

    async def _keep_presence(self) -> None:
        """Write this process's open pages to Redis when they change and every third of their TTL."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._presence_changed.wait(), timeout=self._presence_ttl / 3)
            self._presence_changed.clear()
            gone, self._gone = self._gone, set()
            try:
                until = time.time() + self._presence_ttl
                async with self._client.pipeline(transaction=False) as pipe:
                    for topic, key in self._local.present_keys():
                        name = self._presence_key(topic, key)
                        pipe.zadd(name, {self._process: until})
                        pipe.zremrangebyscore(name, "-inf", time.time())
                        pipe.expire(name, int(self._presence_ttl) + 1)
                    for topic, key in gone:
                        pipe.zrem(self._presence_key(topic, key), self._process)
                    await pipe.execute()
            except FAILURES as error:
                logger.warning("fan-out: presence not written (%s)", error)
                self._gone |= {pair for pair in gone if not self._local.here(*pair)}

    async def close(self) -> None:
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*FAILURES):
            async with self._client.pipeline(transaction=False) as pipe:
                for topic, key in self._local.present_keys():
                    pipe.zrem(self._presence_key(topic, key), self._process)
                await pipe.execute()


class RedisLeases:
    """``SET NX PX`` leases with this process's token (see the module docstring)."""

    def __init__(self, client: Redis, prefix: str = PREFIX) -> None:
        self._client = client
        self._prefix = prefix
        self._owner = secrets.token_hex(16)
        self._take = client.register_script(_TAKE_LEASE)
        self._give = client.register_script(_GIVE_LEASE)
        self._held: set[str] = set()

    @asynccontextmanager
    async def hold(self, name: str, ttl_seconds: float) -> AsyncIterator[bool]:
        key = f"{self._prefix}lease:{name}"
        held = await self._renew(key, ttl_seconds)
        if not held:
            yield False
            return
        keeper = Keeper(lambda: self._renew(key, ttl_seconds), ttl_seconds / 3)
        try:
            yield True
        finally:
            await keeper.stop()
            await self._renew(key, ttl_seconds)  # kept from the end of this pass until the next

    async def _renew(self, key: str, ttl_seconds: float) -> bool:
        try:
            held = bool(await self._take(keys=[key], args=[self._owner, max(1, int(ttl_seconds * 1000))]))
        except FAILURES as error:
            logger.warning("lease %s not asked for (%s); the work waits for Redis", key, error)
            return False
        if held:
            self._held.add(key)
        else:
            self._held.discard(key)
        return held

    async def release_all(self) -> None:
        """Give back every lease this process holds, so another takes over at once."""
        for key in list(self._held):
            with contextlib.suppress(*FAILURES):
                await self._give(keys=[key], args=[self._owner])
            self._held.discard(key)


class RedisState:
    """Sender locks, fan-out and leases shared through one Redis."""

    def __init__(self, client: Redis, prefix: str = PREFIX) -> None:
        self._client = client
        self._locks = RedisLocks(client, prefix)
        self._fanout = RedisFanOut(client, prefix)
        self._leases = RedisLeases(client, prefix)

    @classmethod
    def from_url(cls, url: str, prefix: str = PREFIX) -> RedisState:
        """A client for `url` (it connects on first use, not here)."""
        client = Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            health_check_interval=10,
        )
        return cls(client, prefix)

    @property
    def locks(self) -> RedisLocks:
        return self._locks

    @property
    def fanout(self) -> RedisFanOut:
        return self._fanout

    @property
    def leases(self) -> RedisLeases:
        return self._leases

    async def start(self) -> None:
        await self._fanout.start()

    async def reachable(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
                return bool(await self._client.ping())
        except (RedisError, OSError, TimeoutError) as error:
            logger.warning("health: redis does not answer: %s", error)
            return False

    async def close(self) -> None:
        await self._fanout.close()
        await self._leases.release_all()
        await self._client.aclose()
