"""Two real app processes sharing one database and one Redis (``REDIS_URL``): what happens on one
reaches a citizen's web chat and a console held by the other.

Both apps are siblings of the session's stack (its engine and database) with a throwaway Redis
(`tests.support.redis_server`); without Redis each would keep its sockets and consoles to itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest

from tests.integration.test_handoff import conversation_of, expect_handoff, marker, send_unanswered, staff_reply
from tests.integration.test_webchat import open_chat
from tests.support.console import ConsoleClient, create_staff
from tests.support.naming import unique
from tests.support.redis_server import RedisServer
from tests.support.stack import Stack


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_apps(stack: Stack, redis_server: RedisServer) -> Iterator[tuple[Stack, Stack]]:
    apps = (stack.sibling("shared-app-a"), stack.sibling("shared-app-b"))
    try:
        for app in apps:
            app.app_env["REDIS_URL"] = redis_server.url
            app.start_app()
        yield apps
    finally:
        for app in apps:
            app.stop_app()


async def test_a_staff_reply_made_on_one_app_reaches_a_web_chat_open_on_the_other(
    two_apps: tuple[Stack, Stack],
) -> None:
    first, second = two_apps
    async with open_chat(first) as chat:
        await chat.hello()
        await expect_handoff(chat, "转人工")
        question = marker("请问垃圾清运几点来")
        await send_unanswered(chat, question)
        conversation_id = await asyncio.to_thread(conversation_of, second, question)

        assert await asyncio.to_thread(staff_reply, second, conversation_id, "今晚八点前清运。", "王芳")
        reply = await chat.expect("reply")
        assert [(m["text"], m["sender"]) for m in reply["messages"]] == [
            ("今晚八点前清运。", {"kind": "staff", "name": "王芳"})
        ]


async def test_an_escalation_on_one_app_appears_on_a_console_held_by_the_other(
    stack: Stack, two_apps: tuple[Stack, Stack]
) -> None:
    first, second = two_apps
    supervisor = await asyncio.to_thread(create_staff, stack, "supervisor", None, "值班王")
    console = ConsoleClient(first)
    signed = await asyncio.to_thread(console.login, supervisor)
    assert signed.status_code == 200 and console.csrf
    cookies = {cookie.name: cookie.value or "" for cookie in console.http.cookies}

    async with (
        aiohttp.ClientSession(cookies=cookies) as http,
        http.get(f"{console.base}/events", timeout=aiohttp.ClientTimeout(total=60)) as stream,
    ):
        assert stream.status == 200

        async def next_escalation() -> dict[str, object]:
            kind = ""
            async for raw in stream.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: ") and kind == "escalation":
                    return dict(json.loads(line.removeprefix("data: ")))
            raise AssertionError("stream ended")

        await asyncio.sleep(0.5)  # the stream has subscribed
        replies = await asyncio.to_thread(second.rest, unique("shared"), "我要转人工")
        assert replies, "the bot said nothing on handoff"
        escalation = await asyncio.wait_for(next_escalation(), 20)
        assert isinstance(escalation["conversation_id"], int)
