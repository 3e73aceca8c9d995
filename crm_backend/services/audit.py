"""The audit log: who signed in, who saw a citizen's personal data, who changed what."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.models import AuditEntry, StaffUser

MAX_PAGE = 200


def record(
    session: AsyncSession,
    actor: StaffUser | None,
    action: str,
    target: str = "",
    detail: str = "",
    *,
    address: str = "",
    actor_name: str | None = None,
) -> AuditEntry:
    """Append an audit row in the caller's transaction, so it lands with the change or not at all."""
    entry = AuditEntry(
        actor_id=actor.id if actor else None,
        actor=(actor.username if actor else actor_name or "anonymous")[:64],
        action=action[:48],
        target=target[:80],
        detail=detail[:2000],
        address=address[:64],
    )
    session.add(entry)
    return entry


class AuditRow(NamedTuple):
    """An audit row with the display name of the member of staff behind it (None for the
    system, API clients, the command line and failed sign-ins)."""

    entry: AuditEntry
    display_name: str | None


async def recent_entries(
    session: AsyncSession,
    *,
    before_id: int | None = None,
    action: str | None = None,
    actor: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[AuditRow]:
    """Newest first, keyset-paginated by id; staff names joined in the same query.

    Args:
        session: where to read.
        before_id: the page after the one that ended with this id.
        action: only this action (e.g. ``login.failed``).
        actor: only rows whose actor (a username, ``api:NAME``, ``cli``…) is this.
        since: only rows written at or after this time.
        until: only rows written before this time.
        limit: rows per page, at most `MAX_PAGE`.
    """
    stmt = (
        select(AuditEntry, StaffUser.display_name)
        .outerjoin(StaffUser, StaffUser.id == AuditEntry.actor_id)
        .order_by(AuditEntry.id.desc())
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    if actor:
        stmt = stmt.where(AuditEntry.actor == actor)
    if since is not None:
        stmt = stmt.where(AuditEntry.created_at >= since)
    if until is not None:
        stmt = stmt.where(AuditEntry.created_at < until)
    return [AuditRow(entry, display_name) for entry, display_name in (await session.execute(stmt)).all()]
