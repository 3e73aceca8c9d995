"""Staff working cases in the console: what they may see, list and do.

Every function takes the member of staff and checks, here on the server, that the case
is theirs to see (agents: their department's cases; supervisors and admins: all) and
that their role may perform the operation. Each change writes its `CaseEvent` and an
audit row in the caller's transaction, so both land together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from sqlalchemy import ColumnElement, and_, false, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch.case_type import CASE_TYPES, UNCLASSIFIED_LABEL
from crm_backend.dispatch.deadlines import CHINA_TZ, END_OF_OFFICE_DAY, add_working_days
from crm_backend.errors import InvalidInput, InvalidTransition, NotFound
from crm_backend.lifecycle import OPEN_STATUSES, CaseStatus, Permission, Role
from crm_backend.models import (
    CaseEvent,
    ChannelIdentity,
    ExtensionRequest,
    RoutingDecision,
    ServiceCase,
    StaffUser,
    utcnow,
)
from crm_backend.services import audit, history, reply_scores, staff_labels
from crm_backend.services.moves import Actor, CaseNotices, Move, move_case, parse_action
from crm_backend.services.segments import Segment, case_in_segment

MAX_NOTE_CHARS = 2000
MAX_EXTENSION_DAYS = 30
PAGE_SIZE = 50


def role_of(user: StaffUser) -> Role:
    return Role(user.role)


def case_scope(user: StaffUser) -> ColumnElement[bool]:
    """The cases a member of staff may see, as a WHERE clause."""
    if role_of(user).may(Permission.SUPERVISE):
        return true()
    return ServiceCase.department_id == user.department_id


async def visible_case(session: AsyncSession, user: StaffUser, case_number: str) -> ServiceCase:
    """A case by number, if this member of staff may see it.

    Raises:
        NotFound: no such case, or another department's (the two are never told apart).
    """
    case = await session.scalar(
        select(ServiceCase).where(ServiceCase.case_number == case_number[:20], case_scope(user))
    )
    if case is None:
        raise NotFound("case")
    return case


# The case list's filter value for cases with no type (filed before types existed).
UNCLASSIFIED = UNCLASSIFIED_LABEL


@dataclass(frozen=True)
class CaseFilters:
    """The case list's filters; None means any."""

    status: str | None = None
    category: str | None = None
    case_type: str | None = None  # one of CASE_TYPES, or UNCLASSIFIED for cases filed before types
    department_id: int | None = None
    district: str | None = None
    overdue: bool = False
    supervised: bool = False
    segment: Segment | None = None  # cases of the citizens in this segment (as of now)
    since: date | None = None  # filed on or after this China-time day (the dashboard's links)
    until: date | None = None  # filed on or before this China-time day
    channel: str | None = None  # filed through this channel (web, telegram, rest)


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the list is ordered 督办 first, then newest first."""

    supervised: bool
    case_id: int

    def encode(self) -> str:
        return f"{int(self.supervised)}-{self.case_id}"

    @classmethod
    def decode(cls, raw: str | None) -> Cursor | None:
        if not raw:
            return None
        flag, _, number = raw.partition("-")
        if flag not in ("0", "1") or not number.isdigit():
            raise InvalidInput("bad_cursor", "分页参数无效")
        return cls(flag == "1", int(number))


async def list_cases(
    session: AsyncSession,
    user: StaffUser,
    filters: CaseFilters,
    *,
    after: Cursor | None = None,
    limit: int = PAGE_SIZE,
    now: datetime | None = None,
) -> tuple[list[ServiceCase], Cursor | None]:
    """One page of cases and the cursor of the next page (None on the last one).

    Keyset pagination over the (supervised, id) index: every page costs the same,
    however deep, and no total is counted.
    """
    now = now or utcnow()
    stmt = select(ServiceCase).where(case_scope(user))
    if filters.status:
        stmt = stmt.where(ServiceCase.status == filters.status)
    if filters.category:
        stmt = stmt.where(ServiceCase.category == filters.category)
    if filters.case_type == UNCLASSIFIED:
        stmt = stmt.where(ServiceCase.case_type.is_(None))
    elif filters.case_type:
        stmt = stmt.where(ServiceCase.case_type == filters.case_type)
    if filters.department_id is not None:
        stmt = stmt.where(ServiceCase.department_id == filters.department_id)
    if filters.district:
        stmt = stmt.where(ServiceCase.district == filters.district)
    if filters.overdue:
        stmt = stmt.where(
            ServiceCase.due_at < now, ServiceCase.status.in_([s.value for s in OPEN_STATUSES]), history.live()
        )
    if filters.supervised:
        stmt = stmt.where(ServiceCase.supervised == true())
    if filters.segment is not None:
        stmt = stmt.where(case_in_segment(filters.segment, now))
    if filters.since is not None:
        stmt = stmt.where(ServiceCase.created_at >= datetime.combine(filters.since, time(0), tzinfo=CHINA_TZ))
    if filters.until is not None:
        next_day = filters.until + timedelta(days=1)
        stmt = stmt.where(ServiceCase.created_at < datetime.combine(next_day, time(0), tzinfo=CHINA_TZ))
    if filters.channel:
        stmt = stmt.where(
            ServiceCase.identity_id.in_(select(ChannelIdentity.id).where(ChannelIdentity.channel == filters.channel))
        )
    if after is not None:
        older = ServiceCase.id < after.case_id
        if after.supervised:
            stmt = stmt.where(or_(and_(ServiceCase.supervised == true(), older), ServiceCase.supervised == false()))
        else:
            stmt = stmt.where(ServiceCase.supervised == false(), older)
    stmt = stmt.order_by(ServiceCase.supervised.desc(), ServiceCase.id.desc()).limit(limit + 1)
    rows = list((await session.scalars(stmt)).all())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], Cursor(bool(last.supervised), last.id)


def is_overdue(case: ServiceCase, now: datetime | None = None) -> bool:
    return bool(case.due_at and case.due_at < (now or utcnow()) and CaseStatus(case.status) in OPEN_STATUSES)


def _event(case: ServiceCase, user: StaffUser, kind: str, note: str, to_status: str | None = None) -> CaseEvent:
    return CaseEvent(
        case_id=case.id,
        from_status=case.status,
        to_status=to_status or case.status,
        kind=kind,
        note=note[:MAX_NOTE_CHARS],
        actor=user.display_name[:64],
        actor_id=user.id,
    )


async def perform(
    session: AsyncSession,
    user: StaffUser,
    case_number: str,
    action: str,
    *,
    note: str = "",
    department_id: int | None = None,
    address: str = "",
    notices: CaseNotices | None = None,
    category: str | None = None,
) -> Move:
    """A member of staff performs one life-cycle operation on a case they can see.

    `category`, for 派单 and 改派, is the category they decided (kept as a staff label).

    Raises:
        NotFound: the case is not visible to this member of staff.
        InvalidInput: unknown operation, missing reason or department.
        InvalidTransition: the case's status or the user's role does not allow it.
    """
    operation = parse_action(action)
    case = await visible_case(session, user, case_number)
    return await move_case(
        session,
        Actor.staff(user, address),
        case,
        operation,
        note=note,
        department_id=department_id,
        notices=notices,
        category=category,
    )


async def set_category(
    session: AsyncSession, user: StaffUser, case_number: str, category: str, *, address: str = ""
) -> bool:
    """更正分类 in the console: `staff_labels.correct_category` on a case this member of staff can see.

    Raises:
        InvalidInput: the category is not one of `CATEGORIES`.
        NotFound: the case is not visible to this member of staff.
    """
    case = await visible_case(session, user, case_number)
    return await staff_labels.correct_category(session, Actor.staff(user, address), case, category)


async def add_note(session: AsyncSession, user: StaffUser, case_number: str, text: str, *, address: str = "") -> None:
    """An internal note on the case's timeline; citizens never see it."""
    text = text.strip()
    if not text:
        raise InvalidInput("empty_note", "备注不能为空")
    case = await visible_case(session, user, case_number)
    session.add(_event(case, user, "note", text))
    audit.record(session, user, "case.note", case.case_number, address=address)


