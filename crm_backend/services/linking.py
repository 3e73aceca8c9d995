"""One citizen across channels: linking a second channel to the first, and their cases.

A citizen proves they own the first channel either with a one-time code shown there
(six digits, valid ten minutes, single use) or with a case number they filed and the
last four digits of its phone. Linking moves the new channel (and anything its citizen
record already had) onto the first channel's citizen, and is written to the audit log.
Failed attempts count against the same per-sender throttle as progress lookups; a failed
case-number proof also counts against that case number, with progress lookups, and may lock
it (see `crm_backend.services.lookup`).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import CrmError
from crm_backend.models import ChannelIdentity, Citizen, LinkCode, ServiceCase, utcnow
from crm_backend.services import audit
from crm_backend.services.lookup import (
    ProofFailure,
    case_filed_by,
    check_digit_proof,
    check_sender,
    digits_prove,
    record_proof_failure,
)

LINK_CODE_TTL = timedelta(minutes=10)
LINK_ATTEMPT_MARK = "link"  # LookupAttempt.case_number of a failed code


class LinkRefused(CrmError):
    """A code or proof that is wrong, expired, used, or from this very channel; `reason` says which.

    `failure` is the failed attempt recorded in the caller's transaction, if one was.
    """

    code = "link_refused"

    def __init__(self, reason: str, failure: ProofFailure | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failure = failure


async def issue_code(session: AsyncSession, identity: ChannelIdentity, now: datetime | None = None) -> LinkCode:
    """A fresh one-time code for this channel; any earlier unused code of it stops working."""
    now = now or utcnow()
    await session.execute(
        update(LinkCode).where(LinkCode.identity_id == identity.id, LinkCode.used_at.is_(None)).values(expires_at=now)
    )
    while True:
        code = f"{secrets.randbelow(1_000_000):06d}"
        clash = await session.scalar(
            select(LinkCode.id).where(LinkCode.code == code, LinkCode.used_at.is_(None), LinkCode.expires_at > now)
        )
        if clash is None:
            break
    row = LinkCode(code=code, citizen_id=identity.citizen_id, identity_id=identity.id, created_at=now)
    row.expires_at = now + LINK_CODE_TTL
    session.add(row)
    await session.flush()
    return row


async def redeem_code(
    session: AsyncSession, identity: ChannelIdentity, code: str, now: datetime | None = None
) -> Citizen:
    """Link this channel to the citizen who was shown the code; returns that citizen.

    The failure, if any, is recorded in the caller's transaction, which must commit it.

    Raises:
        LookupThrottled: too many recent failures from this channel.
        LinkRefused: unknown, expired or used code (reason ``invalid``), or the code was
            shown on this channel or one already linked (``same_citizen``).
    """
    now = now or utcnow()
    await check_sender(session, identity.sender_id, now)
    row = await session.scalar(
        select(LinkCode).where(LinkCode.code == code.strip(), LinkCode.used_at.is_(None), LinkCode.expires_at > now)
    )
    if row is None:
        failure = await record_proof_failure(
            session, sender_key=identity.sender_id, case_number=LINK_ATTEMPT_MARK, now=now
        )
        raise LinkRefused("invalid", failure)
    if row.citizen_id == identity.citizen_id:
        raise LinkRefused("same_citizen")
    row.used_at, row.used_by_identity_id = now, identity.id
    return await _merge(session, identity, row.citizen_id, how="code")


async def link_by_case(
    session: AsyncSession, identity: ChannelIdentity, case_number: str, phone_last4: str, now: datetime | None = None
) -> Citizen:
    """Link this channel to the citizen who filed the case, proven by the phone's last four digits.

    A failure is recorded in the caller's transaction, which must commit it: it counts against
    this channel and against the case number, like a failed progress lookup.

    Raises:
        LookupThrottled: too many recent failures from this channel.
        CaseProofLocked: the case number is locked against digit proofs.
        LinkRefused: no such case or wrong digits (``invalid``, never told apart), or the
            case is already this citizen's (``same_citizen``).
    """
    now = now or utcnow()
    await check_sender(session, identity.sender_id, now)
    if not await case_filed_by(session, case_number, identity):
        await check_digit_proof(session, case_number, now)
    case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == case_number))
    if case is None or not digits_prove(case, phone_last4):
        failure = await record_proof_failure(session, sender_key=identity.sender_id, case_number=case_number, now=now)
        raise LinkRefused("invalid", failure)
    if case.citizen_id == identity.citizen_id:
        raise LinkRefused("same_citizen")
    return await _merge(session, identity, case.citizen_id, how=f"case {case.case_number}")


async def _merge(session: AsyncSession, identity: ChannelIdentity, target_id: int, *, how: str) -> Citizen:
    """Move the identity's citizen record (all its channels and cases) onto the target citizen."""
    source_id = identity.citizen_id
    target = await session.get(Citizen, target_id)
    source = await session.get(Citizen, source_id)
    assert target is not None and source is not None
    for table in (ChannelIdentity, ServiceCase):
        await session.execute(update(table).where(table.citizen_id == source_id).values(citizen_id=target_id))
    if not target.phone and source.phone:
        target.phone = source.phone
    identity.citizen_id = target_id
    audit.record(
        session,
        None,
        "citizen.link",
        f"citizen:{target_id}",
        f"{identity.channel} channel linked by {how} (was citizen {source_id})",
        actor_name=f"citizen:{target_id}",
    )
    await session.flush()
    return target


async def citizen_cases(session: AsyncSession, citizen_id: int, limit: int = 10) -> list[ServiceCase]:
    """The citizen's cases from every linked channel, newest first."""
    rows = await session.scalars(
        select(ServiceCase).where(ServiceCase.citizen_id == citizen_id).order_by(ServiceCase.id.desc()).limit(limit)
    )
    return list(rows.all())
