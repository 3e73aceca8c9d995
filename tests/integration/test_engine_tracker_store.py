"""The engine's tracker store across a PostgreSQL restart, in the engine's own venv (Python 3.10).

Rasa wraps every tracker store in `FailSafeTrackerStore`: a read that fails becomes "no
tracker", and the engine would answer from an empty conversation. `bot.engine_tracker_store`
waits out a restart and otherwise marks the turn failed (the engine's channel answers 503) and
never writes that turn's fresh tracker over the real one. Checked against a real server that is
restarted, stopped and started under the store.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_backend.settings import PROJECT_ROOT
from tests.support.postgres import PostgresServer
from tests.support.stack import DATA_KEY_SECRETS

ENGINE_PYTHON = PROJECT_ROOT / ".venv-rasa" / "bin" / "python"
ENGINE_ENV = {
    "PYTHONPATH": str(PROJECT_ROOT),
    "RASA_TELEMETRY_ENABLED": "false",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
}


def run_in_engine(script: str, *args: str, keys: bool = True) -> subprocess.CompletedProcess[str]:
    """`script` run by the engine's Python (3.10, Rasa installed), with the tests' data keys unless `keys` is False."""
    return subprocess.run(
        [str(ENGINE_PYTHON), "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PROJECT_ROOT,
        env={**ENGINE_ENV, **DATA_KEY_SECRETS} if keys else ENGINE_ENV,
    )


def last_json_line(result: subprocess.CompletedProcess[str]) -> Any:
    """What a scenario printed last, once it exited cleanly."""
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Runs in the engine's venv; argv: the database URL and the pg_ctl commands (JSON).
SCENARIO = r"""
import asyncio, json, subprocess, sys, threading, time
from rasa.core.tracker_store import FailSafeTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered

from bot import engine_tracker_store
from bot.engine_tracker_store import CURRENT_TURN, AppTrackerStore, Turn

url, commands = sys.argv[1], json.loads(sys.argv[2])
SENDER = "citizen-1"


def pg(action):
    subprocess.run(commands[action], check=True, capture_output=True)


async def turn(store):
    # What the engine does with one message: read (or create) the tracker, add the turn, save.
    current = Turn()
    token = CURRENT_TURN.set(current)
    try:
        tracker = await store.get_or_create_tracker(SENDER)
        before = [event.text for event in tracker.events if isinstance(event, (UserUttered, BotUttered))]
        tracker.update(UserUttered("在解放路"))
        tracker.update(BotUttered("好的"))
        await store.save(tracker)
    finally:
        CURRENT_TURN.reset(token)
    return {"read": before, "failed": current.failed}


async def stored(store):
    tracker = await store.retrieve(SENDER)
    return [event.text for event in tracker.events if isinstance(event, (UserUttered, BotUttered))]


async def main():
    # As the engine holds it: Rasa's fail-safe wrapper around ours.
    store = FailSafeTrackerStore(AppTrackerStore(domain=Domain.load("domain.yml"), host=url))
    tracker = await store.get_or_create_tracker(SENDER)
    tracker.update(ActionExecuted("action_listen"))
    tracker.update(UserUttered("路灯坏了"))
    tracker.update(BotUttered("请问在哪里？"))
    await store.save(tracker)
    result = {}

    pg("restart")  # every pooled connection is dead now
    result["after_restart"] = await turn(store)

    pg("stop")  # back while the read is still being tried again
    threading.Thread(target=lambda: (time.sleep(1.5), pg("start"))).start()
    result["restart_during_read"] = await turn(store)

    engine_tracker_store.RETRY_SECONDS = 1.0
    pg("stop")  # away for longer than the store waits
    result["down"] = await turn(store)
    pg("start")
    result["stored"] = await stored(store)
    print(json.dumps(result, ensure_ascii=False))


