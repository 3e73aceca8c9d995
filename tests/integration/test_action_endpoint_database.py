"""The action endpoint rides out a PostgreSQL restart, with a real server stopped under it.

Rasa does not fail a turn whose action call got a 500: it drops the action's events and goes
on, so a citizen confirming a report while the database restarted was left without a case or
an answer (seen in the cluster's PostgreSQL-restart test). The endpoint runs such an action
again until the database answers; other failures are not retried.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from rasa_sdk import Action, Tracker
from rasa_sdk.events import SlotSet
from rasa_sdk.executor import ActionExecutor, CollectingDispatcher
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.action_endpoint import ActionEndpoint
from crm_backend.db import create_engine, database_unreachable
from tests.support.postgres import PostgresServer

TOKEN = "action-token-for-tests-0123456789"


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer.running() as server:
        yield server


class CountCases(Action):
    """Reads the database, as every action that files or finds a case does."""

    def __init__(self, engine: AsyncEngine, runs: list[str]) -> None:
        self.engine = engine
        self.runs = runs

    def name(self) -> str:
        return "action_count_cases"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[Any]:
        self.runs.append("count")
        async with self.engine.connect() as connection:
            answer = await connection.scalar(text("SELECT 41 + 1"))
        dispatcher.utter_message(text=f"共有{answer}件")
        return [SlotSet("count", answer)]


class BadQuery(CountCases):
    def name(self) -> str:
        return "action_bad_query"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: dict[str, Any]) -> list[Any]:
        self.runs.append("bad")
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT * FROM no_such_table"))
        return []


def action_call(name: str) -> dict[str, Any]:
    return {
        "next_action": name,
        "sender_id": "citizen-1",
        "tracker": {"sender_id": "citizen-1", "slots": {}, "latest_message": {}, "events": [], "paused": False},
        "domain": {},
        "version": "3.6.21",
    }


async def test_an_action_run_while_postgresql_restarts_is_answered_once_it_is_back(postgres: PostgresServer) -> None:
    engine = create_engine(postgres.url().replace("postgresql://", "postgresql+asyncpg://", 1))
    runs: list[str] = []
    executor = ActionExecutor()
    executor.register_action(CountCases(engine, runs))
    executor.register_action(BadQuery(engine, runs))
    app = web.Application()
    ActionEndpoint(executor, TOKEN).add_routes(app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with TestClient(TestServer(app)) as client:
        assert (await client.post("/webhook", json=action_call("action_count_cases"), headers=headers)).status == 200

        # Stopped, and back 1.5 s later: the pooled connection is dead, then none can be had.
        await asyncio.to_thread(postgres.pg_ctl, "stop")
        threading.Thread(target=lambda: (time.sleep(1.5), postgres.pg_ctl("start"))).start()
        started = time.monotonic()
        resp = await client.post("/webhook", json=action_call("action_count_cases"), headers=headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["responses"][0]["text"] == "共有42件"
        assert body["events"][0]["value"] == 42
        assert time.monotonic() - started >= 1.0 and runs.count("count") >= 3  # waited, tried again

        # A failure of the work itself is not the database being away: answered at once, not run again.
        runs.clear()
        resp = await client.post("/webhook", json=action_call("action_bad_query"), headers=headers)
        assert resp.status == 500 and runs == ["bad"]
    await engine.dispose()


async def test_errors_of_a_stopped_server_count_as_away_and_errors_of_the_query_do_not(
    postgres: PostgresServer,
) -> None:
    engine = create_engine(postgres.url().replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        with pytest.raises(ProgrammingError) as bad_sql:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT * FROM no_such_table"))
        assert not database_unreachable(bad_sql.value)
        await asyncio.to_thread(postgres.pg_ctl, "stop")
        with pytest.raises(Exception) as away:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert database_unreachable(away.value), repr(away.value)
    finally:
        await asyncio.to_thread(postgres.pg_ctl, "start")
        await engine.dispose()
