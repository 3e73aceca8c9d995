"""Limits on the public entry points, through the real app and engine started with small limits.

Each test connects from its own loopback address (127.0.0.x), so the per-address session
limit of one test never counts another's sessions.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from sqlalchemy import select

from bot.channels.webchat import external_id_for
from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.models import ServiceCase
from crm_backend.services.conversations import find_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.settings import normalise_database_url
from tests.integration.test_telegram import (
    TelegramCitizen,
    fake_telegram,  # noqa: F401  (fixture)
    logged_in,
    telegram_app_beside,
)
from tests.integration.test_webchat import ChatClient, ws_url
from tests.support.domain_text import utter
from tests.support.fake_telegram import FakeTelegram
from tests.support.naming import unique
from tests.support.stack import MODEL, Stack

SESSIONS_PER_ADDRESS = 3
MESSAGES_PER_SENDER = 8
CASES_PER_DAY = 1
PHONE = "13912345678"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An engine and an app whose limits are small enough to reach in a test."""
    if not MODEL.exists():
        pytest.fail("no trained model: run bin/setup (bin/test does) before the integration tests")
    running = Stack(
        workdir=Path(tmp_path_factory.mktemp("limits")),
        app_env={
            "WEB_SESSIONS_PER_ADDRESS": str(SESSIONS_PER_ADDRESS),
            "MESSAGES_PER_SENDER": str(MESSAGES_PER_SENDER),
            "MESSAGES_WINDOW_SECONDS": "600",  # a slow machine still sends them "faster than the limit"
            "CASES_PER_CITIZEN_PER_DAY": str(CASES_PER_DAY),
        },
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        for log in ("engine.log", "app.log"):
            path = running.workdir / log
            if path.exists():
                print(f"--- tail of {log} ---")
                print("\n".join(path.read_text(errors="replace").splitlines()[-15:]))


@asynccontextmanager
async def chat_from(stack: Stack, address: str) -> AsyncIterator[ChatClient]:
    """A web chat socket opened from a given loopback address."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.ws_connect(ws_url(stack)) as ws:
        yield ChatClient(ws)


def rest(stack: Stack, sender: str, message: str) -> requests.Response:
    return requests.post(
        f"{stack.app_url}/webhooks/rest/webhook",
        json={"sender": sender, "message": message},
        headers={"Authorization": f"Bearer {stack.secrets['REST_CHANNEL_TOKEN']}"},
        timeout=30,
    )


def texts(replies: list[dict[str, Any]]) -> list[str]:
    return [reply.get("text", "") for reply in replies]


def engine_heard(stack: Stack, sender_id: str) -> list[str]:
    """Every user message the engine's tracker of this sender holds."""
    resp = requests.get(
        f"{stack.engine_url}/conversations/{sender_id}/tracker",
        headers=stack.engine_api_headers(),
        timeout=30,
    )
    resp.raise_for_status()
    return [event.get("text") or "" for event in resp.json()["events"] if event["event"] == "user"]


def start_report(stack: Stack, sender: str) -> None:
    replies = rest(stack, sender, "路边的井盖丢了好几天了，晚上走路很危险").json()
    assert texts(replies) == [utter("utter_ask_location")]
    assert texts(rest(stack, sender, "A3区五一大道和芙蓉路交叉口").json()) == [utter("utter_ask_contact_phone")]
    summary, preview = rest(stack, sender, PHONE).json()
    assert "井盖丢了" in summary["text"]
    if [b["title"] for b in preview.get("buttons", [])] == ["仍然提交", "不用了"]:
        # Another test's open case with the same words: 仍然提交 leads to the full read-back.
        summary, preview = rest(stack, sender, "/affirm").json()
    assert preview["text"].endswith("确认提交吗？"), preview


def confirm(stack: Stack, sender: str) -> str:
    return str(rest(stack, sender, "/affirm").json()[0]["text"])


# --- new web chat sessions per address ------------------------------------------------------


async def test_an_address_opening_more_web_sessions_than_allowed_is_told_to_try_later(limited: Stack) -> None:
    tokens = []
    for _ in range(SESSIONS_PER_ADDRESS):
        async with chat_from(limited, "127.0.0.2") as chat:
            tokens.append((await chat.hello())["session"])
    async with chat_from(limited, "127.0.0.2") as chat:
        await chat.send({"type": "hello", "session": None})
        refusal = await chat.expect("error")
        assert refusal["code"] == "too_many_sessions"
        assert refusal["message"] == utter("utter_too_many_sessions")
        closing = await chat.ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    async with chat_from(limited, "127.0.0.2") as chat:  # a token nobody issued is a new session too
        await chat.send({"type": "hello", "session": "x" * 32})
        assert (await chat.expect("error"))["code"] == "too_many_sessions"
    async with chat_from(limited, "127.0.0.2") as chat:  # a browser coming back is not a new session
        welcome = await chat.hello(tokens[0])
        assert welcome["session"] == tokens[0]
    async with chat_from(limited, "127.0.0.3") as chat:  # another address has its own allowance
        await chat.hello()


# --- messages per sender ----------------------------------------------------------------------


def test_a_rest_sender_faster_than_the_limit_gets_429_and_the_engine_never_sees_it(limited: Stack) -> None:
    sender = unique("flood")
    for index in range(MESSAGES_PER_SENDER):
        assert rest(limited, sender, f"你好 {index}").status_code == 200
    refused = rest(limited, sender, "你好 over the limit")
    assert refused.status_code == 429
    assert refused.json() == {"error": "too_many_messages", "message": utter("utter_too_many_messages")}
    heard = engine_heard(limited, f"rest:{sender}")
    assert [f"你好 {index}" for index in range(MESSAGES_PER_SENDER)] == heard
    assert rest(limited, f"{sender}-other", "你好").status_code == 200  # another sender is not held back


async def test_a_web_chat_message_over_the_limit_is_refused_by_id_and_not_processed(limited: Stack) -> None:
    async with chat_from(limited, "127.0.0.4") as chat:
        session = (await chat.hello())["session"]
        for index in range(MESSAGES_PER_SENDER):
            await chat.say(f"你好 {index}")
        over = await chat.send_message("你好 over the limit", msg_id="over-the-limit")
        refusal = await chat.expect("error")
        assert refusal == {
            "type": "error",
            "code": "too_many_messages",
            "message": utter("utter_too_many_messages"),
            "id": over,
        }
        await chat.assert_silent(1.5)  # no ack, no reply: it was not taken
    heard = engine_heard(limited, f"web:{external_id_for(session)}")
    assert heard == [f"你好 {index}" for index in range(MESSAGES_PER_SENDER)]


@pytest.fixture(scope="module")
def limited_telegram(limited: Stack, fake_telegram: FakeTelegram) -> Iterator[Stack]:  # noqa: F811
    """A Telegram-enabled app beside `limited`, with the same small limits."""
    with telegram_app_beside(limited, fake_telegram) as app:
        yield app


def test_a_telegram_chat_faster_than_the_limit_is_told_and_the_engine_never_sees_it(
    limited: Stack,
    limited_telegram: Stack,
    fake_telegram: FakeTelegram,  # noqa: F811
) -> None:
    citizen = TelegramCitizen(fake_telegram, limited_telegram)
    for index in range(MESSAGES_PER_SENDER):
        assert citizen.say(f"你好 {index}")
    assert texts(citizen.say("你好 over the limit")) == [utter("utter_too_many_messages")]
    heard = engine_heard(limited, f"telegram:{citizen.chat_id}")
    assert heard == [f"你好 {index}" for index in range(MESSAGES_PER_SENDER)]
    assert [text for text, _ in logged_in(limited_telegram, citizen.chat_id)] == heard


# --- cases per citizen per day ----------------------------------------------------------------


def test_a_citizen_at_the_daily_case_limit_is_told_so_when_starting_another_report(limited: Stack) -> None:
    sender = unique("filer")
    start_report(limited, sender)
    assert re.search(r"\d{8}-\d{4,6}", confirm(limited, sender))
    replies = rest(limited, sender, "小区里的路灯坏了三天了，晚上很黑").json()
    assert texts(replies) == [utter("utter_case_limit_reached")]  # before any question of the form
    replies = rest(limited, sender, "A1区人民路").json()
    assert utter("utter_ask_contact_phone") not in texts(replies)  # no form is waiting for answers


async def test_a_report_confirmed_after_the_limit_was_reached_files_nothing(limited: Stack) -> None:
    sender = unique("late")
    start_report(limited, sender)  # allowed: nothing filed yet today
    filed_meanwhile = await file_elsewhere(limited, f"rest:{sender}")  # e.g. on the citizen's other channel
    assert confirm(limited, sender) == utter("utter_case_limit_reached")
    assert await case_numbers_of(limited, f"rest:{sender}") == [filed_meanwhile]


async def file_elsewhere(stack: Stack, sender_id: str) -> str:
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine).begin() as session:
            identity = await find_identity(session, sender_id)
            assert identity is not None
            report = Report(description="楼道灯坏了", location="A1区解放路", contact_phone=PHONE, district="A1区")
            return (await file_case(session, identity, report)).case_number
    finally:
        await engine.dispose()


async def case_numbers_of(stack: Stack, sender_id: str) -> list[str]:
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine)() as session:
            identity = await find_identity(session, sender_id)
            assert identity is not None
            rows = await session.scalars(
                select(ServiceCase.case_number).where(ServiceCase.citizen_id == identity.citizen_id)
            )
            return list(rows.all())
    finally:
        await engine.dispose()
