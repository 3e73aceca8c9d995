"""The staff console at /console: server-rendered pages, no front-end build step."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.console.admin import AdminViews
from crm_backend.console.api_clients import ApiClientViews
from crm_backend.console.cases import CaseViews, ConsoleNotices
from crm_backend.console.citizens import CitizenViews
from crm_backend.console.conversations import ChannelNotifier, ConversationViews, SlotReader
from crm_backend.console.dashboard import DashboardViews
from crm_backend.console.feed import LiveFeed
from crm_backend.console.hot_issues import HotIssueViews
from crm_backend.console.knowledge import KnowledgeViews
from crm_backend.console.models import ModelVersionViews
from crm_backend.console.open_data import OpenDataViews
from crm_backend.console.privacy import PrivacyViews
from crm_backend.console.sign_in import SignInStepViews
from crm_backend.console.web import ConsoleBase, build_templates
from crm_backend.dispatch.service import Dispatcher
from crm_backend.knowledge.facts import CityFacts

STATIC_DIR = Path(__file__).resolve().parent / "static"


class DeskDistricts(Sequence[str]):
    """The desk's districts, read each time a page lists them.

    The app registers the console's routes before its models context loads the desk (the
    gazetteer comes with it), so the pages read the districts when they are drawn.
    """

    def __init__(self, desk: Dispatcher) -> None:
        self._desk = desk

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._desk.districts[index]

    def __len__(self) -> int:
        return len(self._desk.districts)


def add_console(
    app: web.Application,
    sessions: async_sessionmaker[AsyncSession],
    *,
    feed: LiveFeed,
    notifier: ChannelNotifier,
    engine: SlotReader,
    desk: Dispatcher,
    watcher: ConsoleNotices,
    city_facts: CityFacts,
    secure_cookies: bool,
    tracker_store_url: str | None = None,
) -> None:
    """Register every console route on the app."""
    base = ConsoleBase(sessions, build_templates(), secure_cookies=secure_cookies)
    districts = DeskDistricts(desk)
    ConversationViews(base, feed, notifier, engine, desk).add_routes(app)
    SignInStepViews(**base.share()).add_routes(app)
    CaseViews(base, notifier, districts, watcher).add_routes(app)
    CitizenViews(**base.share()).add_routes(app)
    AdminViews(base, districts).add_routes(app)
    ApiClientViews(base).add_routes(app)
    KnowledgeViews(base, city_facts).add_routes(app)
    DashboardViews(base, districts).add_routes(app)
    HotIssueViews(base).add_routes(app)
    OpenDataViews(base).add_routes(app)
    PrivacyViews(base, tracker_store_url).add_routes(app)
    ModelVersionViews(**base.share()).add_routes(app)
    app.router.add_static("/console/static/", STATIC_DIR, append_version=False)
