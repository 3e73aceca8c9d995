"""A local stand-in for Telegram's Bot API, for the integration tests of the Telegram channel.

An aiohttp server on 127.0.0.1 in a thread of its own (so sync and async tests can use it). It
answers ``/bot<token>/<method>`` the way the Bot API does, records every call (``sendMessage``,
``answerCallbackQuery``, ``setWebhook``, ``getMe``, ...), can be told to answer the next calls
with 429 and ``retry_after``, to be down (HTTP 500) until told otherwise, or to answer slowly,
and posts updates to the app's webhook with the secret header, like Telegram.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests
from aiohttp import web

from tests.support.stack import free_port

CONFLICT = {
    "ok": False,
    "error_code": 409,
    "description": "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
}
BOT_USER = {"id": 7000001, "is_bot": True, "first_name": "12345助手", "username": "city12345_test_bot"}


@dataclass
class Call:
    """One Bot API request the app made."""

    method: str
    params: dict[str, Any]
    at: float  # time.monotonic()
    answered: int  # the HTTP status the fake answered


@dataclass
class FakeTelegram:
    """The fake Bot API server."""

    token: str
    port: int = field(default_factory=free_port)
    # Where this fake's update ids start: fakes whose apps share a database (the session's) must
    # not reuse each other's, or the app takes an update for one it already processed.
    first_update_id: int = 500000
    calls: list[Call] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _throttle: dict[str, list[int]] = field(default_factory=dict)  # method -> retry_after for each next call
    _down: set[str] = field(default_factory=set)
    _slow: dict[str, float] = field(default_factory=dict)  # method -> seconds before each answer
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _updates: itertools.count[int] = field(init=False)
    _polled: list[dict[str, Any]] = field(default_factory=list)  # updates waiting for getUpdates
    _polls: itertools.count[int] = field(default_factory=itertools.count)  # each getUpdates call's number
    _latest_poll: int = -1  # the newest getUpdates call: an older one still waiting is ended with 409
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._updates = itertools.count(self.first_update_id)

    @property
    def base_url(self) -> str:
        """What the app gets as TELEGRAM_API_BASE_URL."""
        return f"http://127.0.0.1:{self.port}/bot"

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_route("*", "/bot{token}/{method}", self._handle)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-telegram", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake Telegram server did not start")

    @classmethod
    @contextmanager
    def running(cls, token: str, **options: Any) -> Iterator[FakeTelegram]:
        """A started fake, stopped when the block ends."""
        fake = cls(token, **options)
        fake.start()
        try:
            yield fake
        finally:
            fake.stop()

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # --- behaviour ----------------------------------------------------------------------------

    def throttle(self, method: str, times: int, retry_after: int) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and ``retry_after``."""
        with self._lock:
            self._throttle.setdefault(method, []).extend([retry_after] * times)

    def go_down(self, method: str) -> None:
        """Answer every call of ``method`` with HTTP 500 until `come_back`."""
        with self._lock:
            self._down.add(method)

    def come_back(self, method: str) -> None:
        with self._lock:
            self._down.discard(method)

    def answer_slowly(self, method: str, seconds: float) -> None:
        """Take ``seconds`` to answer each call of ``method`` (0: at once again), as a loaded Bot API does."""
        with self._lock:
            self._slow[method] = seconds

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return self._record(method, {}, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        params = await _params(request)
        with self._lock:
            pending = self._throttle.get(method)
            retry_after = pending.pop(0) if pending else None
            down = method in self._down
            delay = self._slow.get(method, 0.0)
        if delay:
            await asyncio.sleep(delay)
        if retry_after is not None:
            body = {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {retry_after}",
                "parameters": {"retry_after": retry_after},
            }
            return self._record(method, params, 429, body)
        if down:
            return self._record(method, params, 500, {"ok": False, "error_code": 500, "description": "Internal error"})
        if method == "getUpdates":
            updates = await self._long_poll(params)
            if updates is None:
                return self._record(method, params, 409, CONFLICT)
            return self._record(method, params, 200, {"ok": True, "result": updates})
        return self._record(method, params, 200, {"ok": True, "result": self._result(method, params)})

    async def _long_poll(self, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Updates from ``offset`` on, waiting up to a second for one (Telegram waits ``timeout``).

        None when another getUpdates call came meanwhile: Telegram ends the older one with 409
        Conflict, as two processes polling one bot find out.
        """
        offset = int(params.get("offset") or 0)
        with self._lock:
            mine = self._latest_poll = next(self._polls)
        for _ in range(20):
            with self._lock:
                if self._latest_poll != mine:
                    return None
                self._polled = [u for u in self._polled if u["update_id"] >= offset]
                ready = list(self._polled)
            if ready:
                return ready
            await asyncio.sleep(0.05)
        return []

    def _record(self, method: str, params: dict[str, Any], status: int, body: dict[str, Any]) -> web.Response:
        with self._lock:
            self.calls.append(Call(method, params, time.monotonic(), status))
        return web.json_response(body, status=status)

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method == "sendMessage":
            message: dict[str, Any] = {
                "message_id": next(self._ids),
                "date": int(time.time()),
                "chat": {"id": int(params["chat_id"]), "type": "private"},
                "from": BOT_USER,
                "text": params.get("text", ""),
            }
            if "reply_markup" in params:
                message["reply_markup"] = params["reply_markup"]
            return message
        return True

    # --- what the app did ---------------------------------------------------------------------

    def calls_of(self, method: str, **match: Any) -> list[Call]:
        """Recorded calls of a method (answered with 200 unless ``answered`` is given) whose params match."""
        status = match.pop("answered", 200)
        with self._lock:
            calls = list(self.calls)
        return [
            call
            for call in calls
            if call.method == method
            and call.answered == status
            and all(str(call.params.get(k)) == str(v) for k, v in match.items())
        ]

    def sent_to(self, chat_id: int) -> list[dict[str, Any]]:
        """The messages delivered to a chat, oldest first."""
        return [call.params for call in self.calls_of("sendMessage", chat_id=chat_id)]

    def wait_for_messages(self, chat_id: int, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the chat has at least ``count`` messages; returns them all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent = self.sent_to(chat_id)
            if len(sent) >= count:
                return sent
            time.sleep(0.05)
        raise AssertionError(f"chat {chat_id} got {len(self.sent_to(chat_id))} messages, expected {count}")

    def wait_for_call(self, method: str, timeout: float = 30.0, **match: Any) -> Call:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.calls_of(method, **match)
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no {method} call matching {match} within {timeout}s")

    def queue_for_polling(self, update: dict[str, Any]) -> None:
        """Hold an update until the app asks for it with getUpdates (polling mode)."""
        with self._lock:
            self._polled.append(update)

    # --- updates to the app -------------------------------------------------------------------

    def post_update(self, webhook_url: str, update: dict[str, Any], secret: str | None) -> requests.Response:
        """POST an update to the app's webhook, as Telegram does (``secret`` None: no header)."""
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        return requests.post(webhook_url, json=update, headers=headers, timeout=10)

    def message_update(self, chat_id: int, **content: Any) -> dict[str, Any]:
        """An update with a private message: ``text=...``, ``photo=[...]``, ``location={...}``, ``sticker={...}``."""
        message: dict[str, Any] = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": "市民"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "市民"},
            **content,
        }
        text = content.get("text")
        if isinstance(text, str) and text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return {"update_id": next(self._updates), "message": message}

    def callback_update(self, chat_id: int, pressed: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
        """An update for pressing button ``pressed`` (as sent) on message ``on`` (a recorded sendMessage)."""
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": BOT_USER,
            "text": on.get("text", ""),
            "reply_markup": on.get("reply_markup"),
        }
        return {
            "update_id": next(self._updates),
            "callback_query": {
                "id": str(next(self._ids)),
                "from": {"id": chat_id, "is_bot": False, "first_name": "市民"},
                "chat_instance": str(chat_id),
                "message": message,
                "data": pressed["callback_data"],
            },
        }


async def _params(request: web.Request) -> dict[str, Any]:
    """A Bot API call's parameters: form fields (PTB sends JSON-encoded values for objects) or a JSON body."""
    if request.content_type == "application/json":
        data = await request.json()
        return dict(data) if isinstance(data, dict) else {}
    form = await request.post()
    params: dict[str, Any] = {key: value for key, value in form.items() if isinstance(value, str)}
    for key in ("reply_markup", "allowed_updates"):
        if key in params:
            params[key] = json.loads(params[key])
    return params


def keyboard_buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The inline buttons of a sent message, in order."""
    markup = message.get("reply_markup") or {}
    return [button for row in markup.get("inline_keyboard", []) for button in row]
