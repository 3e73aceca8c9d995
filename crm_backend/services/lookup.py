"""Answering "where is my case?" without telling strangers which cases exist."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import LookupThrottled
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import (
    CaseEvent,
    ChannelIdentity,
    LookupAttempt,
    ServiceCase,
    utcnow,
)

THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_SENDER = 5
MAX_FAILURES_PER_CASE = 10


@dataclass(frozen=True)
class CaseProgress:
    """What a citizen may learn about their own case."""

    case_number: str
    status: CaseStatus
    department: str | None
    latest_note: str
    updated_at: datetime


async def case_filed_by(session: AsyncSession, case_number: str, identity: ChannelIdentity | None) -> bool:
    """Whether this identity (or another channel of the same citizen) filed the case."""
    if identity is None:
        return False
    citizen_id = await session.scalar(select(ServiceCase.citizen_id).where(ServiceCase.case_number == case_number))
    return citizen_id is not None and citizen_id == identity.citizen_id


async def _recent_failures(session: AsyncSession, since: datetime, **match: str) -> int:
    conditions = [getattr(LookupAttempt, column) == value for column, value in match.items()]
    count = await session.scalar(
        select(func.count(LookupAttempt.id)).where(
            LookupAttempt.succeeded.is_(False), LookupAttempt.created_at >= since, *conditions
        )
    )
    return count or 0


async def lookup_progress(
    session: AsyncSession,
    *,
    sender_key: str,
    case_number: str,
    phone_last4: str | None,
    identity: ChannelIdentity | None,
    now: datetime | None = None,
) -> CaseProgress | None:
    """Progress of a case for a caller who filed it or knows its phone's last four digits.

    An unknown number and wrong digits both give ``None``, so the answer never tells
    whether a case exists. Every attempt is recorded in the caller's transaction.

    Raises:
        LookupThrottled: after too many recent failures from this sender, or against
            this case number from anyone (new web sessions are free to make).
    """
    now = now or utcnow()
    since = now - THROTTLE_WINDOW
    owner = await case_filed_by(session, case_number, identity)
    if not owner:
        if await _recent_failures(session, since, sender_key=sender_key) >= MAX_FAILURES_PER_SENDER:
            raise LookupThrottled("too many failed lookups from this sender")
        if await _recent_failures(session, since, case_number=case_number) >= MAX_FAILURES_PER_CASE:
            raise LookupThrottled("too many failed lookups of this case number")

    case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == case_number))
    allowed = case is not None and (owner or (phone_last4 is not None and case.contact_phone[-4:] == phone_last4))
    session.add(LookupAttempt(sender_key=sender_key, case_number=case_number, succeeded=allowed, created_at=now))
    if not allowed or case is None:
        return None

    latest = await session.scalar(
        select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.id.desc()).limit(1)
    )
    return CaseProgress(
        case_number=case.case_number,
        status=CaseStatus(case.status),
        department=case.department,
        latest_note=latest.note if latest is not None else "",
        updated_at=latest.created_at if latest is not None else case.updated_at,
    )