asyncio.run(main())
"""


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer.running() as server:
        yield server


@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason="the engine's venv is built by bin/setup")
def test_a_restarted_database_is_waited_out_and_a_lost_read_never_answers_from_an_empty_tracker(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("tracker").replace("postgresql://", "postgresql+psycopg2://", 1)
    commands = {action: postgres.pg_ctl_command(action) for action in ("restart", "stop", "start")}
    figures = last_json_line(run_in_engine(SCENARIO, url, json.dumps(commands)))
    first = ["路灯坏了", "请问在哪里？"]
    # Restarted before the turn: pooled connections are replaced, the conversation is read.
    assert figures["after_restart"] == {"read": first, "failed": False}
    # Restarted during the read: it is tried again until the server is back.
    assert figures["restart_during_read"] == {"read": [*first, "在解放路", "好的"], "failed": False}
    # Away longer: the turn is failed (the channel answers 503), its fresh tracker is not saved.
    assert figures["down"] == {"read": [], "failed": True}
    assert figures["stored"] == [*first, "在解放路", "好的", "在解放路", "好的"]


# Runs in the engine's venv; argv: the SQLite tracker store's URL. Saves a turn holding personal
# data, then adds a row as Rasa stored it before encryption, and reads both back.
ENCRYPTED_SCENARIO = r"""
import asyncio, json, sys
import sqlalchemy as sa
from rasa.core.tracker_store import FailSafeTrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, BotUttered, SlotSet, UserUttered

from bot.engine_tracker_store import AppTrackerStore

url = sys.argv[1]


async def main():
    store = FailSafeTrackerStore(AppTrackerStore(domain=Domain.load("domain.yml"), host=url))
    tracker = await store.get_or_create_tracker("web:citizen-1")
    tracker.update(ActionExecuted("action_listen"))
    tracker.update(UserUttered("幸福路88号的路灯坏了"))
    tracker.update(SlotSet("contact_phone", "13912345678"))
    tracker.update(BotUttered("已记录"))
    await store.save(tracker)
    old = {"event": "user", "timestamp": 1.0, "text": "以前的消息", "parse_data": {}}
    with sa.create_engine(url).begin() as connection:
        connection.execute(
            sa.text("INSERT INTO events (sender_id, type_name, timestamp, data) VALUES ('web:old', 'user', 1.0, :d)"),
            {"d": json.dumps(old, ensure_ascii=False)},
        )
    read = await store.retrieve("web:citizen-1")
    before = await store.retrieve("web:old")
    print(json.dumps({
        "texts": [e.text for e in read.events if isinstance(e, (UserUttered, BotUttered))],
        "phone": read.get_slot("contact_phone"),
        "old": [e.text for e in before.events if isinstance(e, UserUttered)],
    }, ensure_ascii=False))


asyncio.run(main())
"""


@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason="the engine's venv is built by bin/setup")
def test_the_engine_stores_events_encrypted_and_still_reads_rows_stored_plain_before(tmp_path: Path) -> None:
    database = tmp_path / "tracker.db"
    assert last_json_line(run_in_engine(ENCRYPTED_SCENARIO, f"sqlite:///{database}")) == {
        "texts": ["幸福路88号的路灯坏了", "已记录"],
        "phone": "13912345678",
        "old": ["以前的消息"],
    }
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT sender_id, data FROM events ORDER BY id").fetchall()
    raw = repr(rows)
    for secret in ("幸福路", "13912345678", "已记录"):
        assert secret not in raw and json.dumps(secret)[1:-1] not in raw  # nor as Rasa's JSON escapes it
    assert all(data.startswith("v1:sm4:test1:") for sender, data in rows if sender != "web:old")
    # Without the keys the engine does not start: it would write citizens' words in the clear.
    refused = run_in_engine(ENCRYPTED_SCENARIO, f"sqlite:///{tmp_path / 'other.db'}", keys=False)
    assert refused.returncode != 0 and "DATA_KEYS is not set" in refused.stderr


# Runs in the engine's venv; argv: the tracker store's URL. Two stores on one database stand for
# two engines; each step prints what a turn read, and the test compares it with the database.
CACHE_SCENARIO = r"""
import asyncio, json, sys
import sqlalchemy as sa
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, BotUttered, SessionStarted, SlotSet, UserUttered
from rasa.shared.core.trackers import EventVerbosity

from bot.engine_tracker_store import AppTrackerStore

url = sys.argv[1]
SENDER = "web:citizen-1"
domain = Domain.load("domain.yml")


def texts(tracker):
    return [e.text for e in tracker.events if isinstance(e, (UserUttered, BotUttered))] if tracker else None


