"""The retention periods, enforced once a day: personal data is kept no longer than it is needed.

`apply_retention` (also ``python -m crm_backend retention``) removes what has outlived its period
(`crm_backend.settings.RetentionSettings`), in batches of short transactions, safe while the app
runs and safe to run again:

* cases archived longer than the case period lose their personal data (description, place,
  contact phone, notes, rating comments, the text kept with a staff label for retraining), as an
  erasure does (`privacy.pseudonymise_cases`);
  category, district, department, dates and status stay, so the dashboard's figures survive.
  A citizen with no case left unpseudonymised and no conversation within the period loses
  their phone number too;
* conversation logs (messages, the citizens' questions kept by the knowledge base) older than
  the conversation period are deleted, and so are the engine's tracker-store events of that age;
* progress-lookup attempts, staff sign-in failures, expired link codes and handled Telegram
  updates and notices past their periods are deleted.

`RetentionJob` runs it daily in the one app process holding the ``retention`` lease.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from crm_backend import periodic
from crm_backend.db import affected
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import (
    Base,
    CaseEvent,
    ChannelIdentity,
    Citizen,
    Conversation,
    KnowledgeFeedback,
    KnowledgeMiss,
    LinkCode,
    LoginFailure,
    LookupAttempt,
    Message,
    ServiceCase,
    TelegramCallbackPayload,
    TelegramOutbox,
    TelegramUpdate,
    utcnow,
)
from crm_backend.services import audit
from crm_backend.services.privacy import delete_tracker_events, pseudonymise_cases
from crm_backend.settings import RetentionSettings
from crm_backend.shared import Leases

logger = logging.getLogger(__name__)

BATCH = 500
DAY_SECONDS = 86400.0


@dataclass
class RetentionReport:
    """How many of each were removed in one run."""

    cases_pseudonymised: int = 0
    citizens_phone_removed: int = 0
    messages_deleted: int = 0
    knowledge_questions_removed: int = 0
    tracker_events_deleted: int = 0
    lookups_deleted: int = 0
    login_failures_deleted: int = 0
    link_codes_deleted: int = 0
    telegram_rows_deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())


async def apply_retention(
    sessions: async_sessionmaker[AsyncSession],
    policy: RetentionSettings,
    *,
    tracker_store_url: str | None = None,
    now: datetime | None = None,
    batch: int = BATCH,
) -> RetentionReport:
    """Remove what has outlived its retention period; what was removed (audited when anything was)."""
    now = now or utcnow()
    report = RetentionReport()
    case_cutoff = now - timedelta(days=policy.case_days)
    conversation_cutoff = now - timedelta(days=policy.conversation_days)

    archived_long_ago = (
        select(ServiceCase.id)
        .where(
            ServiceCase.status == CaseStatus.ARCHIVED,
            ServiceCase.pseudonymised_at.is_(None),
            exists().where(
                CaseEvent.case_id == ServiceCase.id,
                CaseEvent.to_status == CaseStatus.ARCHIVED,
                CaseEvent.created_at < case_cutoff,
            ),
        )
        .order_by(ServiceCase.id)
        .limit(batch)
    )
    while True:
        async with sessions.begin() as session:
            ids = list((await session.scalars(archived_long_ago)).all())
            if not ids:
                break
            report.cases_pseudonymised += await pseudonymise_cases(session, ids, now)

    async with sessions.begin() as session:
        report.citizens_phone_removed = await _forget_quiet_citizens(session, case_cutoff)

    old_messages = (
        select(Message.id)
        .where(Message.created_at < conversation_cutoff, Message.engine_pending_since.is_(None))
        .order_by(Message.id)
        .limit(batch)
    )
    while True:
        async with sessions.begin() as session:
            ids = list((await session.scalars(old_messages)).all())
            if not ids:
                break
            report.messages_deleted += affected(await session.execute(delete(Message).where(Message.id.in_(ids))))

    async with sessions.begin() as session:
        cleared = await session.execute(
            update(KnowledgeFeedback)
            .where(KnowledgeFeedback.created_at < conversation_cutoff, func.length(KnowledgeFeedback.question) > 0)
            .values(question="")
        )
        missed = await session.execute(delete(KnowledgeMiss).where(KnowledgeMiss.created_at < conversation_cutoff))
        report.knowledge_questions_removed = affected(cleared) + affected(missed)
        report.lookups_deleted = await _delete_before(
            session, LookupAttempt, LookupAttempt.created_at, now - timedelta(days=policy.lookup_days)
        )
        report.login_failures_deleted = await _delete_before(
            session, LoginFailure, LoginFailure.created_at, now - timedelta(days=policy.login_failure_days)
        )
        report.link_codes_deleted = await _delete_before(
            session, LinkCode, LinkCode.expires_at, now - timedelta(days=policy.link_code_days)
        )
        telegram_cutoff = now - timedelta(days=policy.telegram_days)
        report.telegram_rows_deleted = (
            await _delete_before(session, TelegramUpdate, TelegramUpdate.processed_at, telegram_cutoff)
            + await _delete_before(session, TelegramOutbox, TelegramOutbox.finished_at, telegram_cutoff)
            + await _delete_before(
                session, TelegramCallbackPayload, TelegramCallbackPayload.created_at, telegram_cutoff
            )
        )

    if tracker_store_url is not None:
        report.tracker_events_deleted = await _delete_tracker_events_before(tracker_store_url, conversation_cutoff)

    if report.total:
        async with sessions.begin() as session:
            audit.record(
                session,
                None,
                "retention.applied",
                detail=" ".join(f"{key}={value}" for key, value in report.as_dict().items() if value),
                actor_name="system",
            )
        logger.info("retention: %s", report.as_dict())
    return report


async def _delete_before(
    session: AsyncSession, model: type[Base], column: InstrumentedAttribute[Any], cutoff: datetime
) -> int:
    return affected(await session.execute(delete(model).where(column < cutoff)))


async def _forget_quiet_citizens(session: AsyncSession, cutoff: datetime) -> int:
    """Citizens whose cases are all pseudonymised and who have not written since `cutoff` lose their phone."""
    open_case = exists().where(ServiceCase.citizen_id == Citizen.id, ServiceCase.pseudonymised_at.is_(None))
    recent_talk = exists().where(
        ChannelIdentity.citizen_id == Citizen.id,
        Conversation.identity_id == ChannelIdentity.id,
        Conversation.last_message_at >= cutoff,
    )
    result = await session.execute(
        update(Citizen)
        .where(Citizen.phone.is_not(None), Citizen.created_at < cutoff, ~open_case, ~recent_talk)
        .values(phone=None)
        .execution_options(synchronize_session=False)
    )
    return affected(result)


async def _delete_tracker_events_before(tracker_store_url: str, cutoff: datetime) -> int:
    """Delete the engine's events older than `cutoff` (Rasa stores a UNIX timestamp per event).

    A conversation session expires after a day of silence (``session_config`` in domain.yml), so
    events this old belong to finished sessions the engine no longer reads.
    """
    statement = text("DELETE FROM events WHERE timestamp < :cutoff").bindparams(cutoff=cutoff.timestamp())
    return await delete_tracker_events(tracker_store_url, statement)


class RetentionJob:
    """Applies the retention periods once a day, in one app process at a time."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        policy: RetentionSettings,
        *,
        tracker_store_url: str | None,
        interval_seconds: float = DAY_SECONDS,
        leases: Leases | None = None,
    ) -> None:
        self._sessions = sessions
        self._policy = policy
        self._tracker_store_url = tracker_store_url
        self._interval = interval_seconds
        self._leases = leases
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> RetentionReport:
        return await apply_retention(self._sessions, self._policy, tracker_store_url=self._tracker_store_url)

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(
                periodic.every(self._interval, self.run_once, "retention", leases=self._leases, lease="retention"),
                name="retention",
            )

    async def stop(self) -> None:
        await periodic.cancel(self._task)
