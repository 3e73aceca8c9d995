"""The app: one aiohttp server for the web chat, the REST channel, the action endpoint,
the CRM API and the health check.

`init_app(settings)` migrates the database, builds every component with its
collaborators and registers the routes; `on_cleanup` closes what it opened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import aiohttp
from aiohttp import web
from rasa_sdk.executor import ActionExecutor
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions import build_actions
from bot.action_endpoint import ActionEndpoint
from bot.channels.rest import RestChannel
from bot.channels.telegram import TelegramChannel
from bot.channels.webchat import WebChat
from bot.engine import EngineClient, EngineUnavailable
from bot.followup import CaseFollowup
from bot.handoff_banner import HandoffBanner
from bot.hub import ConversationHub
from bot.letters import LetterGate, LetterKindModel
from bot.notifier import ChannelNotifier
from bot.pipeline import MessagePipeline
from bot.proof_alarm import ProofAlarm
from bot.replay import EngineReplay
from bot.responses import Responses
from crm_backend.api import CrmApi
from crm_backend.console import add_console
from crm_backend.console.feed import LiveFeed
from crm_backend.db import create_engine, create_sessionmaker, upgrade_database_async
from crm_backend.dispatch.routing import DATA_DIR as ROUTING_DATA_DIR
from crm_backend.dispatch.routing import seed_routing
from crm_backend.dispatch.service import Dispatcher
from crm_backend.duty import DutyHours
from crm_backend.hotissues.service import HotIssueJob
from crm_backend.http import error_middleware, json_response, trusted_proxies_key
from crm_backend.knowledge.entries import DATA_FILE as KNOWLEDGE_DATA_FILE
from crm_backend.knowledge.facts import load_city_facts
from crm_backend.services.knowledge import KnowledgeBase, seed_knowledge_once
from crm_backend.services.limits import DatabaseRateLimiter, Limit
from crm_backend.settings import Settings
from crm_backend.shared import shared_state_from_settings

logger = logging.getLogger(__name__)


class HealthCheck:
    """``GET /healthz``: 200 when the app, the database and the engine all answer; 503 naming what is down."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], engine: EngineClient) -> None:
        self._sessions = sessions
        self._engine = engine

    async def __call__(self, request: web.Request) -> web.Response:
        checks: dict[str, str] = {"app": "ok"}
        try:
            async with self._sessions() as session:
                await session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as error:  # any failure means "down", whatever the driver raised
            logger.warning("health: database down: %s", error)
            checks["database"] = "down"
        try:
            await self._engine.status()
            checks["engine"] = "ok"
        except EngineUnavailable as error:
            logger.debug("health: engine down: %s", error)  # polled often while it starts
            checks["engine"] = "down"
        down = [name for name, state in checks.items() if state != "ok"]
        body = {"status": "ok" if not down else "down", "checks": checks, "down": down}
        return json_response(body, status=503 if down else 200)


