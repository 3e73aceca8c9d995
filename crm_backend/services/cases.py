"""Reading cases and moving them through their life cycle."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from crm_backend.errors import InvalidInput, NotFound
from crm_backend.lifecycle import CaseStatus, check_transition
from crm_backend.models import CaseEvent, RoutingDecision, ServiceCase, utcnow

MAX_PAGE = 200


async def get_case(session: AsyncSession, case_number: str, *, with_events: bool = False) -> ServiceCase:
    """A case by its number.

    Raises:
        NotFound: no such case.
    """
    stmt = select(ServiceCase).where(ServiceCase.case_number == case_number)
    if with_events:
        stmt = stmt.options(selectinload(ServiceCase.events))
    case = await session.scalar(stmt)
    if case is None:
        raise NotFound(f"case {case_number}")
    return case


async def routing_decisions(session: AsyncSession, case: ServiceCase) -> list[RoutingDecision]:
    """Every routing decision taken for a case, oldest first."""
    rows = await session.scalars(
        select(RoutingDecision).where(RoutingDecision.case_id == case.id).order_by(RoutingDecision.id)
    )
    return list(rows.all())


async def case_number_of(session: AsyncSession, case_id: int | None) -> str | None:
    """The number of a case given its id (None for None)."""
    if case_id is None:
        return None
    return await session.scalar(select(ServiceCase.case_number).where(ServiceCase.id == case_id))


async def list_cases(
    session: AsyncSession, *, status: str | None = None, limit: int = 50, before_id: int | None = None
) -> list[ServiceCase]:
    """Newest cases first, keyset-paginated by id so deep pages stay fast."""
    stmt = select(ServiceCase).order_by(ServiceCase.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
    if status is not None:
        stmt = stmt.where(ServiceCase.status == _status(status).value)
    if before_id is not None:
        stmt = stmt.where(ServiceCase.id < before_id)
    return list((await session.scalars(stmt)).all())


async def change_status(
    session: AsyncSession,
    case_number: str,
    target: str,
    *,
    actor: str,
    note: str = "",
    department: str | None = None,
) -> CaseEvent:
    """Move a case to another status and append the event, in the caller's transaction.

    Raises:
        NotFound: no such case.
        InvalidInput: unknown status.
        InvalidTransition: the life cycle does not allow the move.
    """
    case = await get_case(session, case_number)
    current, wanted = CaseStatus(case.status), _status(target)
    check_transition(current, wanted)
    case.status = wanted.value
    case.updated_at = utcnow()
    if department:
        case.department = department[:64]
    event = CaseEvent(
        case_id=case.id, from_status=current.value, to_status=wanted.value, note=note[:2000], actor=actor[:64]
    )
    session.add(event)
    await session.flush()
    return event


def _status(value: str) -> CaseStatus:
    try:
        return CaseStatus(value)
    except ValueError as error:
        raise InvalidInput("bad_status", f"unknown status {value!r}") from error