async def set_case_type(
    session: AsyncSession, user: StaffUser, case_number: str, case_type: str, *, address: str = ""
) -> bool:
    """更正类型: staff put right a case's 12345 type; not a status move.

    The timeline and the audit log say what it was and what it became. Returns False when the
    case already had this type (nothing is written).

    Raises:
        InvalidInput: the type is not one of `CASE_TYPES`.
        NotFound: the case is not visible to this member of staff.
    """
    if case_type not in CASE_TYPES:
        raise InvalidInput("bad_case_type", f"类型须为：{'、'.join(CASE_TYPES)}")
    case = await visible_case(session, user, case_number)
    if case.case_type == case_type:
        return False
    change = f"{case.case_type or UNCLASSIFIED_LABEL} → {case_type}"
    case.case_type = case_type
    session.add(_event(case, user, "case_type", f"更正类型：{change}"))
    audit.record(session, user, "case.case_type", case.case_number, change, address=address)
    return True


async def record_reply(
    session: AsyncSession, user: StaffUser, case: ServiceCase, text: str, *, address: str = ""
) -> CaseEvent:
    """Put a reply sent to the citizen on the case's timeline, with its 答复质量 score."""
    event = _event(case, user, "reply", text)
    session.add(event)
    audit.record(session, user, "case.reply", case.case_number, address=address)
    await reply_scores.record(session, case, event)
    return event


async def set_supervised(
    session: AsyncSession, user: StaffUser, case_number: str, on: bool, note: str = "", *, address: str = ""
) -> None:
    """督办: a supervisor flags an open case, which puts it at the top of its department's list."""
    if not role_of(user).may(Permission.SUPERVISE):
        raise InvalidTransition("只有值班长可以督办")
    case = await visible_case(session, user, case_number)
    if on and CaseStatus(case.status) not in OPEN_STATUSES:
        raise InvalidTransition(f"「{CaseStatus(case.status).label}」的工单不能督办")
    if case.supervised == on:
        return
    case.supervised = on
    session.add(_event(case, user, "supervise", note.strip() or ("督办" if on else "取消督办")))
    audit.record(session, user, "case.supervise" if on else "case.unsupervise", case.case_number, address=address)


