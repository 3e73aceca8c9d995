"""Input channel loaded *by the Rasa engine* (Python 3.10 venv), not by the app.

Rasa's REST channel trusts any caller. This one is the same REST format behind a bearer
token, so only the app can speak for citizens even on a shared host. Keep this module
free of app imports: it runs inside the engine's process.

The app's letter gate (`bot.letters`) may steer a letter: its metadata then carries
``{"letter": {"intent": "report_issue" | "ask_faq", "confidence": 0.93}}``. The channel turns
that into the message's parse data (Rasa 3.6's processor uses a `UserMessage`'s ``parse_data``
instead of running the NLU, `MessageProcessor._handle_message_with_tracker`), so the dialogue
starts the report or answers the question while the actions still read the letter's own text.
Only those two intents can be steered; any other metadata leaves the message to the NLU.

A turn that failed is answered 503: one the tracker store could not read or write (see
`bot.engine_tracker_store`), or one that raised (Rasa's Redis lock store while Redis restarts).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
from rasa.core.channels.rest import RestInput
from sanic import Blueprint, response
from sanic.request import Request

from bot.engine_tracker_store import CURRENT_TURN, Turn

logger = logging.getLogger(__name__)

STEERABLE_INTENTS = frozenset({"report_issue", "ask_faq"})


def steered_parse_data(text: str | None, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parse data the app's letter gate asks for, or None to let the NLU read the message."""
    letter = (metadata or {}).get("letter")
    if not isinstance(letter, dict) or letter.get("intent") not in STEERABLE_INTENTS or not text:
        return None
    try:
        confidence = min(max(float(letter.get("confidence", 1.0)), 0.0), 1.0)
    except (TypeError, ValueError):
        return None
    intent = {"name": letter["intent"], "confidence": confidence}
    return {"text": text, "intent": intent, "intent_ranking": [intent], "entities": []}


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
        """Rasa's REST routes (``GET /``, ``POST /webhook``), behind the token, with two differences.

        The letter gate's steering becomes the message's parse data; and a turn that failed (the
        tracker store could not be read or written, `bot.engine_tracker_store`, or the lock store
        or anything else raised) is answered 503, not with what was said so far, so the app keeps
        the message as waiting and replays it later.
        """
        blueprint = Blueprint(f"custom_webhook_{type(self).__name__}", __name__)
        expected = f"Bearer {self.token}".encode()

        @blueprint.middleware("request")
        async def require_token(request: Request) -> response.HTTPResponse | None:
            supplied = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(supplied, expected):
                return response.json({"error": "unauthorized"}, status=401)
            return None

        @blueprint.route("/", methods=["GET"])
        async def health(request: Request) -> response.HTTPResponse:
            return response.json({"status": "ok"})

        @blueprint.route("/webhook", methods=["POST"])
        async def receive(request: Request) -> response.HTTPResponse:
            collector = CollectingOutputChannel()
            message = UserMessage(
                self._extract_message(request),
                collector,
                await self._extract_sender(request),
                input_channel=self._extract_input_channel(request),
                metadata=self.get_metadata(request),
            )
            parse_data = steered_parse_data(message.text, message.metadata)
            if parse_data is not None:
                message.parse_data = parse_data
            turn = Turn()
            token = CURRENT_TURN.set(turn)
            try:
                await on_new_message(message)
            except Exception:
                # Rasa's REST channel answers 200 with whatever was said so far (often nothing), and
                # the app would take the message as answered. Failed, the app replays it later.
                logger.exception("the engine failed on a message of %s", message.sender_id)
                turn.failed = True
            finally:
                CURRENT_TURN.reset(token)
            if turn.failed:
                return response.json({"error": "the turn failed; send the message again later"}, status=503)
            return response.json(collector.messages)

        return blueprint
