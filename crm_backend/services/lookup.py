"""Answering "where is my case?" without telling strangers which cases exist, and the guard
on digit proofs (a case number and its phone's last four digits).

A stranger proves they may see a case, or link their channel to its citizen, with the phone's
last four digits: 10^4 guesses, and a web chat session is one hello frame away. So besides the
throttle per sender, failures are counted per case number, from every sender and both paths
(progress lookup and linking by case). The failure that makes `MAX_PROOF_FAILURES_PER_CASE`
within `CASE_PROOF_WINDOW` closes the number to digit proofs for `CASE_LOCK_DURATION`, and the
case's citizen is told (by the caller, with the case this module hands back). Channels of the
citizen who filed the case never need digits and are never locked out. Counting is by the
number as typed, so a locked number answers the same whether a case has it or not.

Every failed proof also counts towards a city-wide hourly ceiling: the first failure of an hour
beyond it leaves one audit row (`PROOF_CEILING_ACTION`) that the console shows supervisors.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import CaseProofLocked, LookupThrottled
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import (
    AuditEntry,
    CaseEvent,
    CaseProofLock,
    ChannelIdentity,
    LookupAttempt,
    ServiceCase,
    phone_last4_index,
    utcnow,
)
from crm_backend.services import audit

THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_SENDER = 5  # within THROTTLE_WINDOW, whatever the number or the path
CASE_PROOF_WINDOW = timedelta(hours=24)
MAX_PROOF_FAILURES_PER_CASE = 5  # within CASE_PROOF_WINDOW, from anyone: the number is locked
CASE_LOCK_DURATION = timedelta(hours=24)
PROOF_CEILING_WINDOW = timedelta(hours=1)
PROOF_CEILING_ACTION = "security.proof_ceiling"
# Status changes are told in the citizen's words (`utter_status_*`), never with their notes (a
# 退回 reason is internal), except 办结's: the result, owed to the citizen. Replies are staff's
# words to the citizen. Never notes, 延期 reasons or 督办 remarks.
CITIZEN_VISIBLE_EVENTS = ("status", "reply")
_RESULT_STATUSES = frozenset({CaseStatus.RESOLVED, CaseStatus.REVIEWED, CaseStatus.ARCHIVED})


@dataclass(frozen=True)
class CaseProgress:
    """What a citizen may learn about their own case.

    Attributes:
        latest_reply: staff's latest reply to the citizen on this case, if any.
        result: the department's 办理结果 once the case is 办结 (None before, or after a 重办).
        updated_at: when the result was given, else the time of the latest status or reply.
    """

    case_number: str
    status: CaseStatus
    department: str | None
    latest_reply: str | None
    result: str | None
    updated_at: datetime


@dataclass(frozen=True)
class ProofFailure:
    """A failed proof just recorded in the caller's transaction, and what it set off."""

    case_number: str
    locked_case: ServiceCase | None = None  # the case this failure locked: its citizen is to be told


@dataclass(frozen=True)
class LookupOutcome:
    """A progress query's answer: the progress, or the failure that was recorded."""

    progress: CaseProgress | None
    failure: ProofFailure | None = None


def digits_prove(case: ServiceCase, phone_last4: str | None) -> bool:
    """Whether four digits are the last four of the case's phone; never for a case without one
    (history imported from a message board has none), never for anything but four digits.

    Compared on the blind index (`ServiceCase.contact_phone_last4_index`), in constant time:
    the phone itself is encrypted and need not be decrypted for a proof.
    """
    if phone_last4 is None or re.fullmatch(r"\d{4}", phone_last4) is None or not case.contact_phone_last4_index:
        return False
    expected = phone_last4_index(phone_last4)
    return expected is not None and hmac.compare_digest(case.contact_phone_last4_index, expected)


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


async def check_sender(session: AsyncSession, sender_key: str, now: datetime) -> None:
    """Refuse a sender with too many recent failed proofs of any kind.

    Raises:
        LookupThrottled: `MAX_FAILURES_PER_SENDER` failures within `THROTTLE_WINDOW`.
    """
    if await _recent_failures(session, now - THROTTLE_WINDOW, sender_key=sender_key) >= MAX_FAILURES_PER_SENDER:
        raise LookupThrottled("too many failed attempts from this sender")


async def check_digit_proof(session: AsyncSession, case_number: str, now: datetime) -> None:
    """Refuse a digit proof against a locked case number (existing or not).

    Raises:
        CaseProofLocked: the number is locked until a time still ahead.
    """
    until = await session.scalar(select(CaseProofLock.locked_until).where(CaseProofLock.case_number == case_number))
    if until is not None and until > now:
        raise CaseProofLocked("too many failed proofs against this case number")


