"""Moving a test's case through its life cycle by the one path the product uses."""

from __future__ import annotations

import requests
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.models import CaseEvent, Department
from crm_backend.services.cases import get_case
from crm_backend.services.moves import Actor, move_case
from tests.support.stack import Stack


async def department_named(session: AsyncSession, name: str) -> int:
    """The id of the department with this name, created for the test if there is none."""
    found = await session.scalar(select(Department.id).where(Department.name == name))
    if found is not None:
        return found
    department = Department(code=f"test:{name}", name=name)
    session.add(department)
    await session.flush()
    return department.id


async def advance(
    session: AsyncSession,
    case_number: str,
    *actions: str,
    note: str = "",
    department: str | None = None,
    actor: str = "staff:li",
) -> CaseEvent:
    """Perform each operation in turn (as a trusted system actor, with the same note); returns the last event."""
    case = await get_case(session, case_number)
    department_id = await department_named(session, department) if department else None
    event: CaseEvent | None = None
    for action in actions:
        move = await move_case(session, Actor.system(actor), case, action, note=note, department_id=department_id)
        event = move.event
    assert event is not None, "no action given"
    return event


def send_to_department_via_api(
    stack: Stack, case_number: str, department_code: str, note: str, *, key: str | None = None
) -> requests.Response:
    """派单 (or 改派, if the bot already routed the case) to a department through `/api/v1`."""
    routed = stack.api("GET", f"/cases/{case_number}", key=key).json()
    action = "reassign" if routed["status"] == "dispatched" else "dispatch"
    return stack.api(
        "POST",
        f"/cases/{case_number}/transitions",
        key=key,
        json={"action": action, "department": department_code, "note": note},
    )