async def init_app(settings: Settings) -> web.Application:
    """Build the app from its settings (migrations are applied first).

    Raises:
        SettingsError: a file the app reads at start (the city's facts) is malformed.
    """
    started = time.perf_counter()
    responses = Responses.load(settings.domain_path)
    city_facts = load_city_facts(settings.city_facts_path)
    await upgrade_database_async(settings.database_url)
    db_engine = create_engine(settings.database_url)
    sessions = create_sessionmaker(db_engine)
    async with sessions.begin() as session:
        if await seed_routing(session):
            logger.info("loaded departments and routing rules from %s", ROUTING_DATA_DIR)
    if await seed_knowledge_once(sessions):
        logger.info("loaded the knowledge base from %s", KNOWLEDGE_DATA_FILE)
    desk = await asyncio.to_thread(
        Dispatcher.load, settings.category_model_path, case_type_model_path=settings.case_type_model_path
    )
    letters = LetterGate(await asyncio.to_thread(LetterKindModel.train))
    knowledge = KnowledgeBase(sessions, city_facts)
    await knowledge.warm_up()
    limits = settings.limits
    limiter = DatabaseRateLimiter(sessions)
    message_limit = Limit("message", limits.messages_per_sender, timedelta(seconds=limits.messages_window_seconds))
    session_limit = Limit(
        "web_session", limits.web_sessions_per_address, timedelta(seconds=limits.web_sessions_window_seconds)
    )
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    shared = shared_state_from_settings(settings)  # in this process, or through Redis (REDIS_URL)
    hub = ConversationHub(shared.fanout)
    feed = LiveFeed(shared.fanout)
    engine = EngineClient(http, settings.rasa_url, settings.engine_token, settings.engine_timeout_seconds)
    pipeline = MessagePipeline(
        sessions,
        engine,
        responses,
        max_message_chars=settings.max_message_chars,
        max_logged_chars=settings.max_logged_chars,
        feed=feed,
        limiter=limiter,
        message_limit=message_limit,
        letters=letters,
        locks=shared.locks,
    )
    app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
    app[trusted_proxies_key] = settings.trusted_proxies
    app.router.add_get("/healthz", HealthCheck(sessions, engine))
    # Read as the actions read it (a bad value stops the app at start).
    banner = HandoffBanner(responses, DutyHours.from_env())
    WebChat(
        pipeline,
        sessions,
        hub,
        responses,
        settings.allowed_origins,
        settings.max_logged_chars,
        banner,
        limiter=limiter,
        session_limit=session_limit,
    ).add_routes(app)
    RestChannel(pipeline, settings.rest_channel_token).add_routes(app)
    telegram: TelegramChannel | None = None
    if settings.telegram is not None:
        telegram = TelegramChannel(
            settings.telegram, pipeline, sessions, responses, settings.max_logged_chars, locks=shared.locks
        )
        telegram.add_routes(app)
        logger.info("telegram channel enabled (%s mode)", settings.telegram.mode)
    notifier = ChannelNotifier(
        sessions, hub, responses, telegram.delivery if telegram is not None else None, banner=banner
    )
    followups = CaseFollowup(
        sessions,
        engine,
        notifier,
        responses,
        remind_after=timedelta(hours=settings.followup_remind_hours),
        archive_after=timedelta(hours=settings.followup_archive_hours),
        interval_seconds=settings.followup_check_seconds,
        leases=shared.leases,
    )
    proofs = ProofAlarm(followups, feed, failures_per_hour=settings.proof_failures_alert_per_hour)
    executor = ActionExecutor()
    for action in build_actions(
        sessions, desk, knowledge, proofs, responses.status, daily_case_limit=limits.cases_per_citizen_per_day
    ):
        executor.register_action(action)
    ActionEndpoint(executor, settings.action_token).add_routes(app)
    CrmApi(sessions, notifier, feed, followups).add_routes(app)
    replay = EngineReplay(
        sessions,
        engine,
        pipeline,
        notifier,
        interval_seconds=settings.engine_replay_seconds,
        settle_seconds=settings.engine_timeout_seconds + 1,
        leases=shared.leases,
    )
    hot_issues = HotIssueJob(
        sessions,
        window_days=settings.hot_issues_window_days,
        interval_seconds=settings.hot_issues_refresh_seconds,
        locate=desk.place_of,
        leases=shared.leases,
    )
    add_console(
        app,
        sessions,
        feed=feed,
        notifier=notifier,
        engine=engine,
        desk=desk,
        watcher=followups,
        city_facts=city_facts,
        secure_cookies=settings.console_secure_cookies,
    )

    async def start_followups(_app: web.Application) -> None:
        await shared.start()
        followups.start()
        replay.start()
        hot_issues.start()

    app.on_startup.append(start_followups)

    async def end_streams(_app: web.Application) -> None:
        feed.close()

    app.on_shutdown.append(end_streams)

    async def close(_app: web.Application) -> None:
        await followups.stop()
        await replay.stop()
        await hot_issues.stop()
        await hub.close_all()
        await shared.close()
        await http.close()
        await db_engine.dispose()

    app.on_cleanup.append(close)
    logger.info("app built in %.2fs", time.perf_counter() - started)
    return app
