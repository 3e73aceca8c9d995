"""When the engine is down or hangs, citizens get 系统繁忙 quickly, nothing is lost,
and the app recovers by itself when the engine is back: what it missed is replayed."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.test_rest_channel import post_with_id, response_text
from tests.integration.test_rest_channel import texts as rest_texts
from tests.integration.test_webchat import open_chat, texts
from tests.support.console import ConsoleClient, create_staff
from tests.support.encrypted import plain
from tests.support.proxy import EngineSwitch
from tests.support.stack import Stack, free_port

REPLAY_EVERY = "0.5"  # seconds between the app's looks for messages to replay


@pytest.fixture(scope="module")
def switched(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, EngineSwitch]]:
    """A second app whose engine is the shared real engine behind a switch we control."""
    app_only = Stack(workdir=Path(tmp_path_factory.mktemp("outage")), engine_timeout_seconds=2)
    switch = EngineSwitch(port=free_port(), target_port=stack.rasa_port)
    app_only.rasa_port = switch.port
    app_only.secrets = dict(stack.secrets)
    try:
        app_only.start_app(extra_env={"ENGINE_REPLAY_SECONDS": REPLAY_EVERY})
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
    return [plain(row[0], "message.text") or "" for row in rows]


def waiting_texts(stack: Stack) -> list[str]:
    """Citizens' messages still marked as not answered by the engine."""
    with sqlite3.connect(stack.workdir / "crm.db") as db:
        rows = db.execute("SELECT text FROM message WHERE engine_pending_since IS NOT NULL ORDER BY id").fetchall()
    return [plain(row[0], "message.text") or "" for row in rows]


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
    # The missed 你好 is answered first (here, or by the replay loop a moment before), then this one.
    assert app.rest(sender, "你好")[-1]["text"] == response_text("utter_greet")
    assert requests.get(f"{app.app_url}/healthz", timeout=10).status_code == 200


def test_a_message_posted_again_after_the_engine_missed_it_is_answered_then_and_logged_once(
    switched: tuple[Stack, EngineSwitch], sender: str
) -> None:
    app, switch = switched
    switch.stop()
    busy = post_with_id(app, sender, "你好", "missed-0001")
    assert rest_texts(busy.json()) == [response_text("utter_system_busy")]
    switch.start(mode="forward")
    # The integrator posts it again (as after a broken connection): it is answered now, once,
    # whether this post or the replay loop reaches the engine first.
    again = post_with_id(app, sender, "你好", "missed-0001")
    assert rest_texts(again.json()) == [
        response_text("utter_replay_intro").format(text="你好"),
        response_text("utter_greet"),
    ]
    assert logged_texts(app, sender) == ["你好"]
    with sqlite3.connect(app.workdir / "crm.db") as db:
        (waiting,) = db.execute(
            "SELECT count(*) FROM message m JOIN conversation c ON c.id = m.conversation_id "
            "JOIN channel_identity i ON i.id = c.identity_id "
            "WHERE i.external_id = ? AND m.engine_pending_since IS NOT NULL",
            (sender,),
        ).fetchone()
    assert waiting == 0


async def test_messages_the_engine_missed_are_answered_in_order_on_the_web_chat_when_it_is_back(
    switched: tuple[Stack, EngineSwitch],
) -> None:
    app, switch = switched
    switch.stop()
    busy = response_text("utter_system_busy")
    async with open_chat(app) as chat:
        welcome = await chat.hello()
        assert texts(await chat.say("你好")) == [busy]
        assert texts(await chat.say("算了，取消吧", payload="/cancel")) == [busy]  # a button: its payload is replayed
        assert waiting_texts(app)[-2:] == ["你好", "算了，取消吧"]
        switch.start(mode="forward")
        replayed: list[str] = []
        while len(replayed) < 4:  # pushed to the open page, one frame per replayed message
            frame = await chat.expect("reply", timeout=30)
            assert frame["in_reply_to"] is None
            replayed += texts(frame["messages"])
    assert replayed == [
        response_text("utter_replay_intro").format(text="你好"),
        response_text("utter_greet"),
        response_text("utter_replay_intro").format(text="算了，取消吧"),
        response_text("utter_nothing_to_cancel"),
    ]
    assert "你好" not in waiting_texts(app) and "算了，取消吧" not in waiting_texts(app)
    async with open_chat(app) as again:  # and the conversation keeps them for the next visit
        history = (await again.hello(welcome["session"]))["history"]
    assert [m["text"] for m in history][-4:] == replayed


def test_staff_see_which_messages_wait_for_the_engine(switched: tuple[Stack, EngineSwitch], sender: str) -> None:
    app, switch = switched
    switch.stop()
    assert app.rest(sender, "小区的垃圾三天没人收了")[0]["text"] == response_text("utter_system_busy")
    with sqlite3.connect(app.workdir / "crm.db") as db:
        [(conversation_id,)] = db.execute(
            "SELECT c.id FROM conversation c JOIN channel_identity i ON i.id = c.identity_id WHERE i.external_id = ?",
            (sender,),
        ).fetchall()
        # The citizen then asks for a person: the conversation waits in the inbox (the engine is down,
        # so staff put it there by hand in this test).
        db.execute(
            "UPDATE conversation SET handoff_status = 'waiting', handoff_requested_at = last_message_at WHERE id = ?",
            (conversation_id,),
        )
    console = ConsoleClient(app)
    assert console.login(create_staff(app, "supervisor")).status_code == 200
    page = console.get(f"/conversations/{conversation_id}").text
    assert page.count("未送达智能助手，待重发") == 1
    inbox = console.get("/inbox").text
    assert "1 条未送达智能助手" in inbox
