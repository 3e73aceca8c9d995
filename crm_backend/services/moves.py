"""The one way a case changes status.

Whoever moves a case (a member of staff in the console, an API client, the dispatcher that
routes a new report, the 回访 that records a rating or archives an unanswered one) calls
`move_case`. It checks the move against the life cycle's one table
(`crm_backend.lifecycle.CASE_ACTIONS`) and the actor's role and department, appends the
`CaseEvent`, writes the audit row and, when asked, writes the citizen's notice, all in the
caller's transaction. `open_case` gives a new case its first status the same way. No other
code assigns `ServiceCase.status`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch.deadlines import due_at
from crm_backend.errors import InvalidInput, InvalidTransition, NotFound
from crm_backend.lifecycle import CaseAction, CaseStatus, Permission, Role, check_action
from crm_backend.models import CaseEvent, CategoryPolicy, Department, ServiceCase, StaffUser, utcnow
from crm_backend.services import audit, reply_scores, staff_labels
from crm_backend.services.staff_labels import LabelDecision

MAX_NOTE_CHARS = 2000


class ActorKind(StrEnum):
    STAFF = "staff"
    API = "api"
    SYSTEM = "system"


@dataclass(frozen=True)
class Actor:
    """Who moves a case, and under whose rules.

    Attributes:
        kind: a member of staff, an API client, or one of the system's own steps.
        name: what the timeline shows (a display name, an API client's name, 「智能分派」…).
        role: the role whose rules apply.
        user: the member of staff, for staff actors.
        department_id: for agents, the one department whose cases they may move.
        address: the client address, for the audit row.
    """

    kind: ActorKind
    name: str
    role: Role
    user: StaffUser | None = None
    department_id: int | None = None
    address: str = ""

    @classmethod
    def staff(cls, user: StaffUser, address: str = "") -> Actor:
        return cls(ActorKind.STAFF, user.display_name, Role(user.role), user, user.department_id, address)

    @classmethod
    def api_client(cls, name: str, address: str = "") -> Actor:
        """An integration with write access: a dispatcher's rights, no department bound."""
        return cls(ActorKind.API, f"api:{name}", Role.SUPERVISOR, address=address)

    @classmethod
    def system(cls, name: str) -> Actor:
        """The system's own steps (routing a new report, the 回访); trusted with every operation."""
        return cls(ActorKind.SYSTEM, name, Role.ADMIN)

    @property
    def audit_name(self) -> str:
        return self.user.username if self.user is not None else self.name

    def may_touch(self, case: ServiceCase) -> bool:
        """Agents move only their department's cases; everyone else any case."""
        return self.role.may(Permission.SUPERVISE) or (
            self.department_id is not None and case.department_id == self.department_id
        )


class CaseNotices(Protocol):
    """Who tells the citizen about a move: `record` writes the notice in the move's transaction
    (the event carries the move's note: for 办结, the result the citizen is owed), `deliver`
    pushes it once that transaction has committed."""

    async def record(self, session: AsyncSession, case: ServiceCase, event: CaseEvent) -> Any: ...

    def deliver(self, notice: Any) -> None: ...


@dataclass(frozen=True)
class Move:
    """A move that was made: its history event and the notice to push after the commit (if any)."""

    case: ServiceCase
    event: CaseEvent
    notice: Any = None


def open_case(session: AsyncSession, actor: Actor, case: ServiceCase, *, now: datetime | None = None) -> CaseEvent:
    """Give a new case its first status (已受理) and its first event, in the caller's transaction.

    The case and its event are added to the session; the caller flushes. `now` (default: the
    clock) stamps the event, as in `move_case`.
    """
    event = _set_status(case, actor, CaseStatus.RECEIVED, "", from_status=None, now=now or utcnow())
    event.case = case
    session.add_all([case, event])
    audit.record(
        session,
        actor.user,
        "case.file",
        case.case_number,
        f"filed by {actor.name}",
        address=actor.address,
        actor_name=actor.name,
    )
    return event


async def move_case(
    session: AsyncSession,
    actor: Actor,
    case: ServiceCase,
    action: CaseAction | str,
    *,
    note: str = "",
    department_id: int | None = None,
    notices: CaseNotices | None = None,
    now: datetime | None = None,
    category: str | None = None,
) -> Move:
    """Perform one life-cycle operation on a case, in the caller's transaction.

    The case, its event and the audit row are added to the session, and written with the
    caller's next flush, query or commit (flushed at once when a notice is recorded).

    Args:
        session: the caller's session; nothing is committed here.
        actor: who moves the case.
        case: the case, already loaded.
        action: the operation (a `CaseAction` or its code).
        note: the reason or remark, required by 退回, 办结 and 重办.
        department_id: the department for 派单 and 改派.
        notices: given, the citizen's notice is written with the move; the caller passes
            `Move.notice` to `notices.deliver` after the commit.
        now: the time of the move (default: the clock): it stamps the event and the case's
            `updated_at`, and a 派单 counts the deadline from it. Given for tests and for
            history imported with its own times (`crm_backend.importer`); the audit row keeps
            the real time it was written.
        category: for 派单 and 改派, the category the person decided (the case takes it, and it
            is kept as a staff label, `staff_labels.record_staff_label`); None keeps the case's.

    Raises:
        NotFound: an agent moving another department's case (never told apart from "no such case").
        InvalidInput: unknown operation, missing reason or department.
        InvalidTransition: the case's status, the actor's role, or a system-only operation.
    """
    operation = parse_action(action)
    now = now or utcnow()
    if not actor.may_touch(case):
        raise NotFound("case")
    spec = check_action(operation, CaseStatus(case.status), actor.role, system=actor.kind is ActorKind.SYSTEM)
    note = note.strip()
    if spec.needs_note and not note:
        raise InvalidInput("note_required", f"{spec.label}需要填写原因或说明")
    detail = ""
    if category is not None:  # before the department: a new category's deadline applies
        if operation not in (CaseAction.DISPATCH, CaseAction.REASSIGN):
            raise InvalidInput("category_not_allowed", f"{spec.label}不能更改分类")
        decision = LabelDecision.DISPATCH if operation is CaseAction.DISPATCH else LabelDecision.REASSIGN
        await staff_labels.record_staff_label(session, actor, case, category, decision, now=now)
        if category != case.category:
            detail = f"；分类 {case.category or '无'} → {category}"
            note = f"{note}（分类：{category}）" if note else f"分类：{category}"
            case.category = category
    if spec.needs_department:
        department = await session.get(Department, department_id) if department_id else None
        if department is None or not department.active:
            raise InvalidInput("department_required", f"{spec.label}需要选择一个在用的承办部门")
        if operation is CaseAction.REASSIGN and department.id == case.department_id:
            raise InvalidTransition("改派需要选择另一个部门")
        detail += f"；部门 {case.department or '无'} → {department.name}"
        case.department_id, case.department = department.id, department.name
        if case.due_at is None:
            case.due_at = await _due_for(session, case, now)
        note = f"{department.name}。{note}" if note else department.name
    elif operation is CaseAction.RETURN:
        detail = f"；部门 {case.department or '无'} → 无"
        case.department_id, case.department = None, None  # back to the dispatcher's queue
    event = _set_status(case, actor, spec.target, note, from_status=case.status, now=now)
    session.add(event)
    audit.record(
        session,
        actor.user,
        f"case.{operation.value}",
        case.case_number,
        f"{event.from_status} → {event.to_status}{detail}",
        address=actor.address,
        actor_name=actor.name,
    )
    if operation is CaseAction.RESOLVE:  # the result the citizen is sent: scored for 答复质量
        await session.flush()
        await reply_scores.record(session, case, event, at=now)
    if notices is None:  # written with the caller's next flush or commit (bulk imports make thousands of moves)
        return Move(case, event)
    await session.flush()  # the notice is written from the case as it now stands
    return Move(case, event, await notices.record(session, case, event))


def parse_action(action: CaseAction | str) -> CaseAction:
    """An operation from its code.

    Raises:
        InvalidInput: no such operation.
    """
    try:
        return CaseAction(action)
    except ValueError as error:
        raise InvalidInput("bad_action", "未知的操作") from error


def _set_status(
    case: ServiceCase, actor: Actor, target: CaseStatus, note: str, *, from_status: str | None, now: datetime
) -> CaseEvent:
    """The one assignment of a case's status, with the event that records it (stamped `now`)."""
    case.status = target.value
    case.updated_at = now
    return CaseEvent(
        case_id=case.id,
        from_status=from_status,
        to_status=target.value,
        kind="status",
        note=note[:MAX_NOTE_CHARS],
        actor=actor.name[:64],
        actor_id=actor.user.id if actor.user is not None else None,
        created_at=now,
    )


async def _due_for(session: AsyncSession, case: ServiceCase, now: datetime) -> datetime | None:
    policy = await session.get(CategoryPolicy, case.category) if case.category else None
    if policy is None:
        return None
    return due_at(now, policy.deadline_working_days, urgent=case.urgent)
