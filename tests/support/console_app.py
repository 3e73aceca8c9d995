"""The console's and the API's routes in process, for unit tests that sign in over HTTP."""

from __future__ import annotations

from typing import Any, cast

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.api import CrmApi
from crm_backend.console import add_console
from crm_backend.http import error_middleware


def console_app(sessions: async_sessionmaker[AsyncSession], *, watcher: Any = None) -> web.Application:
    """Every console route and the /api/v1 routes, as the app mounts them; their collaborators
    absent (no test using this reaches them) but `watcher`, what 派单 tells of a case's move."""
    app = web.Application(middlewares=[error_middleware])
    none = cast(Any, None)
    add_console(
        app,
        sessions,
        feed=none,
        notifier=none,
        engine=none,
        desk=none,
        watcher=watcher,
        city_facts=none,
        secure_cookies=False,
    )
    CrmApi(sessions, none).add_routes(app)
    return app
