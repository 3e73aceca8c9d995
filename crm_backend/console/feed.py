"""Live events for open consoles: new escalations, new citizen messages, claims and hand-backs.

One app process, so an in-process fan-out is enough: each open console holds a bounded
queue; a console too slow to keep up loses events, and its page then resyncs from the
database on the next event it does get (the pages always re-read what they show).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256
SECURITY_EVENT = "security"  # failed proofs passed the hourly ceiling: for supervisors and admins only


@dataclass(frozen=True)
class LiveEvent:
    """Something staff should see without reloading."""

    kind: str  # escalation | message | claimed | released | closed | reply | filed | security
    conversation_id: int
    department_id: int | None


class LiveFeed:
    """Fan-out of `LiveEvent`s to every subscribed console."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[LiveEvent | None]] = set()

    def subscribe(self) -> asyncio.Queue[LiveEvent | None]:
        """A queue of events; None in it means the app is shutting down."""
        queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        return queue

    def close(self) -> None:
        """End every open stream, so shutting down does not wait on open consoles."""
        for queue in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def unsubscribe(self, queue: asyncio.Queue[LiveEvent | None]) -> None:
        self._queues.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: LiveEvent) -> None:
        """Hand the event to every console; never blocks the message path."""
        for queue in self._queues:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                logger.warning("a console's live queue is full; it will resync on its next event")
