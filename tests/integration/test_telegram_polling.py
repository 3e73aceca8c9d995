"""Telegram in polling mode with two app processes: one polls at a time, the other takes over.

Telegram lets one client poll a bot: a second getUpdates call ends the one still waiting with
409 Conflict ("terminated by other getUpdates request"), and `FakeTelegram` does the same. Two
apps sharing a Redis (``REDIS_URL``) and the session's engine and database run Telegram in
polling mode against the fake Bot API: only the holder of the polling lease polls, so no call
is ever ended by the other's; when the holder stops, the other app polls and answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.test_telegram import TOKEN
from tests.support.domain_text import utter
from tests.support.fake_telegram import FakeTelegram
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack

CHAT = 720000001
FIRST_UPDATE_ID = 720000000  # apart from test_telegram's, whose apps share the session's database
WATCH_SECONDS = 6.0  # both apps polling collide within a second or two (each call waits up to 1 s)


@pytest.fixture(scope="module")
def fake_telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram.running(TOKEN, first_update_id=FIRST_UPDATE_ID) as fake:
        yield fake


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def polling_apps(stack: Stack, fake_telegram: FakeTelegram, redis: RedisServer) -> Iterator[list[Stack]]:
    """Two apps beside the session's, in polling mode, sharing one Redis."""
    apps = [stack.sibling(f"telegram-polling-{i}") for i in range(2)]
    try:
        for app in apps:
            app.start_app(
                extra_env={
                    "TELEGRAM_BOT_TOKEN": TOKEN,
                    "TELEGRAM_MODE": "polling",
                    "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
                    "REDIS_URL": redis.url,
                }
            )
        yield apps
    finally:
        for app in apps:
            app.stop_app()
            log = app.workdir / "app.log"
            if log.exists():
                print(f"--- tail of {log} ---")
                print("\n".join(log.read_text(errors="replace").splitlines()[-15:]))


def log_of(app: Stack) -> str:
    return (app.workdir / "app.log").read_text(errors="replace")


def greeted(fake: FakeTelegram, chat_id: int) -> int:
    return [params["text"] for params in fake.sent_to(chat_id)].count(utter("utter_greet"))


def test_two_apps_in_polling_mode_poll_one_at_a_time_and_answer_once(
    polling_apps: list[Stack], fake_telegram: FakeTelegram
) -> None:
    fake_telegram.wait_for_call("getUpdates", timeout=30)
    time.sleep(WATCH_SECONDS)
    assert fake_telegram.calls_of("getUpdates", answered=409) == []
    fake_telegram.queue_for_polling(fake_telegram.message_update(CHAT, text="/start"))
    fake_telegram.wait_for_messages(CHAT, 1)
    time.sleep(2.0)
    assert greeted(fake_telegram, CHAT) == 1
    assert fake_telegram.calls_of("getUpdates", answered=409) == []


def test_when_the_polling_app_stops_the_other_polls_and_answers(
    polling_apps: list[Stack], fake_telegram: FakeTelegram
) -> None:
    before = greeted(fake_telegram, CHAT + 1)
    [polling] = [app for app in polling_apps if "telegram: polling for updates" in log_of(app)]
    polling.stop_app()  # gives its lease back: the other app polls at its next look
    fake_telegram.queue_for_polling(fake_telegram.message_update(CHAT + 1, text="/start"))
    deadline = time.monotonic() + 30
    while greeted(fake_telegram, CHAT + 1) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert greeted(fake_telegram, CHAT + 1) == before + 1
