"""Filing a citizen's report as a case."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import CrmError
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import CaseEvent, ChannelIdentity, Citizen, ServiceCase, utcnow
from crm_backend.validation import normalise_mobile

# Case numbers carry the date as citizens live it (Beijing time), not UTC.
CHINA_TZ = timezone(timedelta(hours=8))
MAX_DESCRIPTION_CHARS = 5000
MAX_DAILY_SEQUENCE = 9999


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
    actor: str = "bot",
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
            status=CaseStatus.RECEIVED.value,
            created_at=now,
            updated_at=now,
        )
        try:
            async with session.begin_nested():
                session.add(case)
                await session.flush()
        except IntegrityError:  # another intake took this number a moment ago
            if attempt == 4:
                raise
            continue
        session.add(CaseEvent(case_id=case.id, from_status=None, to_status=case.status, note="", actor=actor))
        return case
    raise AssertionError("unreachable")
