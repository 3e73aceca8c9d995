"""Fixtures shared by every test: a real, migrated SQLite database per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.proof_alarm import ProofAlarm
from crm_backend.db import create_engine, create_sessionmaker, upgrade_database_async
from crm_backend.settings import normalise_database_url
from tests.support.proofs import proof_alarm_for
from tests.support.stack import TEST_SECRETS

# Personal columns are encrypted with the ring the environment names (crm_backend.crypto): every
# test process, and what it starts, gets the tests' fixed keys unless a test sets its own. They
# replace the machine's own (bin/test sources var/secrets.env): a test that wrote with those and
# an app started with these could not read each other's rows.
os.environ.pop("DATA_KEYS_FILE", None)
for _name in ("DATA_KEYS", "DATA_KEY_CURRENT", "DATA_HMAC_KEY"):
    os.environ[_name] = TEST_SECRETS[_name]

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on a fresh database built by the real migrations."""
    url = normalise_database_url(f"sqlite:///{tmp_path / 'crm.db'}")
    await upgrade_database_async(url)
    engine = create_engine(url)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def proof_alarm(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[ProofAlarm]:
    """The app's watcher of failed proofs on the test database (nothing is sent)."""
    async with proof_alarm_for(sessions) as alarm:
        yield alarm


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests keep what a person should be able to look at afterwards (screenshots)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
