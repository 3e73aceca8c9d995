"""Telegram updates and replies survive a database outage and an app restart.

An app with Telegram enabled on a database of its own (the session's engine answers it; the
updates used here need no custom action), and the fake Bot API server on loopback. Telegram
resends an update only when the webhook did not answer 2xx, so an update must be stored
before the answer; replies staff write must survive the app dying before they are sent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.integration.test_telegram import conversation_of, db, texts
from tests.support.domain_text import utter
from tests.support.encrypted import plain, sealed_json
from tests.support.fake_telegram import FakeTelegram
from tests.support.stack import Stack

TOKEN = "123456789:TEST-token-of-the-durable-fake-bot"
SECRET = "durable-webhook-secret-0123456789"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeTelegram]:
    server = FakeTelegram(TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def telegram_env(fake: FakeTelegram) -> dict[str, str]:
    return {
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
        "TELEGRAM_API_BASE_URL": fake.base_url,
        "TELEGRAM_WEBHOOK_URL": "https://bot.example.org/webhooks/telegram",
    }


@pytest.fixture(scope="module")
def app(stack: Stack, fake: FakeTelegram, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    own = Stack(workdir=Path(tmp_path_factory.mktemp("telegram-durable")), secrets=dict(stack.secrets))
    own.rasa_port = stack.rasa_port
    start(own, fake)
    try:
        yield own
    finally:
        own.stop_app()
        log = own.workdir / "app.log"
        if log.exists():
            print("--- tail of the durable telegram app.log ---")
            print("\n".join(log.read_text(errors="replace").splitlines()[-25:]))


def start(app: Stack, fake: FakeTelegram) -> None:
    registered = len(fake.calls_of("setWebhook"))
    app.start_app(extra_env=telegram_env(fake))
    deadline = time.monotonic() + 20
    while len(fake.calls_of("setWebhook")) <= registered:  # PTB is up and the webhook registered
        assert time.monotonic() < deadline, "the app did not register its webhook"
        time.sleep(0.05)


def post(app: Stack, update: dict[str, object]) -> requests.Response:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    return requests.post(f"{app.app_url}/webhooks/telegram", json=update, headers=headers, timeout=60)


@contextmanager
def database_locked(app: Stack) -> Iterator[None]:
    """Another process holds the SQLite write lock: every write of the app fails after its busy timeout."""
    conn = db(app)
    conn.isolation_level = None
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def stored_updates(app: Stack, update_id: int) -> list[tuple[int, str | None]]:
    with db(app) as conn:
        return conn.execute(
            "SELECT attempts, processed_at FROM telegram_update WHERE update_id = ?", (update_id,)
        ).fetchall()


def logged_in(app: Stack, chat_id: int) -> list[str]:
    with db(app) as conn:
        rows = conn.execute(
            "SELECT text FROM message WHERE conversation_id = ? AND direction = 'in' ORDER BY id",
            (conversation_of(app, chat_id),),
        ).fetchall()
    return [plain(text, "message.text") or "" for (text,) in rows]


def test_an_update_that_cannot_be_stored_is_refused_and_its_resend_processed_once(
    app: Stack, fake: FakeTelegram
) -> None:
    chat_id = 1700000001
    update = fake.message_update(chat_id, text="/help")
    with database_locked(app):
        refused = post(app, update)
    assert refused.status_code == 503, refused.text  # Telegram keeps the update and sends it again
    assert stored_updates(app, update["update_id"]) == []
    assert post(app, update).status_code == 200  # the resend
    [reply] = fake.wait_for_messages(chat_id, 1)
    assert reply["text"] == utter("utter_telegram_help")
    assert post(app, update).status_code == 200  # and a resend of an update already stored
    time.sleep(1.5)
    assert texts(fake.sent_to(chat_id)) == [utter("utter_telegram_help")]
    assert logged_in(app, chat_id) == ["/help"]
    [(attempts, processed_at)] = stored_updates(app, update["update_id"])
    assert attempts == 1 and processed_at is not None


def test_a_repeated_update_id_is_processed_once(app: Stack, fake: FakeTelegram) -> None:
    chat_id = 1700000002
    update = fake.message_update(chat_id, text="/cancel")
    for _ in range(3):
        assert post(app, update).status_code == 200
    fake.wait_for_messages(chat_id, 1)
    time.sleep(1.5)
    assert texts(fake.sent_to(chat_id)) == [utter("utter_nothing_to_cancel")]
    assert logged_in(app, chat_id) == ["/cancel"]


def test_an_update_stored_but_not_processed_before_a_restart_is_processed_after_it(
    app: Stack, fake: FakeTelegram
) -> None:
    chat_id = 1700000003
    update = fake.message_update(chat_id, text="/help")
    app.stop_app()
    # What the webhook had stored when the app died, before it could process the update.
    received = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    with db(app) as conn:
        conn.execute(
            "INSERT INTO telegram_update (update_id, chat_id, payload, attempts, received_at) VALUES (?, ?, ?, 0, ?)",
            (update["update_id"], str(chat_id), sealed_json(update, "telegram_update.payload"), received),
        )
    start(app, fake)
    [reply] = fake.wait_for_messages(chat_id, 1)
    assert reply["text"] == utter("utter_telegram_help")
    deadline = time.monotonic() + 10
    while stored_updates(app, update["update_id"])[0][1] is None:
        assert time.monotonic() < deadline, "the update was never marked processed"
        time.sleep(0.1)
    assert logged_in(app, chat_id) == ["/help"]


def test_a_staff_reply_the_app_could_not_send_before_it_died_is_sent_after_the_restart(
    app: Stack, fake: FakeTelegram
) -> None:
    chat_id = 1700000004
    assert post(app, fake.message_update(chat_id, text="/help")).status_code == 200
    fake.wait_for_messages(chat_id, 1)
    conversation_id = conversation_of(app, chat_id)
    fake.go_down("sendMessage")
    try:
        resp = app.api(
            "POST", f"/conversations/{conversation_id}/replies", json={"text": "您好，我是值班员", "staff_name": "王芳"}
        )
        assert resp.status_code == 201
        # Committed with the reply's log entry; the one send tried since failed, and the app dies.
        wait_for_outbox(app, chat_id, [("pending", 1)])
        app.stop_app()
    finally:
        fake.come_back("sendMessage")
    assert len(fake.sent_to(chat_id)) == 1
    start(app, fake)
    sent = fake.wait_for_messages(chat_id, 2, timeout=30)
    assert texts(sent) == [utter("utter_telegram_help"), "王芳：您好，我是值班员"]
    wait_for_outbox(app, chat_id, [("sent", 2)])


def wait_for_outbox(app: Stack, chat_id: int, expected: list[tuple[str, int]], timeout: float = 20) -> None:
    """Wait until the chat's outbox rows have these (status, attempts)."""
    deadline = time.monotonic() + timeout
    while True:
        with db(app) as conn:
            rows = conn.execute(
                "SELECT status, attempts FROM telegram_outbox WHERE chat_id = ? ORDER BY id", (str(chat_id),)
            ).fetchall()
        if rows == expected:
            return
        assert time.monotonic() < deadline, f"outbox of chat {chat_id} is {rows}, expected {expected}"
        time.sleep(0.1)
