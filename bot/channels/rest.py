"""Rasa's REST channel format for integrators (a partner app, the phone IVR's transcripts).

``POST /webhooks/rest/webhook`` with ``{"sender": "...", "message": "..."}`` answers
``[{"recipient_id": "...", "text": "...", "buttons": [...]}]``, through the same pipeline
as the web chat. Integrators authenticate with a bearer token: the sender id they send
is an identity, and identities can read their own cases.

A message may carry the integrator's own ``"message_id"`` (1-64 letters, digits, ``-`` or
``_``): posted again with the same id (no answer came, the connection broke), it is logged
once and answered with what was answered the first time, or answered now if the first
sending never reached the engine's answer (the app that took it died).

A sender over the message limit gets ``429 {"error": "too_many_messages", "message": "<the
Chinese sentence for the citizen>"}`` (the app's one error shape); the message was not processed.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from bot.pipeline import Inbound, MessagePipeline
from crm_backend.errors import InvalidInput
from crm_backend.http import json_response, read_json_object, require_bearer

CHANNEL = "rest"
SENDER = re.compile(r"[A-Za-z0-9_.@:+-]{1,100}")
MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # as the web chat's message ids
MAX_BODY_BYTES = 1024 * 1024


class RestChannel:
    """The REST webhook."""

    def __init__(self, pipeline: MessagePipeline, token: str) -> None:
        self._pipeline = pipeline
        self._token = token

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/webhooks/rest/webhook", self.receive)

    async def receive(self, request: web.Request) -> web.Response:
        require_bearer(request, self._token)
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise InvalidInput("too_large", "body larger than 1 MiB")
        data = await read_json_object(request)
        sender = data.get("sender")
        message = data.get("message", "")
        message_id = data.get("message_id")
        if not isinstance(sender, str) or not SENDER.fullmatch(sender):
            raise InvalidInput("bad_sender", "sender must be 1-100 letters, digits or . _ @ : + -")
        if not isinstance(message, str):
            raise InvalidInput("bad_message", "message must be a string")
        if message_id is not None and (not isinstance(message_id, str) or not MESSAGE_ID.fullmatch(message_id)):
            raise InvalidInput("bad_message_id", "message_id must be 1-64 letters, digits, - or _")
        payload = message if message.startswith("/") and len(message) < 500 else None
        outcome = await self._pipeline.handle(
            Inbound(CHANNEL, sender, message, payload=payload, client_msg_id=message_id)
        )
        body: list[dict[str, Any]] = []
        for reply in outcome.replies or outcome.earlier_answers:
            item: dict[str, Any] = {"recipient_id": sender, "text": reply.text}
            if reply.buttons:
                item["buttons"] = reply.buttons
            body.append(item)
        return json_response(body)
