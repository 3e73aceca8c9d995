"""Routing (派单): category × district → department, a working-day deadline, and a record
of why, for every new case.

Departments, routing rules and per-category deadlines are data (`data/routing/*.csv`),
loaded into the database on first start and editable there afterwards.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch.deadlines import due_at
from crm_backend.errors import CrmError
from crm_backend.lifecycle import CaseAction
from crm_backend.models import (
    CategoryPolicy,
    Department,
    RoutingDecision,
    RoutingRule,
    ServiceCase,
    utcnow,
)
from crm_backend.services.moves import Actor, move_case

DATA_DIR = Path(__file__).resolve().parent / "data" / "routing"
DISPATCH_ACTOR = "dispatch"


class Prediction(Protocol):
    """What routing needs from the category classifier."""

    @property
    def category(self) -> str: ...

    @property
    def confidence(self) -> float: ...

    @property
    def needs_manual_dispatch(self) -> bool: ...

    @property
    def top(self) -> list[tuple[str, float]]: ...

    @property
    def suggestions(self) -> list[str]: ...


@dataclass(frozen=True)
class DispatchPlan:
    """Where a report will go and by when; shown to the citizen before filing."""

    category: str
    confidence: float
    probabilities: dict[str, float]
    suggestions: list[str]
    model_version: str
    district: str | None
    urgent: bool
    queued: bool
    rule: str
    department_id: int | None
    department_name: str | None
    due_at: datetime | None
    # A person chose the category (a citizen's button, staff drafting the case): kept as a staff label.
    category_chosen: bool = False


def load_urgent_keywords(path: Path = DATA_DIR / "urgent_keywords.txt") -> tuple[str, ...]:
    """Keywords that make a report urgent (one a line, # comments)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def is_urgent(text: str, keywords: tuple[str, ...]) -> bool:
    """Safety hazards, gas leaks, water and power cuts are handled the same day."""
    return any(keyword in text for keyword in keywords)


async def seed_routing(session: AsyncSession, data_dir: Path = DATA_DIR) -> bool:
    """Load departments, category policies and rules from the data files into an empty database.

    Returns:
        True if it loaded them, False if the database already had departments (admins'
        edits are never overwritten).

    Raises:
        CrmError: a file names a department that does not exist.
    """
    if await session.scalar(select(func.count(Department.id))):
        return False

    def rows(name: str) -> list[dict[str, str]]:
        with (data_dir / name).open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))

    departments = {
        row["code"]: Department(code=row["code"], name=row["name"], district=row["district"] or None)
        for row in rows("departments.csv")
    }
    session.add_all(departments.values())
    await session.flush()

    def department_id(code: str) -> int:
        if code not in departments:
            raise CrmError(f"routing data names unknown department {code!r}")
        return departments[code].id

    for row in rows("categories.csv"):
        session.add(
            CategoryPolicy(
                category=row["category"],
                deadline_working_days=int(row["deadline_working_days"]),
                default_department_id=department_id(row["default_department"]),
            )
        )
    for row in rows("rules.csv"):
        session.add(
            RoutingRule(
                category=row["category"], district=row["district"], department_id=department_id(row["department"])
            )
        )
    await session.flush()
    return True


