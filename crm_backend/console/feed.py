"""Live events for open consoles: new escalations, new citizen messages, claims and hand-backs.

Each open console holds a bounded queue; a console too slow to keep up loses events, and its
page then resyncs from the database on the next event it does get (the pages always re-read
what they show). Given a fan-out (`crm_backend.shared.FanOut`), an event goes through it, so
consoles held by every app process see what happened on any of them; without one, the events
stay in this process (one app process). Events published while this process could not hear the
fan-out are lost to it: when it hears again, every open stream ends, and each console
reconnects and re-reads what it shows (`console.js` refreshes on every reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from typing import Any

from crm_backend.shared import FanOut

logger = logging.getLogger(__name__)

QUEUE_SIZE = 256
TOPIC = "console"
SECURITY_EVENT = "security"  # failed proofs passed the hourly ceiling: for supervisors and admins only


@dataclass(frozen=True)
class LiveEvent:
    """Something staff should see without reloading."""

    kind: str  # escalation | message | claimed | released | closed | reply | filed | security
    conversation_id: int
    department_id: int | None


class LiveFeed:
    """Fan-out of `LiveEvent`s to every subscribed console."""

    def __init__(self, fanout: FanOut | None = None) -> None:
        self._queues: set[asyncio.Queue[LiveEvent | None]] = set()
        self._fanout = fanout
        if fanout is not None:
            fanout.subscribe(TOPIC, self._receive)
            fanout.on_gap(self._resync)

    def subscribe(self) -> asyncio.Queue[LiveEvent | None]:
        """A queue of events; None in it ends the stream (the app is shutting down, or the console must resync)."""
        queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        return queue

    def close(self) -> None:
        """End every open stream, so shutting down does not wait on open consoles."""
        for queue in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def _resync(self) -> None:
        """Events may have been lost: end the streams, so each console reconnects and re-reads its page."""
        logger.info("asking %d consoles to resync", len(self._queues))
        self.close()

    def unsubscribe(self, queue: asyncio.Queue[LiveEvent | None]) -> None:
        self._queues.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: LiveEvent) -> None:
        """Hand the event to every console (of every process, through the fan-out); never blocks the message path."""
        if self._fanout is not None:
            self._fanout.publish_soon(TOPIC, asdict(event))
            return
        self.deliver_here(event)

    async def _receive(self, message: dict[str, Any]) -> None:
        self.deliver_here(LiveEvent(str(message["kind"]), int(message["conversation_id"]), message["department_id"]))

    def deliver_here(self, event: LiveEvent) -> None:
        """Hand the event to this process's consoles."""
        for queue in self._queues:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                logger.warning("a console's live queue is full; it will resync on its next event")
