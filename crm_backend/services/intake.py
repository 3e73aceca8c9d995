"""Filing a citizen's report as a case."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import CrmError
from crm_backend.models import ChannelIdentity, Citizen, ServiceCase, utcnow
from crm_backend.services.moves import Actor, open_case
from crm_backend.validation import normalise_mobile

if TYPE_CHECKING:
    from crm_backend.dispatch.service import Dispatcher, Preview

# Case numbers carry the date as citizens live it (Beijing time), not UTC.
CHINA_TZ = timezone(timedelta(hours=8))
MAX_DESCRIPTION_CHARS = 5000
MAX_DAILY_SEQUENCE = 9999
BOT = Actor.system("bot")


@dataclass(frozen=True)
class Report:
    """What the intake dialogue collected."""

    description: str
    location: str
    contact_phone: str
    district: str | None = None


async def next_case_number(session: AsyncSession, now: datetime) -> str:
    """The next free number of the day: ``YYYYMMDD-NNNN``, in Beijing time."""
    day = now.astimezone(CHINA_TZ).strftime("%Y%m%d")
    latest = await session.scalar(
        select(func.max(cast(func.substr(ServiceCase.case_number, 10), Integer))).where(
            ServiceCase.case_number.like(f"{day}-%")
        )
    )
    sequence = (latest or 0) + 1
    if sequence > MAX_DAILY_SEQUENCE:
        raise CrmError(f"no case numbers left for {day}")
    return f"{day}-{sequence:04d}"


async def file_case(
    session: AsyncSession,
    identity: ChannelIdentity,
    report: Report,
    *,
    conversation_id: int | None = None,
    actor: Actor = BOT,
) -> ServiceCase:
    """Create a case from a report, with its first history event, in the caller's transaction.

    The phone is validated again here: the dialogue validates it for the citizen's
    sake, the CRM for its own.

    Raises:
        InvalidInput: if the phone is not a mainland mobile number.
    """
    phone = normalise_mobile(report.contact_phone)
    citizen = await session.get(Citizen, identity.citizen_id)
    if citizen is not None and not citizen.phone:
        citizen.phone = phone
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
) -> ServiceCase:
    """File a report and route it as previewed: the bot's intake and the console's draft alike."""
    case = await file_case(session, identity, report, conversation_id=conversation_id, actor=actor)
    await desk.route(session, case, preview)
    return case
