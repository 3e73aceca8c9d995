"""Fixtures of the unit tests beyond the database (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.proof_alarm import ProofAlarm
from tests.support.proofs import proof_alarm_for


@pytest.fixture
async def proof_alarm(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[ProofAlarm]:
    """The app's watcher of failed proofs on the test database (nothing is sent)."""
    async with proof_alarm_for(sessions) as alarm:
        yield alarm
