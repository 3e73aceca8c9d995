"""``GET /healthz``: is the app, its database and its engine up; does the shared store answer."""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.engine import EngineClient, EngineUnavailable
from crm_backend.http import json_response
from crm_backend.shared import ProcessState

logger = logging.getLogger(__name__)


class HealthCheck:
    """``GET /healthz``: 200 when the app, the database and the engine all answer; 503 naming what is down.

    With several engines, "engine" is ok while one answers, and ``engines_down`` names the others.
    The store processes share (Redis) is reported but does not make the app "down": without it
    the app serves on, each process on its own locks (see `crm_backend.shared`), so a balancer
    must not take every app out of service for it; ``degraded`` names it.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], engine: EngineClient, shared: ProcessState) -> None:
        self._sessions = sessions
        self._engine = engine
        self._shared = shared

    async def __call__(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {"app": "ok"}
        try:
            async with self._sessions() as session:
                await session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as error:  # any failure means "down", whatever the driver raised
            logger.warning("health: database down: %s", error)
            checks["database"] = "down"
        engine: dict[str, object] = {}
        try:
            engine = await self._engine.status()
            checks["engine"] = "ok"  # with several engines: at least one answers
        except EngineUnavailable as error:
            logger.debug("health: engine down: %s", error)  # polled often while it starts
            checks["engine"] = "down"
        down = [name for name, state in checks.items() if state != "ok"]
        checks["shared_state"] = "ok" if await self._shared.reachable() else "down"
        body: dict[str, object] = {"status": "ok" if not down else "down", "checks": checks, "down": down}
        if checks["shared_state"] != "ok":
            body["degraded"] = ["shared_state"]
        if "engines_down" in engine:  # an EnginePool names the engines that do not answer
            body["engines_down"] = engine["engines_down"]
        return json_response(body, status=503 if down else 200)
