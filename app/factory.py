"""`init_app(settings)`: one aiohttp server for the web chat, the REST and Telegram channels, the
action endpoint, the CRM API, the console and the health check.

It builds every component with its collaborators and registers the routes, connecting to
nothing and loading no model: the resources are opened at start by the cleanup contexts of
`app.components`, one per resource, and closed by them in reverse order. The database must
already be migrated (``python -m crm_backend migrate``); the `database` context refuses one
that is not.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from aiohttp import web
from rasa_sdk.executor import ActionExecutor

from actions import build_actions
from app import components
from app.components import (
    StartupDesk,
    StartupLetterGate,
    desk_key,
    followups_key,
    hot_issues_key,
    http_key,
    knowledge_key,
    letters_key,
    model_follower_key,
    replay_key,
    retention_key,
    retrain_key,
    sessions_key,
    settings_key,
    shared_key,
)
from app.health import HealthCheck
from app.settings import Settings
from bot.action_endpoint import ActionEndpoint
from bot.channels.rest import RestChannel
from bot.channels.webchat import WebChat
from bot.engine_pool import engine_for
from bot.followup import CaseFollowup
from bot.handoff_banner import HandoffBanner
from bot.notifier import ChannelNotifier
from bot.pipeline import MessagePipeline
from bot.proof_alarm import ProofAlarm
from bot.replay import EngineReplay
from bot.responses import Responses
from crm_backend.api import CrmApi
from crm_backend.console import add_console
from crm_backend.crypto import install_key_ring
from crm_backend.db import create_sessionmaker
from crm_backend.duty import DutyHours
from crm_backend.hotissues.service import HotIssueJob
from crm_backend.http import error_middleware, trusted_proxies_key
from crm_backend.knowledge.facts import load_city_facts
from crm_backend.open311 import Open311Api
from crm_backend.services.knowledge import KnowledgeBase
from crm_backend.services.limits import DatabaseRateLimiter, Limit
from crm_backend.services.model_versions import ModelFollower, RetrainJob
from crm_backend.services.retention import RetentionJob

if TYPE_CHECKING:  # imported when a Telegram channel is built (see `init_app`)
    from bot.channels.telegram import TelegramChannel

logger = logging.getLogger(__name__)


def init_app(settings: Settings) -> web.Application:
    """Build the app from its settings; it opens its resources when it starts.

    Raises:
        SettingsError: a file the app reads when built (the city's facts, the duty hours) is malformed.
    """
    if settings.key_ring is not None:
        install_key_ring(settings.key_ring)  # what the encrypted columns use (crm_backend.crypto)
    responses = Responses.load(settings.domain_path)
    city_facts = load_city_facts(settings.city_facts_path)
    app = web.Application(middlewares=[error_middleware], client_max_size=1024 * 1024)
    app[settings_key] = settings
    app[trusted_proxies_key] = settings.trusted_proxies

    # Built now, opened by a cleanup context at start (see app.components).
    sessions = app[sessions_key] = create_sessionmaker()
    desk = app[desk_key] = StartupDesk()
    letters = app[letters_key] = StartupLetterGate()
    knowledge = app[knowledge_key] = KnowledgeBase(sessions, city_facts)
    shared = app[shared_key] = components.shared_state(settings)
    engine = engine_for(
        lambda: app[http_key],
        settings.rasa_urls,
        settings.engine_token,
        settings.engine_timeout_seconds,
        settings.engine_max_in_flight,
    )

    limits = settings.limits
    limiter = DatabaseRateLimiter(sessions)
    message_limit = Limit("message", limits.messages_per_sender, timedelta(seconds=limits.messages_window_seconds))
    session_limit = Limit(
        "web_session", limits.web_sessions_per_address, timedelta(seconds=limits.web_sessions_window_seconds)
    )
    pipeline = MessagePipeline(
        sessions,
        engine,
        responses,
        max_message_chars=settings.max_message_chars,
        max_logged_chars=settings.max_logged_chars,
        feed=shared.feed,
        limiter=limiter,
        message_limit=message_limit,
        letters=letters,
        locks=shared.across.locks,
    )
    # The bound method, so aiohttp sees a coroutine function (an object with an async __call__ is deprecated).
    app.router.add_get("/healthz", HealthCheck(sessions, engine, shared.across).__call__)
    # Read as the actions read it (a bad value stops the app at start).
    banner = HandoffBanner(responses, DutyHours.from_env())
    privacy_notice = responses.text("utter_privacy_notice").format(**settings.retention.stated())
    WebChat(
        pipeline,
        sessions,
        shared.hub,
        responses,
        settings.allowed_origins,
        settings.max_logged_chars,
        banner,
        limiter=limiter,
        session_limit=session_limit,
        privacy_notice=privacy_notice,
    ).add_routes(app)
    RestChannel(pipeline, settings.rest_channel_token).add_routes(app)
    telegram: TelegramChannel | None = None
    if settings.telegram is not None:
        # Imported here: python-telegram-bot (with httpx and cryptography) costs an app without
        # a Telegram channel about 20 MB.
        from bot.channels.telegram import TelegramChannel

        telegram = TelegramChannel(
            settings.telegram,
            pipeline,
            sessions,
            responses,
            settings.max_logged_chars,
            locks=shared.across.locks,
            leases=shared.across.leases,
            privacy_notice=privacy_notice,
        )
        telegram.add_routes(app)
        logger.info("telegram channel enabled (%s mode)", settings.telegram.mode)
    notifier = ChannelNotifier(
        sessions, shared.hub, responses, telegram.delivery if telegram is not None else None, banner=banner
    )
    followups = app[followups_key] = CaseFollowup(
        sessions,
        engine,
        notifier,
        responses,
        remind_after=timedelta(hours=settings.followup_remind_hours),
        archive_after=timedelta(hours=settings.followup_archive_hours),
        interval_seconds=settings.followup_check_seconds,
        leases=shared.across.leases,
    )
    proofs = ProofAlarm(followups, shared.feed, failures_per_hour=settings.proof_failures_alert_per_hour)
    executor = ActionExecutor()
    for action in build_actions(
        sessions,
        desk,
        knowledge,
        proofs,
        responses.status,
        daily_case_limit=limits.cases_per_citizen_per_day,
        retention=settings.retention,
    ):
        executor.register_action(action)
    ActionEndpoint(executor, settings.action_token).add_routes(app)
    CrmApi(sessions, notifier, shared.feed, followups).add_routes(app)
    Open311Api(
        sessions,
        desk,
        responses,
        limiter=limiter,
        read_limit=Limit(
            "open311_read",
            limits.open311_reads_per_address,
            timedelta(seconds=limits.open311_reads_window_seconds),
        ),
        contact=settings.open311_contact,
    ).add_routes(app)
    app[replay_key] = EngineReplay(
        sessions,
        engine,
        pipeline,
        notifier,
        interval_seconds=settings.engine_replay_seconds,
        settle_seconds=settings.engine_timeout_seconds + 1,
        leases=shared.across.leases,
    )
    app[hot_issues_key] = HotIssueJob(
        sessions,
        window_days=settings.hot_issues_window_days,
        interval_seconds=settings.hot_issues_refresh_seconds,
        locate=desk.place_of,
        leases=shared.across.leases,
    )
    app[retention_key] = RetentionJob(
        sessions,
        settings.retention,
        tracker_store_url=settings.tracker_store_url,
        interval_seconds=settings.retention_run_seconds,
        leases=shared.across.leases,
    )
    app[model_follower_key] = ModelFollower(sessions, desk, interval_seconds=settings.category_model_check_seconds)
    app[retrain_key] = RetrainJob(
        sessions, period_seconds=settings.category_retrain_seconds, leases=shared.across.leases
    )
    add_console(
        app,
        sessions,
        feed=shared.feed,
        notifier=notifier,
        engine=engine,
        desk=desk,
        watcher=followups,
        city_facts=city_facts,
        secure_cookies=settings.console_secure_cookies,
        tracker_store_url=settings.tracker_store_url,
    )

    app.cleanup_ctx.extend(
        [
            components.database,
            components.http_client,
            components.models,
            components.processes,
            components.live_connections,
            components.followup_loop,
            components.engine_replay_loop,
            components.hot_issue_job,
            components.retention_job,
            components.category_model_jobs,
            components.task_dump,
        ]
    )
    app.on_shutdown.append(components.end_live_streams)
    return app
