"""Limits on the public entry points: how many events one subject may cause in a window.

`RateLimiter` is the interface the channels use: ``acquire(limit, subject)`` counts one
event (a new web chat session from an address, a message from a sender) if the limit
allows it, and says whether it did. `DatabaseRateLimiter` keeps the events in the
``rate_event`` table, so every app process sees the same counts; a Redis implementation
(an INCR or a sorted set per subject) can replace it without the channels noticing.

A refused event is not recorded, so a subject gets at most ``limit.max_events`` events
through in any window of ``limit.window`` (a sliding window) however hard it knocks.

Counting and recording are one transaction, serialised per subject:

* PostgreSQL: ``pg_advisory_xact_lock`` on a hash of (rule, subject) is taken first, so
  concurrent acquires of one subject from any process run one after the other; the
  limit is exact.
* SQLite: the transaction starts with a write (the subject's expired events are deleted),
  which takes SQLite's one write lock until commit; acquires run one after the other
  database-wide, and the limit is exact too.

`serialise` is the same lock, for other count-then-insert checks (the daily case limit).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.models import RateEvent, utcnow

MAX_SUBJECT_CHARS = 200
PRUNE_EVERY = 256  # acquires of a limit between sweeps of all its subjects' expired events


@dataclass(frozen=True)
class Limit:
    """At most `max_events` events per subject in any `window`; 0 turns the limit off."""

    name: str
    max_events: int
    window: timedelta


class RateLimiter(Protocol):
    """What the channels need of a limiter."""

    async def acquire(self, limit: Limit, subject: str) -> bool:
        """Count one event of `subject` under `limit` if it is allowed; whether it was."""
        ...


class DatabaseRateLimiter:
    """A `RateLimiter` whose counts live in the database every app process shares."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock
        self._acquired: dict[str, int] = {}  # per limit, since this process started

    async def acquire(self, limit: Limit, subject: str) -> bool:
        """Count one event of `subject` under `limit` if fewer than ``limit.max_events`` are in the window.

        Returns:
            True if the event was counted (go ahead), False if the limit refused it.
        """
        if limit.max_events <= 0:
            return True
        subject = subject[:MAX_SUBJECT_CHARS]
        now = self._clock()
        since = now - limit.window
        async with self._sessions.begin() as session:
            await serialise(session, f"{limit.name}:{subject}")
            # On SQLite this first write is what serialises: see the module docstring.
            await session.execute(
                delete(RateEvent).where(
                    RateEvent.rule == limit.name, RateEvent.subject == subject, RateEvent.created_at <= since
                )
            )
            counted = await session.scalar(
                select(func.count(RateEvent.id)).where(
                    RateEvent.rule == limit.name, RateEvent.subject == subject, RateEvent.created_at > since
                )
            )
            if (counted or 0) >= limit.max_events:
                return False
            session.add(RateEvent(rule=limit.name, subject=subject, created_at=now))
        self._acquired[limit.name] = self._acquired.get(limit.name, 0) + 1
        if self._acquired[limit.name] % PRUNE_EVERY == 0:
            await self.prune(limit)
        return True

    async def prune(self, limit: Limit) -> None:
        """Delete every subject's events that have left `limit`'s window."""
        expired = self._clock() - limit.window
        async with self._sessions.begin() as session:
            await session.execute(
                delete(RateEvent).where(RateEvent.rule == limit.name, RateEvent.created_at <= expired)
            )


async def serialise(session: AsyncSession, name: str) -> None:
    """Make transactions that serialise on `name` run one after the other, from here until commit.

    PostgreSQL: a transaction-scoped advisory lock on a 64-bit hash of `name`. SQLite allows
    one writer at a time: a write (that changes nothing) takes that lock now, rather than at
    the caller's first real write, so that what the caller counts next stays true until it commits.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        await session.execute(delete(RateEvent).where(RateEvent.id == -1))
