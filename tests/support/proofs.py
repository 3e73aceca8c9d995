"""The app's watcher of failed proofs, built as `app.factory` builds it, for tests of the actions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.engine import EngineClient
from bot.followup import CaseFollowup
from bot.hub import ConversationHub
from bot.notifier import ChannelNotifier
from bot.proof_alarm import ProofAlarm
from bot.responses import Responses
from crm_backend.console.feed import LiveFeed

DOMAIN_PATH = Path(__file__).resolve().parents[2] / "domain.yml"


@asynccontextmanager
async def proof_alarm_for(
    sessions: async_sessionmaker[AsyncSession], failures_per_hour: int = 100
) -> AsyncIterator[ProofAlarm]:
    """A real alarm on the test database. Nothing is started, so nothing is sent: what it
    records is in the database, what it would deliver waits in its queues."""
    responses = Responses.load(DOMAIN_PATH)
    async with aiohttp.ClientSession() as http:
        engine = EngineClient(http, "http://127.0.0.1:9", "engine-token-for-tests", 1.0)
        followups = CaseFollowup(
            sessions,
            engine,
            ChannelNotifier(sessions, ConversationHub(), responses),
            responses,
            remind_after=timedelta(hours=24),
            archive_after=timedelta(hours=48),
            interval_seconds=0,
        )
        yield ProofAlarm(followups, LiveFeed(), failures_per_hour=failures_per_hour)
