"""When a citizen's message fails, the log says how long it was and what went wrong, never what it said."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.webchat import WebChat
from bot.handoff_banner import HandoffBanner
from bot.hub import ConversationHub
from bot.pipeline import Inbound, MessagePipeline
from bot.responses import Responses
from crm_backend.duty import DutyHours
from crm_backend.http import error_middleware
from crm_backend.settings import PROJECT_ROOT

PRIVATE = "我的身份证号是110101199003077777，住在幸福路8号"


class FailingPipeline:
    """A pipeline whose storage fails the way a database driver does: quoting the value it refused."""

    async def handle(self, inbound: Inbound, on_logged: Any = None) -> Any:
        raise ValueError(f"invalid byte sequence in parameters: ({inbound.text!r},)")


async def test_a_failed_web_chat_frame_is_logged_by_length_and_error_not_content(
    sessions: async_sessionmaker[AsyncSession], caplog: pytest.LogCaptureFixture
) -> None:
    failing: Any = FailingPipeline()
    pipeline: MessagePipeline = failing
    app = web.Application()
    responses = Responses.load(PROJECT_ROOT / "domain.yml")
    banner = HandoffBanner(responses, DutyHours.parse("09:00-18:00"))
    WebChat(pipeline, sessions, ConversationHub(), responses, (), 2000, banner).add_routes(app)
    frame = json.dumps({"type": "message", "id": "m1", "text": PRIVATE}, ensure_ascii=False)
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/ws")
        await ws.send_json({"type": "hello"})
        assert (await ws.receive_json())["type"] == "welcome"
        with caplog.at_level(logging.INFO):
            await ws.send_str(frame)
            answer = await ws.receive_json()
        await ws.close()
    assert answer["code"] == "internal_error"
    assert f"{len(frame)} characters" in caplog.text
    assert "ValueError" in caplog.text
    assert "110101199003077777" not in caplog.text and "幸福路" not in caplog.text


async def test_an_unhandled_error_behind_the_rest_channel_is_logged_without_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails(request: web.Request) -> web.Response:
        body = await request.json()
        raise ValueError(f"invalid byte sequence in parameters: ({body['message']!r},)")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/webhooks/rest/webhook", fails)
    async with TestClient(TestServer(app)) as client:
        with caplog.at_level(logging.INFO):
            resp = await client.post("/webhooks/rest/webhook", json={"sender": "a", "message": PRIVATE})
    assert resp.status == 500
    assert "ValueError" in caplog.text
    assert "110101199003077777" not in caplog.text and "幸福路" not in caplog.text
