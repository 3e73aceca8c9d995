"""The web chat: a static page and a websocket that speaks the widget's JSON protocol.

Deliberately public. A browser proves who it is with a random session token the server
issued (kept in the browser's localStorage); the CRM stores only a hash of it. See
`bot/static/chat.js` for the protocol from the browser's side.

Limits: a hello that starts a new session (no token, or one the CRM does not know) counts
against the client address's allowance of new sessions; past it the socket gets an error
frame with `utter_too_many_sessions` and is closed. A message over the sender's limit gets
an error frame with `utter_too_many_messages` and its id (the page marks it 未发送).

A new conversation opens with the privacy notice, logged as a system message, then the greeting.

Hand-off: the hand-off frame (and the welcome, while staff hold the conversation) tells the
page whether staff are on duty and carries the bot's hand-off sentence for its banner
(`bot.handoff_banner`), so off duty the page says when staff will answer and fakes no typing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.handoff_banner import HandoffBanner
from bot.hub import ConversationHub
from bot.pipeline import Inbound, MessagePipeline, Outcome
from bot.responses import Responses
from crm_backend.errors import TooManyMessages, TooManySessions, describe_error
from crm_backend.http import client_address
from crm_backend.models import Message
from crm_backend.services.conversations import (
    OutgoingMessage,
    conversation_history,
    current_conversation,
    find_identity,
    log_incoming,
    log_outgoing,
    resolve_identity,
)
from crm_backend.services.handoff import BOT
from crm_backend.services.limits import Limit, RateLimiter

logger = logging.getLogger(__name__)

CHANNEL = "web"
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SESSION_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
CLIENT_MSG_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_FRAME_BYTES = 256 * 1024
MAX_PAYLOAD_CHARS = 500
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class FrameError(Exception):
    """A websocket frame the protocol does not allow; `code` goes back to the client."""

    def __init__(self, code: str, message: str, client_msg_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.client_msg_id = client_msg_id


def external_id_for(token: str) -> str:
    """What the CRM stores for a web session: a hash, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:40]


def serialise_message(message: Message) -> dict[str, Any]:
    """A logged message as the widget renders it."""
    return {
        "id": message.client_msg_id,
        "direction": message.direction,
        "text": message.text,
        "buttons": message.buttons or [],
        "sender": {"kind": message.sender_kind, "name": message.sender_name},
        "at": message.created_at.isoformat(),
    }


def serialise_outgoing(message: OutgoingMessage) -> dict[str, Any]:
    return {
        "text": message.text,
        "buttons": message.buttons or [],
        "sender": {"kind": message.sender_kind, "name": message.sender_name},
    }


