"""Reading cases (they move through their life cycle in `crm_backend.services.moves`)."""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from crm_backend.dispatch.case_type import CASE_TYPES, CaseTypeRecogniser
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import Department, RoutingDecision, ServiceCase

MAX_PAGE = 200
CLASSIFY_BATCH = 500


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
    session: AsyncSession,
    *,
    status: str | None = None,
    case_type: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[ServiceCase]:
    """Newest cases first, keyset-paginated by id so deep pages stay fast.

    Raises:
        InvalidInput: an unknown status or case type.
    """
    stmt = select(ServiceCase).order_by(ServiceCase.id.desc()).limit(max(1, min(limit, MAX_PAGE)))
    if status is not None:
        stmt = stmt.where(ServiceCase.status == _status(status).value)
    if case_type is not None:
        if case_type not in CASE_TYPES:
            raise InvalidInput("bad_case_type", f"unknown case type {case_type!r}")
        stmt = stmt.where(ServiceCase.case_type == case_type)
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


async def classify_untyped_cases(session: AsyncSession, recogniser: CaseTypeRecogniser) -> int:
    """Give every case filed before case types existed (``case_type`` NULL) its recognised type.

    Cases that already have a type, recognised or corrected by staff, are left alone, so running
    it again does nothing. One audit row (actor ``cli``) records how many were classified.
    Returns that number.
    """
    from crm_backend.services import audit

    classified = 0
    last_id = 0
    while True:
        batch = list(
            (
                await session.scalars(
                    select(ServiceCase)
                    .where(ServiceCase.case_type.is_(None), ServiceCase.id > last_id)
                    .order_by(ServiceCase.id)
                    .limit(CLASSIFY_BATCH)
                )
            ).all()
        )
        if not batch:
            break
        answers = await asyncio.to_thread(recogniser.predict_many, [case.description for case in batch])
        for case, answer in zip(batch, answers, strict=True):
            case.case_type = answer.case_type
        classified += len(batch)
        last_id = batch[-1].id
        await session.flush()
    if classified:
        audit.record(session, None, "case.classify_types", "", str(classified), actor_name="cli")
    return classified
