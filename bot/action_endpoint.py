"""The action endpoint the engine calls: rasa_sdk's executor mounted in the app's server.

Same JSON contract as rasa_sdk's own server (``POST /webhook``), behind a bearer token so
only the engine can run actions.

An action that fails because the database is away (PostgreSQL restarting) is run again for up
to `DATABASE_WAIT_SECONDS`: its transaction rolled back, and filing is idempotent per message
(`crm_backend.services.intake.filing_key`). Answering the engine with a 500 instead would not
fail the turn: Rasa logs the error, drops the action's events and goes on, so the citizen
would be left with a half-done turn and often no reply at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from rasa_sdk.executor import ActionExecutor
from rasa_sdk.interfaces import ActionExecutionRejection, ActionNotFoundException

from crm_backend.db import database_unreachable
from crm_backend.http import json_error, json_response, read_json_object, require_bearer

logger = logging.getLogger(__name__)

DATABASE_WAIT_SECONDS = 8.0
DATABASE_RETRY_PAUSE_SECONDS = 0.5


class ActionEndpoint:
    """Runs custom actions for the engine."""

    def __init__(self, executor: ActionExecutor, token: str) -> None:
        self._executor = executor
        self._token = token

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/webhook", self.run)

    async def run(self, request: web.Request) -> web.Response:
        require_bearer(request, self._token)
        action_call = await read_json_object(request)
        try:
            result = await self._run(action_call)
        except ActionExecutionRejection as error:
            return json_response({"error": error.message, "action_name": error.action_name}, status=400)
        except ActionNotFoundException as error:
            logger.error("engine asked for unknown action %s", error.action_name)
            return json_response({"error": error.message, "action_name": error.action_name}, status=404)
        if result is None:
            return json_error(400, "no_action", "action call names no action")
        return json_response(result.model_dump())

    async def _run(self, action_call: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DATABASE_WAIT_SECONDS
        while True:
            try:
                return await self._executor.run(action_call)
            except Exception as error:
                if not database_unreachable(error) or loop.time() >= deadline:
                    raise
                logger.warning(
                    "action %s: the database is away (%s); running it again",
                    action_call.get("next_action"),
                    type(error).__name__,
                )
                await asyncio.sleep(DATABASE_RETRY_PAUSE_SECONDS)