async def record_proof_failure(
    session: AsyncSession, *, sender_key: str, case_number: str, now: datetime
) -> ProofFailure:
    """Record a failed proof in the caller's transaction; lock the number if this one makes too many.

    Returns the failure with the case it locked, if it locked one that exists: the caller tells
    that case's citizen in the same transaction (only the locking failure does).
    """
    session.add(LookupAttempt(sender_key=sender_key, case_number=case_number, succeeded=False, created_at=now))
    await session.flush()
    failures = await _recent_failures(session, now - CASE_PROOF_WINDOW, case_number=case_number)
    if failures < MAX_PROOF_FAILURES_PER_CASE or not await _lock(session, case_number, now):
        return ProofFailure(case_number)
    case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == case_number))
    return ProofFailure(case_number, locked_case=case)


async def _lock(session: AsyncSession, case_number: str, now: datetime) -> bool:
    """Lock the number from now; False if it is locked already (by a failure a moment ago)."""
    until = now + CASE_LOCK_DURATION
    renewed = await session.execute(
        update(CaseProofLock)
        .where(CaseProofLock.case_number == case_number, CaseProofLock.locked_until <= now)
        .values(locked_at=now, locked_until=until)
        .execution_options(synchronize_session=False)
    )
    if renewed.rowcount:  # type: ignore[attr-defined]
        return True
    if await session.scalar(select(CaseProofLock.id).where(CaseProofLock.case_number == case_number)) is not None:
        return False
    try:
        async with session.begin_nested():
            session.add(CaseProofLock(case_number=case_number, locked_at=now, locked_until=until))
    except IntegrityError:  # a concurrent failure locked it first, and tells the citizen
        return False
    return True


async def note_proof_ceiling(session: AsyncSession, *, failures_per_hour: int, now: datetime | None = None) -> bool:
    """After a failed proof: if failures city-wide in the last hour reached the ceiling, say so once an hour.

    Writes the `PROOF_CEILING_ACTION` audit row in the caller's transaction when the hour has none
    yet; True if it did (the caller may alert open consoles).
    """
    now = now or utcnow()
    since = now - PROOF_CEILING_WINDOW
    failures = await _recent_failures(session, since)
    if failures < failures_per_hour or await ceiling_alert(session, now) is not None:
        return False
    entry = audit.record(
        session,
        None,
        PROOF_CEILING_ACTION,
        "lookup",
        f"{failures} failed proofs (case digits or link codes) in the last hour; ceiling {failures_per_hour}",
        actor_name="system",
    )
    entry.created_at = now
    return True


async def ceiling_alert(session: AsyncSession, now: datetime | None = None) -> AuditEntry | None:
    """The ceiling's audit row of the last hour, if any: what the console shows supervisors."""
    now = now or utcnow()
    return await session.scalar(
        select(AuditEntry)
        .where(AuditEntry.action == PROOF_CEILING_ACTION, AuditEntry.created_at >= now - PROOF_CEILING_WINDOW)
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )


async def lookup_progress(
    session: AsyncSession,
    *,
    sender_key: str,
    case_number: str,
    phone_last4: str | None,
    identity: ChannelIdentity | None,
    now: datetime | None = None,
) -> LookupOutcome:
    """Progress of a case for a caller who filed it or knows its phone's last four digits.

    An unknown number and wrong digits both give no progress, so the answer never tells
    whether a case exists. Every attempt is recorded in the caller's transaction; a failure
    comes back with what it set off (see `record_proof_failure`).

    Raises:
        LookupThrottled: after too many recent failures from this sender.
        CaseProofLocked: the number is locked against digit proofs (never for its owner).
    """
    now = now or utcnow()
    owner = await case_filed_by(session, case_number, identity)
    if not owner:
        await check_sender(session, sender_key, now)
        await check_digit_proof(session, case_number, now)

    case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == case_number))
    allowed = case is not None and (owner or digits_prove(case, phone_last4))
    if not allowed or case is None:
        failure = await record_proof_failure(session, sender_key=sender_key, case_number=case_number, now=now)
        return LookupOutcome(None, failure)
    session.add(LookupAttempt(sender_key=sender_key, case_number=case_number, succeeded=True, created_at=now))

    events = (
        await session.scalars(
            select(CaseEvent)
            .where(CaseEvent.case_id == case.id, CaseEvent.kind.in_(CITIZEN_VISIBLE_EVENTS))
            .order_by(CaseEvent.id.desc())
        )
    ).all()
    status = CaseStatus(case.status)
    resolved = next((e for e in events if e.kind == "status" and e.to_status == CaseStatus.RESOLVED.value), None)
    reply = next((e for e in events if e.kind == "reply"), None)
    result = resolved if status in _RESULT_STATUSES else None
    latest = result or (events[0] if events else None)
    return LookupOutcome(
        CaseProgress(
            case_number=case.case_number,
            status=status,
            department=case.department,
            latest_reply=reply.note if reply is not None else None,
            result=result.note if result is not None else None,
            updated_at=latest.created_at if latest is not None else case.updated_at,
        )
    )
