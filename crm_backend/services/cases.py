"""Reading cases (they move through their life cycle in `crm_backend.services.moves`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from crm_backend.errors import InvalidInput, NotFound
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import Department, RoutingDecision, ServiceCase

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


async def department_id_by_code(session: AsyncSession, code: str) -> int:
    """The id of an active department by its code.

    Raises:
        InvalidInput: no active department has this code.
    """
    department_id = await session.scalar(
        select(Department.id).where(Department.code == code[:64], Department.active.is_(True))
    )
    if department_id is None:
        raise InvalidInput("bad_department", f"no active department with code {code!r}")
    return department_id


def _status(value: str) -> CaseStatus:
    try:
        return CaseStatus(value)
    except ValueError as error:
        raise InvalidInput("bad_status", f"unknown status {value!r}") from error
