"""What app processes share in the moment: sender locks, live fan-out and leases of background work.

Everything durable lives in the database. What lives in one process's memory and breaks with
two of them is behind the three interfaces here, each with two implementations:

* in-process (`crm_backend.shared.local`): the embedded default, one app process, behaviour as
  before; nothing to install or run;
* Redis (`crm_backend.shared.redis_state`), chosen by ``REDIS_URL``: several app processes
  behind a proxy share one Redis.

`open_shared_state` picks one; the composition root hands ``.locks`` to the message
pipeline and the Telegram channel, ``.fanout`` to the web chat hub and the console's live feed,
``.leases`` to the background loops, and awaits ``start()`` and ``close()`` around the app.

This package lives in ``crm_backend`` rather than ``bot`` because both sides use it: the
pipeline, the hub and the 回访 loop in ``bot``, the console's live feed and the hot-issue job in
``crm_backend``; and ``crm_backend`` must not import ``bot``.

Redis failing is survived, never fatal: a lock that cannot be taken in Redis is held in this
process only, a publish that cannot reach Redis is delivered to this process's listeners, and a
lease that cannot be asked for is not held (the work waits for Redis; its state is in the
database). Each is logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

# A listener of a fan-out topic; it gets the JSON object that was published.
Handler = Callable[[dict[str, Any]], Awaitable[None]]
# Told that messages may have been lost here (see `FanOut.on_gap`).
GapHandler = Callable[[], Awaitable[None]]


class SenderLocks(Protocol):
    """One holder at a time per key (a citizen's sender id, a Telegram chat), across every process."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """Wait for the key's lock and hold it for the ``async with`` block.

        Never raises for the lock's own sake: when the shared lock cannot be had (its store is
        down, or the wait ran out) the block runs under this process's lock alone, and it is logged.
        """
        ...


class FanOut(Protocol):
    """Messages published on a topic reach every process's listeners of that topic, this one included.

    Also who listens for what (``join`` / ``leave`` / ``listening``): the web chat hub tells
    staff whether a citizen has a page open on any process.
    """

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler` with every message of `topic` (register before `start`)."""
        ...

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Deliver `message` (a JSON object) to every listener of `topic`, in every process."""
        ...

    def publish_soon(self, topic: str, message: dict[str, Any]) -> None:
        """`publish` without waiting (for code that must not block); this process's calls stay in order."""
        ...

    def on_gap(self, handler: GapHandler) -> None:
        """Call `handler` whenever messages meant for this process may have been lost.

        Delivery is at most once: while the shared store is away (Redis restarted, say), what
        other processes publish does not reach this one. When this process hears the store
        again it calls `handler`, and the listener makes its audience re-read what they show
        from the database (the web chat page its history, the console its inbox). The
        in-process fan-out loses nothing and never calls it.
        """
        ...

    def join(self, topic: str, key: str) -> None:
        """A listener for `key` of `topic` (a conversation's open page) is here now."""
        ...

    def leave(self, topic: str, key: str) -> None:
        """One listener for `key` of `topic` is gone."""
        ...

    async def listening(self, topic: str, key: str) -> bool:
        """Whether any process has a listener for `key` of `topic`."""
        ...


class Leases(Protocol):
    """Background work that must run in one process at a time: whoever holds the lease runs it."""

    def hold(self, name: str, ttl_seconds: float) -> AbstractAsyncContextManager[bool]:
        """Take (or keep) the lease `name`; the block gets whether this process holds it.

        While the block runs the lease is kept; afterwards it is kept for `ttl_seconds` more, so
        the holder of a periodic job stays its holder from one pass to the next, and another
        process takes over within `ttl_seconds` of the holder's death.
        """
        ...


class ProcessState(Protocol):
    """The three concerns app processes share, with their start, stop and health."""

    @property
    def locks(self) -> SenderLocks: ...

    @property
    def fanout(self) -> FanOut: ...

    @property
    def leases(self) -> Leases: ...

    async def start(self) -> None:
        """Start listening (once the app's listeners have subscribed)."""
        ...

    async def reachable(self) -> bool:
        """Whether the shared store answers now (always, in process); for ``/healthz``, never raises."""
        ...

    async def close(self) -> None:
        """Stop listening, give up held leases, close connections."""
        ...


def open_shared_state(redis_url: str | None) -> ProcessState:
    """The in-process state without a Redis URL (``REDIS_URL`` unset), else the Redis one (nothing connects here)."""
    if redis_url is None:
        from crm_backend.shared.local import LocalState

        return LocalState()
    from crm_backend.shared.redis_state import RedisState

    return RedisState.from_url(redis_url)