async def turn(store, said, answer, slot=None):
    tracker = await store.get_or_create_tracker(SENDER)
    tracker.update(UserUttered(said, {"name": "report_issue", "confidence": 0.9}))
    if slot:
        tracker.update(SlotSet("contact_phone", slot))
    tracker.update(BotUttered(answer))
    tracker.update(ActionExecuted("action_listen"))
    await store.save(tracker)
    return tracker


def state(tracker):
    return json.loads(json.dumps(tracker.current_state(EventVerbosity.ALL)))


async def main():
    engine_a = AppTrackerStore(domain=domain, host=url)
    engine_b = AppTrackerStore(domain=domain, host=url)
    out = {}
    first = await turn(engine_a, "路灯坏了", "请问在哪里？")
    second = await turn(engine_a, "在解放路", "请留下电话", slot="13912345678")
    third = await engine_a.retrieve(SENDER)
    out["kept_between_turns"] = third is second
    # What the kept tracker says is what the database says (a store with nothing kept reads it).
    out["same_as_stored"] = state(third) == state(await AppTrackerStore(domain=domain, host=url).retrieve(SENDER))
    out["slot"] = third.get_slot("contact_phone")
    # A tracker lent to a turn is not lent again: a second reader gets its own.
    out["lent_once"] = (await engine_a.retrieve(SENDER)) is not third
    # A turn that changed its tracker and failed before saving leaves nothing behind.
    lost = await engine_a.retrieve(SENDER)
    lost.update(UserUttered("没有保存的话"))
    out["after_failed_turn"] = texts(await engine_a.retrieve(SENDER))
    await turn(engine_a, "好的", "已记录")
    # Another engine answers the next turn: the first sees it, not what it kept.
    await turn(engine_b, "进展如何", "正在办理")
    out["after_other_engine"] = texts(await engine_a.retrieve(SENDER))
    await turn(engine_a, "谢谢", "不客气")
    # A new session: what the store holds begins at SessionStarted, and so does the next read.
    tracker = await engine_a.retrieve(SENDER)
    tracker.update(ActionExecuted("action_session_start"))
    tracker.update(SessionStarted())
    tracker.update(ActionExecuted("action_listen"))
    await engine_a.save(tracker)
    await turn(engine_a, "又坏了", "请问在哪里？")
    out["new_session"] = texts(await engine_a.retrieve(SENDER))
    await turn(engine_a, "还是解放路", "好的")
    # Erasure deletes the rows under a running engine: nothing is answered from memory.
    with sa.create_engine(url).begin() as connection:
        connection.execute(sa.text("DELETE FROM events WHERE sender_id = :s"), {"s": SENDER})
    out["after_erasure"] = texts(await engine_a.retrieve(SENDER))
    print(json.dumps(out, ensure_ascii=False))


asyncio.run(main())
"""


def run_cache_scenario(url: str) -> dict[str, object]:
    figures: dict[str, object] = last_json_line(run_in_engine(CACHE_SCENARIO, url))
    return figures


CACHE_EXPECTED = {
    "kept_between_turns": True,
    "same_as_stored": True,
    "slot": "13912345678",
    "lent_once": True,
    "after_failed_turn": ["路灯坏了", "请问在哪里？", "在解放路", "请留下电话"],
    "after_other_engine": [
        *["路灯坏了", "请问在哪里？", "在解放路", "请留下电话"],
        *["好的", "已记录", "进展如何", "正在办理"],
    ],
    "new_session": ["又坏了", "请问在哪里？"],
    "after_erasure": None,
}


@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason="the engine's venv is built by bin/setup")
def test_a_kept_tracker_is_reused_only_while_the_store_holds_exactly_what_it_saved(tmp_path: Path) -> None:
    assert run_cache_scenario(f"sqlite:///{tmp_path / 'tracker.db'}") == CACHE_EXPECTED


@pytest.mark.skipif(not ENGINE_PYTHON.exists(), reason="the engine's venv is built by bin/setup")
def test_a_kept_tracker_is_reused_only_while_postgres_holds_exactly_what_it_saved(postgres: PostgresServer) -> None:
    url = postgres.create_database("cache").replace("postgresql://", "postgresql+psycopg2://", 1)
    assert run_cache_scenario(url) == CACHE_EXPECTED