class WebChat:
    """Serves the page and runs one websocket session per browser tab."""

    def __init__(
        self,
        pipeline: MessagePipeline,
        sessions: async_sessionmaker[AsyncSession],
        hub: ConversationHub,
        responses: Responses,
        allowed_origins: tuple[str, ...],
        max_logged_chars: int,
        banner: HandoffBanner,
        limiter: RateLimiter | None = None,
        session_limit: Limit | None = None,
        privacy_notice: str | None = None,
    ) -> None:
        """
        Args:
            privacy_notice: said before the greeting of every new conversation (what is kept, for
                how long, who sees it); None says nothing.
        """
        self._privacy_notice = privacy_notice
        self._pipeline = pipeline
        self._banner = banner
        self._limiter = limiter
        self._session_limit = session_limit
        self._sessions = sessions
        self._hub = hub
        self._responses = responses
        self._allowed_origins = allowed_origins
        self._max_logged_chars = max_logged_chars

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/ws", self.websocket)
        app.router.add_static("/static/", STATIC_DIR, append_version=False)

    async def index(self, request: web.Request) -> web.FileResponse:
        response = web.FileResponse(STATIC_DIR / "index.html")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: nothing cross-site to defend against
            return True
        if origin in self._allowed_origins:
            return True
        return origin in (f"http://{request.host}", f"https://{request.host}")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        if not self._origin_allowed(request):
            raise web.HTTPForbidden(text=json.dumps({"error": "origin not allowed"}), content_type="application/json")
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=MAX_FRAME_BYTES)
        await ws.prepare(request)
        address = client_address(request)
        session_token: str | None = None
        conversation_id: int | None = None
        try:
            async for frame in ws:
                if frame.type == WSMsgType.ERROR:
                    break
                try:
                    if frame.type == WSMsgType.BINARY:
                        if session_token is None:
                            raise FrameError("hello_required", "send a hello frame first")
                        await self._unsupported(ws, session_token, f"<binary frame, {len(frame.data)} bytes>")
                        continue
                    if frame.type != WSMsgType.TEXT:
                        continue
                    data = _parse_frame(frame.data)
                    if data["type"] == "hello":
                        if conversation_id is not None:
                            self._hub.unregister(conversation_id, ws)
                            conversation_id = None
                        try:
                            session_token, conversation_id = await self._hello(ws, data.get("session"), address)
                        except TooManySessions as refused:
                            await ws.send_json({"type": "error", "code": refused.code, "message": str(refused)})
                            await ws.close()
                            break
                        self._hub.register(conversation_id, ws)
                    elif data["type"] == "message":
                        if session_token is None:
                            raise FrameError("hello_required", "send a hello frame first")
                        await self._message(ws, session_token, data)
                    elif data["type"] == "ping":
                        await ws.send_json({"type": "pong"})
                    else:
                        raise FrameError("unknown_type", "unknown frame type")
                except FrameError as error:
                    await ws.send_json(
                        {"type": "error", "code": error.code, "message": str(error), "id": error.client_msg_id}
                    )
                except Exception as error:  # one bad frame must never end the citizen's session
                    if ws.closed:  # closed under it (a resync, shutdown): the page reconnects
                        break
                    # The frame's length and the error, never its content: it is what a citizen wrote.
                    logger.error("web chat frame of %d characters failed: %s", len(frame.data), describe_error(error))
                    await ws.send_json({"type": "error", "code": "internal_error", "message": "internal error"})
        finally:
            if conversation_id is not None:
                self._hub.unregister(conversation_id, ws)
        return ws

    async def _hello(self, ws: web.WebSocketResponse, token: Any, address: str) -> tuple[str, int]:
        """Welcome a browser back to its session, or to a new one if the address may open one.

        Raises:
            TooManySessions: a new session, and the address opened its allowance of them recently.
        """
        if not isinstance(token, str) or not SESSION_TOKEN.fullmatch(token):
            token = None
        if token is None or not await self._known(token):
            if not await self._new_session_allowed(address):
                raise TooManySessions(self._responses.text("utter_too_many_sessions"))
            token = token or secrets.token_urlsafe(24)
        async with self._sessions.begin() as session:
            identity = await resolve_identity(session, CHANNEL, external_id_for(token))
            conversation = await current_conversation(session, identity)
            history = await conversation_history(session, conversation)
            if not history:
                # A conversation opens with the privacy notice (what is kept, for how long, who
                # sees it), then the assistant saying what it can do, with the main services as
                # buttons (logged, so they are offered payloads like any reply).
                history = log_outgoing(session, conversation, [*self._notice(), self._welcome()])
                await session.flush()
            handoff = conversation.handoff_status != BOT
            conversation_id = conversation.id
        welcome: dict[str, Any] = {
            "type": "welcome",
            "session": token,
            "history": [serialise_message(message) for message in history],
            "handoff": handoff,
        }
        if handoff:
            welcome["handoff_state"] = self._banner.state()
        await ws.send_json(welcome)
        return token, conversation_id

    def _notice(self) -> list[OutgoingMessage]:
        if self._privacy_notice is None:
            return []
        return [OutgoingMessage(self._privacy_notice, sender_kind="system")]

    def _welcome(self) -> OutgoingMessage:
        return OutgoingMessage(self._responses.text("utter_welcome"), buttons=self._responses.buttons("utter_welcome"))

    async def _known(self, token: str) -> bool:
        async with self._sessions() as session:
            return await find_identity(session, f"{CHANNEL}:{external_id_for(token)}") is not None

    async def _new_session_allowed(self, address: str) -> bool:
        if self._limiter is None or self._session_limit is None:
            return True
        if await self._limiter.acquire(self._session_limit, address):
            return True
        logger.warning("web chat: new session from %s refused (session limit reached)", address)
        return False

    async def _message(self, ws: web.WebSocketResponse, token: str, data: dict[str, Any]) -> None:
        client_msg_id = data.get("id")
        if client_msg_id is not None and (
            not isinstance(client_msg_id, str) or not CLIENT_MSG_ID.fullmatch(client_msg_id)
        ):
            raise FrameError("bad_id", "id must be 1-64 letters, digits, - or _")
        text = data.get("text", "")
        payload = data.get("payload")
        if not isinstance(text, str):
            raise FrameError("bad_text", "text must be a string", client_msg_id)
        if payload is not None and (
            not isinstance(payload, str) or not payload.startswith("/") or len(payload) > MAX_PAYLOAD_CHARS
        ):
            raise FrameError("bad_payload", "payload must be a button payload starting with /", client_msg_id)

        async def acknowledge(_conversation_id: int) -> None:
            if client_msg_id is not None:
                await ws.send_json({"type": "ack", "id": client_msg_id})

        try:
            outcome = await self._pipeline.handle(
                Inbound(CHANNEL, external_id_for(token), text, payload=payload, client_msg_id=client_msg_id),
                on_logged=acknowledge,
            )
        except TooManyMessages as refused:  # an id on the error tells the page this one was not taken
            raise FrameError(refused.code, str(refused), client_msg_id) from refused
        await self._deliver(ws, outcome, client_msg_id)

    async def _deliver(self, ws: web.WebSocketResponse, outcome: Outcome, client_msg_id: str | None) -> None:
        # A message sent again after it was answered gets that answer again, as on the REST channel.
        replies = outcome.replies or outcome.earlier_answers
        if replies and not ws.closed:  # closed meanwhile: the page reads the answer from its history
            await ws.send_json(
                {
                    "type": "reply",
                    "in_reply_to": client_msg_id,
                    "messages": [serialise_outgoing(reply) for reply in replies],
                }
            )
        if outcome.handoff_started:
            await self._hub.publish(outcome.conversation_id, self._banner.frame())

    async def _unsupported(self, ws: web.WebSocketResponse, token: str, description: str) -> None:
        try:
            await self._pipeline.admit(CHANNEL, external_id_for(token))
        except TooManyMessages as refused:
            raise FrameError(refused.code, str(refused)) from refused
        reply = OutgoingMessage(self._responses.text("utter_unsupported_content"), sender_kind="system")
        async with self._sessions.begin() as session:
            identity = await resolve_identity(session, CHANNEL, external_id_for(token))
            conversation = await current_conversation(session, identity)
            log_incoming(session, conversation, description, max_chars=self._max_logged_chars)
            log_outgoing(session, conversation, [reply])
        await ws.send_json({"type": "reply", "in_reply_to": None, "messages": [serialise_outgoing(reply)]})


def _parse_frame(raw: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise FrameError("bad_json", "frame is not valid JSON") from error
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise FrameError("bad_frame", "frame must be a JSON object with a string 'type'")
    return data