async def request_extension(
    session: AsyncSession, user: StaffUser, case_number: str, working_days: int, reason: str, *, address: str = ""
) -> ExtensionRequest:
    """延期: ask for more working days, with a reason; a supervisor decides."""
    case = await visible_case(session, user, case_number)
    reason = reason.strip()
    if CaseStatus(case.status) not in OPEN_STATUSES:
        raise InvalidTransition(f"「{CaseStatus(case.status).label}」的工单不能申请延期")
    if not 1 <= working_days <= MAX_EXTENSION_DAYS:
        raise InvalidInput("bad_days", f"延期天数为 1-{MAX_EXTENSION_DAYS} 个工作日")
    if not reason:
        raise InvalidInput("reason_required", "申请延期需要填写原因")
    if await pending_extension(session, case):
        raise InvalidTransition("这个工单已有待审批的延期申请")
    request = ExtensionRequest(
        case_id=case.id, working_days=working_days, reason=reason[:MAX_NOTE_CHARS], requested_by_id=user.id
    )
    session.add(request)
    session.add(_event(case, user, "extension", f"申请延期 {working_days} 个工作日：{reason}"))
    audit.record(session, user, "case.extension_request", case.case_number, f"{working_days} days", address=address)
    await session.flush()
    return request


async def pending_extension(session: AsyncSession, case: ServiceCase) -> ExtensionRequest | None:
    return await session.scalar(
        select(ExtensionRequest).where(ExtensionRequest.case_id == case.id, ExtensionRequest.status == "pending")
    )


async def decide_extension(
    session: AsyncSession, user: StaffUser, case_number: str, approve: bool, note: str = "", *, address: str = ""
) -> ExtensionRequest:
    """A supervisor approves (the due date moves by the working days asked) or refuses a 延期."""
    if not role_of(user).may(Permission.SUPERVISE):
        raise InvalidTransition("只有值班长可以审批延期")
    case = await visible_case(session, user, case_number)
    request = await pending_extension(session, case)
    if request is None:
        raise InvalidTransition("这个工单没有待审批的延期申请")
    request.status = "approved" if approve else "refused"
    request.decided_by_id, request.decided_at = user.id, utcnow()
    if approve:
        base = (case.due_at or utcnow()).astimezone(CHINA_TZ).date()
        new_day = add_working_days(base, request.working_days)
        case.due_at = datetime.combine(new_day, END_OF_OFFICE_DAY, tzinfo=CHINA_TZ)
        text = f"同意延期 {request.working_days} 个工作日，新的办理期限 {new_day:%Y-%m-%d}"
    else:
        text = "不同意延期"
    if note.strip():
        text += f"：{note.strip()}"
    session.add(_event(case, user, "extension", text))
    audit.record(session, user, "case.extension_" + request.status, case.case_number, text, address=address)
    return request


async def dispatch_queue(session: AsyncSession, limit: int = 100) -> list[tuple[ServiceCase, RoutingDecision | None]]:
    """Cases waiting for a person to dispatch them (low-confidence or 退回); never imported history.

    The least sure first: by the confidence of the case's latest routing decision, lowest first
    (a case with no decision counts as 0), ties oldest first. What staff decide for the cases the
    model is least sure of teaches it the most (their decisions are kept as staff labels).
    """
    latest = (
        select(RoutingDecision.case_id, func.max(RoutingDecision.id).label("decision_id"))
        .group_by(RoutingDecision.case_id)
        .subquery()
    )
    rows = (
        await session.execute(
            select(ServiceCase, RoutingDecision)
            .outerjoin(latest, latest.c.case_id == ServiceCase.id)
            .outerjoin(RoutingDecision, RoutingDecision.id == latest.c.decision_id)
            .where(ServiceCase.status.in_([CaseStatus.RECEIVED.value, CaseStatus.RETURNED.value]), history.live())
            .order_by(func.coalesce(RoutingDecision.confidence, 0.0), ServiceCase.created_at, ServiceCase.id)
            .limit(limit)
        )
    ).tuples()
    return [(case, decision) for case, decision in rows]


@dataclass(frozen=True)
class RelatedCases:
    """Cases filed as repeats of one another: the open case this one repeats, and its repeats."""

    earlier: ServiceCase | None
    later: list[ServiceCase]


async def related_cases(session: AsyncSession, case: ServiceCase) -> RelatedCases:
    """The case this one was filed beside (the citizen chose 「仍然提交」), and those filed beside it."""
    earlier = await session.get(ServiceCase, case.duplicate_of_id) if case.duplicate_of_id else None
    later = await session.scalars(
        select(ServiceCase).where(ServiceCase.duplicate_of_id == case.id).order_by(ServiceCase.id)
    )
    return RelatedCases(earlier, list(later.all()))


async def timeline(session: AsyncSession, case: ServiceCase) -> list[CaseEvent]:
    rows = await session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id).order_by(CaseEvent.id))
    return list(rows.all())
