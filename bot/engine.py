"""Client of the Rasa engine: the app's only way to the dialogue."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp

logger = logging.getLogger(__name__)


API_TOKEN_SECONDS = 60
# Turns this process lets one engine work on at once; the rest wait here, first come first served.
# The engine runs its turns on one thread: given twenty at once it interleaves them, and a turn
# that awaits an action call waits behind all the others each time (docs/benchmarks.md, "Turns
# in flight": p95 at 20 conversations 3.8 s with no limit, 1.5 s with 2, on a loaded machine).
DEFAULT_MAX_IN_FLIGHT = 2


class EngineUnavailable(Exception):
    """The engine did not answer in time, refused, or answered nonsense."""


class EngineUnreachable(EngineUnavailable):
    """No engine listens there, or it dropped the connection: the message was not handled there.

    Unlike a timeout (the engine may still be working on the message), another engine may be
    asked instead (see `bot.engine_pool.EnginePool`).
    """


# Failures that mean the engine is gone rather than slow (connection refused, reset or dropped).
UNREACHABLE_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


def unavailable(error: Exception) -> EngineUnavailable:
    """The domain error for a client-side failure talking to the engine."""
    kind = EngineUnreachable if isinstance(error, UNREACHABLE_ERRORS) else EngineUnavailable
    return kind(f"{type(error).__name__}: {error}")


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def engine_api_token(secret: str, now: float | None = None, lifetime_seconds: int = API_TOKEN_SECONDS) -> str:
    """A short-lived JWT (HS256) for the engine's HTTP API, signed with the engine secret.

    The engine (started by `bot.engine_launcher`) takes the secret as its ``--jwt-secret``;
    Rasa lets the ``admin`` role read and change any conversation's tracker. A JWT travels in
    the ``Authorization`` header, unlike Rasa's static token, which only a query string carries.
    Three lines of HMAC spare the app a dependency on PyJWT.
    """
    issued = int(time.time() if now is None else now)
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"user": {"username": "app", "role": "admin"}, "iat": issued, "exp": issued + lifetime_seconds}
    signing_input = ".".join(_base64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload))
    signature = hmac.new(secret.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_base64url(signature)}"


HttpSource = aiohttp.ClientSession | Callable[[], aiohttp.ClientSession]


class EngineClient:
    """Sends citizens' messages to the engine's token-protected channel on loopback."""

    def __init__(
        self,
        http: HttpSource,
        base_url: str,
        token: str,
        timeout_seconds: float,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        """Build the client; nothing is sent until a method is called.

        Args:
            http: the client session, or (in the app) a function returning the one the HTTP
                client context opens at start, so the client can be built before it exists.
            base_url: the engine's address, e.g. ``http://127.0.0.1:5005``.
            token: the engine secret (the channel's token and the API's JWT secret).
            timeout_seconds: how long one message may take before the engine counts as down,
                its wait for a turn included (a message that waited too long never reaches it).
            max_in_flight: messages (``send``, ``trigger_intent``) this process has the engine
                work on at once; 0 for no limit.
        """
        self._http_source = http
        self._base_url = base_url
        self._webhook = f"{base_url}/webhooks/app/webhook"
        self._status = f"{base_url}/status"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._token = token
        self._timeout_seconds = timeout_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._turns = asyncio.Semaphore(max_in_flight) if max_in_flight > 0 else None

    @property
    def _http(self) -> aiohttp.ClientSession:
        source = self._http_source
        return source if isinstance(source, aiohttp.ClientSession) else source()

    @property
    def base_url(self) -> str:
        """The engine's address (``http://host:port``)."""
        return self._base_url

    async def send(
        self, sender_id: str, text: str, *, channel: str, metadata: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """One citizen message in; the bot's replies out, in Rasa's REST format.

        Raises:
            EngineUnavailable: on timeout, connection error or a non-200 answer.
        """
        body = {"sender": sender_id, "message": text, "input_channel": channel, "metadata": metadata or {}}
        try:
            async with (
                self._turn(),
                self._http.post(self._webhook, json=body, headers=self._headers, timeout=self._timeout) as resp,
            ):
                if resp.status != 200:
                    raise EngineUnavailable(f"engine answered HTTP {resp.status}")
                replies = await resp.json()
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            raise unavailable(error) from error
        if not isinstance(replies, list):
            raise EngineUnavailable("engine reply is not a list")
        return [reply for reply in replies if isinstance(reply, dict)]

    async def status(self) -> dict[str, Any]:
        """The engine's /status (model loaded, fingerprint).

        Raises:
            EngineUnavailable: if it does not answer within two seconds or has no model.
        """
        data = await self._get(self._status, {})
        if not data.get("model_file"):
            raise EngineUnavailable("engine has no model loaded")
        return data

    async def slots(self, sender_id: str) -> dict[str, Any]:
        """The slots the dialogue holds for a conversation (what a form collected so far).

        Raises:
            EngineUnavailable: if the engine does not answer within two seconds.
        """
        url = f"{self._base_url}/conversations/{quote(sender_id, safe='')}/tracker"
        slots = (await self._get(url, {"include_events": "NONE"})).get("slots")
        return slots if isinstance(slots, dict) else {}

    async def active_form(self, sender_id: str) -> str | None:
        """The form the citizen is in the middle of, if any (so the app does not interrupt it).

        Raises:
            EngineUnavailable: if the engine does not answer within two seconds.
        """
        url = f"{self._base_url}/conversations/{quote(sender_id, safe='')}/tracker"
        loop = (await self._get(url, {"include_events": "NONE"})).get("active_loop")
        name = loop.get("name") if isinstance(loop, dict) else None
        return name if isinstance(name, str) and name else None

    async def trigger_intent(self, sender_id: str, intent: str, entities: dict[str, str]) -> list[dict[str, Any]]:
        """Make the dialogue act as if the citizen had expressed `intent` (an external event);
        returns what the bot says, in the REST format, for the app to deliver.

        Raises:
            EngineUnavailable: on timeout, connection error or a non-200 answer.
        """
        url = f"{self._base_url}/conversations/{quote(sender_id, safe='')}/trigger_intent"
        try:
            async with (
                self._turn(),
                self._http.post(
                    url, headers=self._api_headers(), json={"name": intent, "entities": entities}, timeout=self._timeout
                ) as resp,
            ):
                if resp.status != 200:
                    raise EngineUnavailable(f"engine answered HTTP {resp.status} on trigger_intent")
                data = await resp.json()
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            raise unavailable(error) from error
        messages = data.get("messages") if isinstance(data, dict) else None
        return [message for message in messages or [] if isinstance(message, dict)]

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Hold one of the engine's turns for the block, within the message's time budget.

        Raises:
            TimeoutError: the budget ran out (waiting for a turn, or in the block).
        """
        async with asyncio.timeout(self._timeout_seconds):
            if self._turns is None:
                yield
                return
            async with self._turns:
                yield

    def _api_headers(self) -> dict[str, str]:
        """Credentials for the engine's HTTP API: a fresh short-lived JWT, never a query string."""
        return {"Authorization": f"Bearer {engine_api_token(self._token)}"}

    async def _get(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        """A GET on the engine's token-protected HTTP API, expecting a JSON object within two seconds."""
        try:
            async with self._http.get(
                url, params=params, headers=self._api_headers(), timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                if resp.status != 200:
                    raise EngineUnavailable(f"engine answered HTTP {resp.status} on {url}")
                data = await resp.json()
        except (TimeoutError, aiohttp.ClientError, ValueError) as error:
            raise unavailable(error) from error
        if not isinstance(data, dict):
            raise EngineUnavailable("engine answer is not a JSON object")
        return data
