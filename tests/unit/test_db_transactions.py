"""Transactions on the embedded SQLite database are atomic, savepoints included."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.models import ChannelIdentity, Citizen
from crm_backend.services.conversations import resolve_identity


class Abandoned(Exception):
    pass


async def test_a_rolled_back_session_keeps_nothing_written_in_its_savepoint(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # resolve_identity's first write is inside begin_nested(): Python's sqlite3 would let the
    # savepoint start (and its release commit) a transaction of its own.
    with pytest.raises(Abandoned):
        async with sessions.begin() as session:
            await resolve_identity(session, "web", "visitor-1")
            raise Abandoned
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ChannelIdentity)) == 0
        assert await session.scalar(select(func.count()).select_from(Citizen)) == 0


async def test_a_savepoint_after_earlier_writes_commits_with_its_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        session.add(Citizen())
        await session.flush()
        await resolve_identity(session, "web", "visitor-2")
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Citizen)) == 2
        assert await session.scalar(select(func.count()).select_from(ChannelIdentity)) == 1
