"""The action endpoint the engine calls: rasa_sdk's executor mounted in the app's server.

Same JSON contract as rasa_sdk's own server (``POST /webhook``), behind a bearer token so
only the engine can run actions.
"""

from __future__ import annotations

import logging

from aiohttp import web
from rasa_sdk.executor import ActionExecutor
from rasa_sdk.interfaces import ActionExecutionRejection, ActionNotFoundException

from crm_backend.http import json_error, json_response, read_json_object, require_bearer

logger = logging.getLogger(__name__)


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
            result = await self._executor.run(action_call)
        except ActionExecutionRejection as error:
            return json_response({"error": error.message, "action_name": error.action_name}, status=400)
        except ActionNotFoundException as error:
            logger.error("engine asked for unknown action %s", error.action_name)
            return json_response({"error": error.message, "action_name": error.action_name}, status=404)
        if result is None:
            return json_error(400, "no_action", "action call names no action")
        return json_response(result.model_dump())
