"""When the engine is down or hangs, citizens get 系统繁忙 quickly, nothing is lost,
and the app recovers by itself when the engine is back."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.test_rest_channel import response_text
from tests.support.proxy import EngineSwitch
from tests.support.stack import Stack, free_port


@pytest.fixture(scope="module")
def switched(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, EngineSwitch]]:
    """A second app whose engine is the shared real engine behind a switch we control."""
    app_only = Stack(workdir=Path(tmp_path_factory.mktemp("outage")), engine_timeout_seconds=2)
    switch = EngineSwitch(port=free_port(), target_port=stack.rasa_port)
    app_only.rasa_port = switch.port
    app_only.secrets = dict(stack.secrets)
    try:
        app_only.start_app()
        yield app_only, switch
    finally:
        app_only.stop_app()
        switch.close()


def logged_texts(stack: Stack, sender: str) -> list[str]:
    with sqlite3.connect(stack.workdir / "crm.db") as db:
        rows = db.execute(
            "SELECT m.text FROM message m JOIN conversation c ON c.id = m.conversation_id "
            "JOIN channel_identity i ON i.id = c.identity_id "
            "WHERE i.external_id = ? AND m.direction = 'in' ORDER BY m.id",
            (sender,),
        ).fetchall()
    return [row[0] for row in rows]


def test_engine_down_gets_busy_reply_fast_and_the_message_is_logged(
    switched: tuple[Stack, EngineSwitch], sender: str
) -> None:
    app, switch = switched
    switch.stop()
    started = time.monotonic()
    replies = app.rest(sender, "我家楼下的下水道堵了")
    assert time.monotonic() - started < 3
    assert [reply["text"] for reply in replies] == [response_text("utter_system_busy")]
    assert logged_texts(app, sender) == ["我家楼下的下水道堵了"]


def test_health_names_the_engine_when_it_is_down(switched: tuple[Stack, EngineSwitch]) -> None:
    app, switch = switched
    switch.stop()
    resp = requests.get(f"{app.app_url}/healthz", timeout=10)
    assert resp.status_code == 503
    assert resp.json()["down"] == ["engine"]


def test_a_hanging_engine_gets_busy_reply_within_the_timeout(switched: tuple[Stack, EngineSwitch], sender: str) -> None:
    app, switch = switched
    switch.stop()
    switch.start(mode="stall")
    try:
        started = time.monotonic()
        replies = app.rest(sender, "你好")
        elapsed = time.monotonic() - started
    finally:
        switch.stop()
    assert [reply["text"] for reply in replies] == [response_text("utter_system_busy")]
    assert 1.5 < elapsed < 4  # the configured 2 s timeout, not the stall


def test_app_recovers_by_itself_when_the_engine_is_back(switched: tuple[Stack, EngineSwitch], sender: str) -> None:
    app, switch = switched
    switch.stop()
    assert app.rest(sender, "你好")[0]["text"] == response_text("utter_system_busy")
    switch.start(mode="forward")
    assert app.rest(sender, "你好")[0]["text"] == response_text("utter_greet")
    assert requests.get(f"{app.app_url}/healthz", timeout=10).status_code == 200
