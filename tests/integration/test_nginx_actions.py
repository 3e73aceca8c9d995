"""nginx's internal listener sends an engine's action call again when the app it reached dies.

The real nginx from `bin/cluster`'s template, in front of two upstreams on loopback: one reads
the call and closes the connection without answering (an app SIGKILLed mid-call), the other
answers. Every call the engine makes must come back answered by the second; the app side makes
a resent filing harmless (`test_actions.py::test_the_same_confirmation_submitted_again_…`).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.cluster import start_nginx
from tests.support.stack import free_port, stop_process_group

CALLS = 4


class DyingApp:
    """Reads an HTTP request, then closes the connection with no answer; counts the requests."""

    def __init__(self) -> None:
        self.requests = 0
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
        )
        await reader.readexactly(length)
        self.requests += 1
        writer.transport.abort()  # no answer, as a process killed mid-call

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[DyingApp, list[bytes], str]]:
    """The dying app, what the answering app received, and nginx's internal listener's URL."""
    dying = DyingApp()
    await dying.start()
    received: list[bytes] = []

    async def webhook(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"events": [], "responses": []})

    app = web.Application()
    app.router.add_post("/webhook", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    answering_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", answering_port).start()
    root = Path(tempfile.mkdtemp(prefix="crm-nginx-"))
    actions_port = free_port()
    nginx = await asyncio.to_thread(
        start_nginx, root, port=free_port(), actions_port=actions_port, app_ports=[dying.port, answering_port]
    )
    try:
        yield dying, received, f"http://127.0.0.1:{actions_port}/webhook"
    finally:
        stop_process_group(nginx)
        shutil.rmtree(root, ignore_errors=True)
        await runner.cleanup()
        await dying.stop()


async def test_an_action_call_whose_app_dies_is_answered_by_another(
    upstreams: tuple[DyingApp, list[bytes], str],
) -> None:
    dying, received, url = upstreams
    async with aiohttp.ClientSession() as http:
        for number in range(CALLS):
            body = f'{{"next_action": "action_submit_report", "sender_id": "rest:c{number}"}}'.encode()
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"events": [], "responses": []}
    assert dying.requests >= 1  # the first call reached the dying app
    assert len(received) == CALLS  # …and every call, that one too, was answered by the other
    assert received[0] == b'{"next_action": "action_submit_report", "sender_id": "rest:c0"}'