async def plan_dispatch(
    session: AsyncSession,
    *,
    prediction: Prediction,
    model_version: str,
    district: str | None,
    urgent: bool,
    now: datetime | None = None,
    category_override: str | None = None,
) -> DispatchPlan:
    """Decide department and deadline for a report, or send it to the manual queue.

    A category the citizen chose (`category_override`) is taken as certain. Otherwise a
    prediction below the classifier's threshold goes to the manual dispatch queue with
    its top three suggestions and is never routed silently.
    """
    now = now or utcnow()
    probabilities = dict(prediction.top)
    category = category_override or prediction.category
    queued = category_override is None and prediction.needs_manual_dispatch
    policy = await session.get(CategoryPolicy, category)
    if policy is None:
        raise CrmError(f"no routing policy for category {category!r}")

    department_id: int | None = None
    if queued:
        rule = f"manual queue: confidence {prediction.confidence:.2f} below threshold"
    else:
        routed = await session.scalar(
            select(RoutingRule.department_id).where(RoutingRule.category == category, RoutingRule.district == district)
        )
        if routed is not None:
            department_id, rule = routed, f"rule: {category} × {district}"
        else:
            department_id, rule = policy.default_department_id, f"default for {category}"
        if category_override:
            rule += " (category chosen by citizen)"
    department = await session.get(Department, department_id) if department_id else None
    return DispatchPlan(
        category=category,
        confidence=1.0 if category_override else prediction.confidence,
        probabilities=probabilities,
        suggestions=list(prediction.suggestions),
        model_version=model_version,
        district=district,
        urgent=urgent,
        queued=queued,
        rule=rule,
        department_id=department_id,
        department_name=department.name if department else None,
        due_at=None if queued else due_at(now, policy.deadline_working_days, urgent=urgent),
        category_chosen=category_override is not None,
    )


async def apply_dispatch(
    session: AsyncSession, case: ServiceCase, plan: DispatchPlan, *, now: datetime | None = None
) -> RoutingDecision:
    """Route a freshly filed case by its plan and record the decision, in the caller's transaction.

    `now` (default: the clock) is when it happens: it stamps the 派单 and the decision (history
    imported with its own times passes the message's time).
    """
    now = now or utcnow()
    case.category = plan.category
    case.district = case.district or plan.district
    case.urgent = plan.urgent
    if not plan.queued:
        case.due_at = plan.due_at
        await move_case(
            session, Actor.system(DISPATCH_ACTOR), case, CaseAction.DISPATCH, department_id=plan.department_id, now=now
        )
    decision = RoutingDecision(
        case_id=case.id,
        category=plan.category,
        confidence=plan.confidence,
        probabilities=plan.probabilities,
        suggestions=plan.suggestions,
        model_version=plan.model_version,
        rule=plan.rule,
        department_id=plan.department_id,
        district=plan.district,
        queued=plan.queued,
        urgent=plan.urgent,
        due_at=plan.due_at,
        created_at=now,
    )
    session.add(decision)  # written with the caller's next flush, query or commit
    return decision


async def suggested_departments(
    session: AsyncSession, rows: list[tuple[ServiceCase, RoutingDecision | None]]
) -> dict[int, int]:
    """The department a person dispatching each case is offered first, by case id.

    The routing decision's department if it has one, else the department the routing rules give
    for the decision's top suggested category and the case's district (the category's default
    department where no rule names the district). Never the department the case is at now (改派
    must go elsewhere), never an inactive one; a case with nothing to suggest is left out.
    """
    if not rows:
        return {}
    rules = {
        (category, district): department_id
        for category, district, department_id in (
            await session.execute(select(RoutingRule.category, RoutingRule.district, RoutingRule.department_id))
        ).tuples()
    }
    defaults = dict(
        (await session.execute(select(CategoryPolicy.category, CategoryPolicy.default_department_id))).tuples().all()
    )
    active = set((await session.scalars(select(Department.id).where(Department.active))).all())
    suggested: dict[int, int] = {}
    for case, decision in rows:
        if decision is None:
            continue
        department_id = decision.department_id
        if department_id is None:
            category = decision.suggestions[0] if decision.suggestions else decision.category
            department_id = rules.get((category, case.district or ""), defaults.get(category))
        if department_id is not None and department_id in active and department_id != case.department_id:
            suggested[case.id] = department_id
    return suggested


async def suggested_department(
    session: AsyncSession, case: ServiceCase, decision: RoutingDecision | None
) -> int | None:
    """`suggested_departments` for one case."""
    return (await suggested_departments(session, [(case, decision)])).get(case.id)
