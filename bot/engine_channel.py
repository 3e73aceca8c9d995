"""Input channel loaded *by the Rasa engine* (Python 3.10 venv), not by the app.

Rasa's REST channel trusts any caller. This one is the same REST format behind a bearer
token, so only the app can speak for citizens even on a shared host. Keep this module
free of app imports: it runs inside the engine's process.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from rasa.core.channels.channel import UserMessage
from rasa.core.channels.rest import RestInput
from sanic import Blueprint, response
from sanic.request import Request


class AppInput(RestInput):
    """Rasa's REST channel format, accepted only with the shared engine token."""

    def __init__(self, token: str) -> None:
        self.token = token

    @classmethod
    def name(cls) -> str:
        return "app"

    @classmethod
    def from_credentials(cls, credentials: dict[str, Any] | None) -> "AppInput":
        token = (credentials or {}).get("token") or ""
        if len(token) < 16:
            raise ValueError("the app channel needs a token of at least 16 characters")
        return cls(token)

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[None]]) -> Blueprint:
        blueprint = super().blueprint(on_new_message)
        expected = f"Bearer {self.token}".encode()

        @blueprint.middleware("request")
        async def require_token(request: Request) -> response.HTTPResponse | None:
            supplied = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(supplied, expected):
                return response.json({"error": "unauthorized"}, status=401)
            return None

        return blueprint
