"""Replays citizens' messages the engine never answered, once the engine is healthy again.

While the engine is down a citizen is told 「您的消息已记录」 (utter_system_busy) and their
message stays marked as waiting (``message.engine_pending_since``). Every ``interval`` seconds
this loop looks for such messages; if there are any and the engine answers its status with a
model loaded, it replays them citizen by citizen, oldest first, under the pipeline's per-citizen
lock, and delivers each answer (after ``utter_replay_intro``) on the citizen's channel: live to
an open web chat (the log shows it on the next visit otherwise), to Telegram through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.engine import EngineClient, EngineUnavailable
from bot.notifier import ChannelNotifier
from bot.pipeline import MessagePipeline
from crm_backend import periodic
from crm_backend.models import utcnow
from crm_backend.services.conversations import identities_with_pending_messages
from crm_backend.shared import Leases

logger = logging.getLogger(__name__)


class EngineReplay:
    """The background loop that replays messages the engine missed."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: EngineClient,
        pipeline: MessagePipeline,
        notifier: ChannelNotifier,
        *,
        interval_seconds: float,
        settle_seconds: float,
        leases: Leases | None = None,
    ) -> None:
        """
        Args:
            interval_seconds: how often to look; 0 turns the loop off (the citizen's next
                message still replays what waits before it).
            settle_seconds: a message waiting for less than this may still be on its way to
                the engine (the engine's timeout and a little more); it is left alone.
            leases: with several app processes, the loop runs in the one holding its lease
                (each citizen's replay also holds their ordering lock, shared across processes).
        """
        self._leases = leases
        self._sessions = sessions
        self._engine = engine
        self._pipeline = pipeline
        self._notifier = notifier
        self._interval = interval_seconds
        self._settle = timedelta(seconds=settle_seconds)
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One pass: replay what waits if the engine is healthy; how many citizens were served."""
        async with self._sessions() as session:
            identities = await identities_with_pending_messages(session, waiting_since=utcnow() - self._settle)
        if not identities:
            return 0
        try:
            await self._engine.status()
        except EngineUnavailable as error:
            logger.debug("replay waits, the engine is still down: %s", error)
            return 0
        served = 0
        for identity in identities:
            replayed = await self._pipeline.replay(identity, record=self._notifier.write)
            for delivery, messages in replayed.deliveries:
                await self._notifier.push(delivery, messages)
            if replayed.handoff_started and replayed.conversation_id is not None:
                await self._notifier.handoff_started(replayed.conversation_id)
            served += bool(replayed.replies)
            if replayed.engine_down:
                break  # down again: the next pass starts over
        if served:
            logger.info("replayed waiting messages of %s citizens", served)
        return served

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(
                periodic.every(
                    self._interval, self.run_once, "engine replay pass", leases=self._leases, lease="engine-replay"
                ),
                name="engine-replay",
            )

    async def stop(self) -> None:
        await periodic.cancel(self._task)
