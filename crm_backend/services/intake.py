"""Filing a citizen's report as a case.

Case numbers are ``YYYYMMDD-NNNN`` (Beijing date, the day's sequence): four digits for the
first 9,999 cases of a day, then as many as it takes (``20261204-10000``), so they never run out.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import CaseLimitReached
from crm_backend.models import ChannelIdentity, Citizen, ServiceCase, utcnow
from crm_backend.services.limits import serialise
from crm_backend.services.moves import Actor, open_case
from crm_backend.services.staff_labels import LabelDecision, record_staff_label
from crm_backend.validation import normalise_mobile

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from crm_backend.dispatch.service import Dispatcher, Preview

# Case numbers carry the date as citizens live it (Beijing time), not UTC.
CHINA_TZ = timezone(timedelta(hours=8))
MAX_DESCRIPTION_CHARS = 5000
BOT = Actor.system("bot")


@dataclass(frozen=True)
class Report:
    """What the intake dialogue collected."""

    description: str
    location: str
    contact_phone: str
    district: str | None = None


async def next_case_number(session: AsyncSession, now: datetime) -> str:
    """The next free number of the day: ``YYYYMMDD-NNNN`` in Beijing time, five digits and more past 9,999."""
    day = now.astimezone(CHINA_TZ).strftime("%Y%m%d")
    latest = await session.scalar(
        select(func.max(cast(func.substr(ServiceCase.case_number, 10), Integer))).where(
            ServiceCase.case_number.like(f"{day}-%")
        )
    )
    return f"{day}-{(latest or 0) + 1:04d}"


async def check_daily_case_limit(
    session: AsyncSession, citizen_id: int, limit: int, now: datetime | None = None
) -> None:
    """Refuse a new case if the citizen already filed `limit` cases this Beijing calendar day.

    Counts the citizen's cases on every channel. A `limit` of 0 means no limit.

    Raises:
        CaseLimitReached: the citizen has reached the limit.
    """
    if limit <= 0:
        return
    local = (now or utcnow()).astimezone(CHINA_TZ)
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    filed = await session.scalar(
        select(func.count(ServiceCase.id)).where(
            ServiceCase.citizen_id == citizen_id, ServiceCase.created_at >= day_start
        )
    )
    if (filed or 0) >= limit:
        raise CaseLimitReached(f"citizen {citizen_id} filed {filed} cases today (limit {limit})")


async def file_case(
    session: AsyncSession,
    identity: ChannelIdentity,
    report: Report,
    *,
    conversation_id: int | None = None,
    actor: Actor = BOT,
    daily_limit: int = 0,
    filing_key: str | None = None,
    phone_required: bool = True,
) -> ServiceCase:
    """Create a case from a report, with its first history event, in the caller's transaction.

    The phone is validated again here: the dialogue validates it for the citizen's
    sake, the CRM for its own.

    Args:
        phone_required: False where a report may come without a phone (Open311); a phone
            given is validated all the same, none is stored as "".
        daily_limit: cases the citizen may file per Beijing day (the assistant passes
            it; staff filing for a citizen do not); 0 for no limit. Counted and filed
            under a per-citizen lock (`serialise`), so concurrent filings cannot pass it.

    Raises:
        InvalidInput: if the phone is not a mainland mobile number.
        CaseLimitReached: the citizen already filed `daily_limit` cases today.
    """
    phone = normalise_mobile(report.contact_phone) if report.contact_phone or phone_required else ""
    if daily_limit > 0:
        await serialise(session, f"cases:{identity.citizen_id}")
        await check_daily_case_limit(session, identity.citizen_id, daily_limit)
    citizen = await session.get(Citizen, identity.citizen_id)
    if citizen is not None and not citizen.phone:
        citizen.phone = phone
    # One filing at a time takes the next number, until its transaction ends: concurrent filings
    # (several app processes on PostgreSQL) would all read the same latest number, and each retry
    # would race the others again.
    await serialise(session, "case-numbers")
    for attempt in range(5):
        now = utcnow()
        case = ServiceCase(
            case_number=await next_case_number(session, now),
            citizen_id=identity.citizen_id,
            identity_id=identity.id,
            conversation_id=conversation_id,
            description=report.description.strip()[:MAX_DESCRIPTION_CHARS],
            location=report.location.strip()[:200],
            district=report.district,
            contact_phone=phone,
            created_at=now,
            filing_key=filing_key,
        )
        try:
            async with session.begin_nested():
                open_case(session, actor, case)
                await session.flush()
        except IntegrityError:  # another intake took this number a moment ago
            if attempt == 4:
                raise
            continue
        return case
    raise AssertionError("unreachable")


async def file_report(
    session: AsyncSession,
    desk: Dispatcher,
    identity: ChannelIdentity,
    report: Report,
    preview: Preview,
    *,
    conversation_id: int | None = None,
    actor: Actor = BOT,
    daily_limit: int = 0,
    filing_key: str | None = None,
    phone_required: bool = True,
) -> ServiceCase:
    """File a report and route it as previewed: the bot's intake and the console's draft alike.

    A `filing_key` already filed returns that case and files nothing: the engine's call made
    again (see `filing_key`).

    Raises:
        InvalidInput: if the phone is not a mainland mobile number.
        CaseLimitReached: the citizen already filed `daily_limit` cases today (see `file_case`).
    """
    if filing_key is not None:
        # A filing of this key in flight elsewhere has committed or rolled back once this is held.
        await serialise(session, f"filing:{filing_key}")
        filed = await session.scalar(select(ServiceCase).where(ServiceCase.filing_key == filing_key))
        if filed is not None:
            logger.info("case %s was already filed by this call; not filed again", filed.case_number)
            return filed
    case = await file_case(
        session,
        identity,
        report,
        conversation_id=conversation_id,
        actor=actor,
        daily_limit=daily_limit,
        filing_key=filing_key,
        phone_required=phone_required,
    )
    decision = await desk.route(session, case, preview)
    if preview.plan.category_chosen:  # the citizen's category button, or staff drafting the case
        await record_staff_label(session, actor, case, preview.plan.category, LabelDecision.FILING, decided=decision)
    return case


# The engine message metadata key that carries the app's id of the logged citizen message.
APP_MESSAGE_ID = "app_message_id"


def filing_key(sender_id: str, latest_message: dict[str, Any]) -> str | None:
    """What names one filing: its sender and the citizen message being answered.

    The app's id of that message (in the message metadata, `APP_MESSAGE_ID`) is the same when the
    app replays the message to another engine after the first died mid-turn; the engine's own
    message id is the same when nginx resends an action call to another app, and serves when the
    app's is missing. None without either.
    """
    metadata = latest_message.get("metadata") or {}
    app_id = metadata.get(APP_MESSAGE_ID) if isinstance(metadata, dict) else None
    message_id = f"app:{app_id}" if app_id is not None else latest_message.get("message_id")
    if not message_id:
        return None
    return hashlib.sha256(f"{sender_id}\x00{message_id}".encode()).hexdigest()
