"""Knowing the citizen (民众关系管理): one citizen as staff see them, and telling linked citizens.

The segments themselves are in `crm_backend.services.segments`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import InvalidTransition, NotFound
from crm_backend.lifecycle import CaseStatus, Permission, Role
from crm_backend.models import (
    PHONE,
    CaseEvent,
    ChannelIdentity,
    Citizen,
    Conversation,
    HotIssueMember,
    HotIssueSnapshot,
    Satisfaction,
    ServiceCase,
    StaffUser,
    blind_index,
    utcnow,
)
from crm_backend.services import audit
from crm_backend.services.casework import case_scope, visible_case
from crm_backend.services.followup import notices_enabled
from crm_backend.services.segments import (
    Segment,
    hot_issue_case_numbers,
    latest_snapshot_id,
    same_issue_case_numbers,
    segments_of,
)

# The statuses after 办结 in which the 办结 result still stands (重办 makes it stale).
RESOLVED_STATUSES = frozenset({CaseStatus.RESOLVED, CaseStatus.REVIEWED, CaseStatus.ARCHIVED})
LINKED_NOTICE_EVENT = "linked_notice"
MAX_LISTED = 100


@dataclass(frozen=True)
class CitizenHotIssue:
    """A hot issue of the newest ranking that one of the citizen's cases is in."""

    issue_id: str
    description: str
    since: date  # the ranking's window
    until: date
    alert: bool

    @property
    def link(self) -> str:
        """The issue on the console's hot-issue page (supervisors and admins)."""
        window = urlencode({"since": self.since.isoformat(), "until": self.until.isoformat()})
        return f"/console/hot-issues?{window}#issue-{self.issue_id}"


async def citizen_hot_issues(
    session: AsyncSession, citizen_id: int, scope: ColumnElement[bool]
) -> list[CitizenHotIssue]:
    """The issues of the newest hot-issue ranking holding a case of this citizen within `scope`, hottest first.

    Two indexed lookups (the citizen's case numbers in the ranking's members) and one read of
    the stored ranking for the descriptions.
    """
    snapshot_id = await session.scalar(select(latest_snapshot_id()))
    if snapshot_id is None:
        return []
    issue_ids = set(
        (
            await session.scalars(
                select(HotIssueMember.issue_id)
                .join(ServiceCase, ServiceCase.case_number == HotIssueMember.case_number)
                .where(
                    HotIssueMember.snapshot_id == snapshot_id,
                    HotIssueMember.case_number.in_(hot_issue_case_numbers()),
                    ServiceCase.citizen_id == citizen_id,
                    scope,
                )
            )
        ).all()
    )
    if not issue_ids:
        return []
    snapshot = await session.get(HotIssueSnapshot, snapshot_id)
    if snapshot is None:  # replaced between the two reads
        return []
    return [
        CitizenHotIssue(
            str(data["issue_id"]), str(data["description"]), snapshot.since, snapshot.until, bool(data["alert"])
        )
        for data in snapshot.issues
        if data["issue_id"] in issue_ids
    ]


@dataclass(frozen=True)
class CitizenProfile:
    """What staff see of one citizen."""

    citizen: Citizen
    identities: list[ChannelIdentity]
    conversations: list[Conversation]
    cases: list[ServiceCase]
    ratings: list[tuple[Satisfaction, str]]  # each with its case number
    open_cases: list[ServiceCase]  # not yet 办结 (or reopened)
    segments: list[Segment]
    hot_issues: list[CitizenHotIssue]  # the hot issues the citizen's (visible) cases are in


async def citizen_profile(
    session: AsyncSession, user: StaffUser, citizen_id: int, *, address: str = "", now: datetime | None = None
) -> CitizenProfile:
    """One citizen as staff see them; the view is audited.

    Supervisors and admins see every citizen and all their cases; an agent only a citizen with a
    case in the agent's department, and of their cases only the department's.

    Raises:
        NotFound: no such citizen, or one this agent may not see (the two are never told apart).
    """
    now = now or utcnow()
    citizen = await session.get(Citizen, citizen_id)
    scope = case_scope(user)
    # Supervisors and admins see any citizen, one with only chats and no case too.
    visible = citizen is not None and (
        Role(user.role).may(Permission.SUPERVISE)
        or bool(
            await session.scalar(select(func.count(ServiceCase.id)).where(ServiceCase.citizen_id == citizen_id, scope))
        )
    )
    if citizen is None or not visible:
        raise NotFound("citizen")
    identities = list(
        (
            await session.scalars(
                select(ChannelIdentity).where(ChannelIdentity.citizen_id == citizen_id).order_by(ChannelIdentity.id)
            )
        ).all()
    )
    conversations = list(
        (
            await session.scalars(
                select(Conversation)
                .where(Conversation.identity_id.in_([identity.id for identity in identities]))
                .order_by(Conversation.last_message_at.desc())
                .limit(MAX_LISTED)
            )
        ).all()
    )
    cases = list(
        (
            await session.scalars(
                select(ServiceCase)
                .where(ServiceCase.citizen_id == citizen_id, scope)
                .order_by(ServiceCase.id.desc())
                .limit(MAX_LISTED)
            )
        ).all()
    )
    ratings = [
        (rating, number)
        for rating, number in (
            await session.execute(
                select(Satisfaction, ServiceCase.case_number)
                .join(ServiceCase, ServiceCase.id == Satisfaction.case_id)
                .where(ServiceCase.citizen_id == citizen_id, scope)
                .order_by(Satisfaction.created_at.desc())
                .limit(MAX_LISTED)
            )
        ).all()
    ]
    open_cases = [one for one in cases if CaseStatus(one.status) not in RESOLVED_STATUSES]  # 受理 to 办理中, 退回
    segments = await segments_of(session, citizen_id, as_of=now)
    hot_issues = await citizen_hot_issues(session, citizen_id, scope)
    audit.record(session, user, "citizen.view", f"citizen:{citizen_id}", address=address)
    return CitizenProfile(citizen, identities, conversations, cases, ratings, open_cases, segments, hot_issues)


# --- proactive service: telling the citizens of linked cases ------------------------------


class LinkedNotices(Protocol):
    """Who writes and pushes the notice to a linked case's citizen (the app's `CaseFollowup`):
    `record_linked` writes it to the citizen's conversation in the caller's transaction,
    `deliver` pushes it after the commit."""

    async def record_linked(self, session: AsyncSession, case: ServiceCase, lead: ServiceCase, result: str) -> Any: ...

    def deliver(self, notice: Any) -> None: ...


@dataclass(frozen=True)
class LinkedNotification:
    """What 「通知关联市民」 did: the notices to push, and who was told, skipped or told before."""

    notices: list[Any]
    told: list[str]  # case numbers whose citizen was told now
    already: list[str]  # told by an earlier click
    opted_out: list[str]  # the citizen turned notices off (「不要再通知我」)


async def resolution_result(session: AsyncSession, case: ServiceCase) -> str | None:
    """The 办结 result the citizen is owed: the note of the case's latest move to 已办结."""
    note = await session.scalar(
        select(CaseEvent.note)
        .where(
            CaseEvent.case_id == case.id,
            CaseEvent.kind == "status",
            CaseEvent.to_status == CaseStatus.RESOLVED.value,
        )
        .order_by(CaseEvent.id.desc())
        .limit(1)
    )
    return note.strip() if note and note.strip() else None


async def citizens_with_phone(session: AsyncSession, phone: str) -> list[int]:
    """The ids of the citizens known by this phone number, their own or on one of their cases.

    Phones are encrypted at rest: found through their blind indexes (exact number, as
    `normalise_mobile` gives it), for access and erasure requests.
    """
    index = blind_index(phone.strip(), PHONE)
    if index is None:
        return []
    own = select(Citizen.id).where(Citizen.phone_index == index)
    on_cases = select(ServiceCase.citizen_id).where(ServiceCase.contact_phone_index == index)
    return sorted(set((await session.scalars(own.union(on_cases))).all()))


def linked_cases(lead: ServiceCase) -> Select[tuple[ServiceCase]]:
    """The cases whose citizens 「通知关联市民」 tells of `lead`'s result, oldest first.

    Two kinds, each case once: those filed as repeats of the lead (the citizen chose
    「仍然提交」), and the other cases in the lead's issue of the newest hot-issue ranking (less
    the messages marked 不属于此问题 since). Never the lead itself. The case page's card counts
    these and the action tells them, so both always agree.
    """
    return (
        select(ServiceCase)
        .where(
            or_(
                ServiceCase.duplicate_of_id == lead.id,
                ServiceCase.case_number.in_(same_issue_case_numbers(lead.case_number)),
            ),
            ServiceCase.id != lead.id,
        )
        .order_by(ServiceCase.id)
    )


async def linked_case_count(session: AsyncSession, lead: ServiceCase) -> int:
    """How many cases `linked_cases` gives for `lead` (the case page's card)."""
    return await session.scalar(select(func.count()).select_from(linked_cases(lead).order_by(None).subquery())) or 0


async def notify_linked_citizens(
    session: AsyncSession, user: StaffUser, case_number: str, notices: LinkedNotices, *, address: str = ""
) -> LinkedNotification:
    """「通知关联市民」: tell the citizen of every case linked to this 办结 case its result.

    Linked are the cases filed as repeats of it and the other cases in its issue of the newest
    hot-issue ranking (`linked_cases`). Cases of the issue still open are told too, since the
    problem is solved, but their own case stays as it is: telling is not closing, and a case's
    status changes only through `move_case`. Each linked case's citizen is told once, on that
    case's channel (their current conversation), with `utter_linked_case_resolved_notice`; the
    linked case's timeline records it against this lead, which is what makes a second click tell
    no one again (a case told of another lead's result is still told of this one). A citizen
    with several linked cases gets one notice. Runs in the caller's transaction; the caller
    pushes `notices` after the commit.

    Raises:
        NotFound: the case is not visible to this member of staff.
        InvalidTransition: the case is not 办结 (or was reopened), has no 办结 result, or has no linked case.
    """
    lead = await visible_case(session, user, case_number)
    result = await resolution_result(session, lead)
    if CaseStatus(lead.status) not in RESOLVED_STATUSES or result is None:
        raise InvalidTransition("只有已办结并填写了办理结果的工单才能通知关联市民")
    linked = list((await session.scalars(linked_cases(lead))).all())
    if not linked:
        raise InvalidTransition("这个工单没有关联工单")
    # Notes are encrypted at rest: the linked cases' notice events are read and matched here.
    notice_events = await session.execute(
        select(CaseEvent.case_id, CaseEvent.note).where(
            CaseEvent.case_id.in_([one.id for one in linked]), CaseEvent.kind == LINKED_NOTICE_EVENT
        )
    )
    told_before = {case_id for case_id, note in notice_events.all() if _resolved_mark(lead) in note}
    outcome = LinkedNotification([], [], [], [])
    citizens_told: set[int] = set()
    for one in linked:
        if one.id in told_before:
            outcome.already.append(one.case_number)
            continue
        if not await notices_enabled(session, one.citizen_id):
            outcome.opted_out.append(one.case_number)
            note = f"{_resolved_mark(lead)}；市民已关闭通知，未发送"
        else:
            if one.citizen_id not in citizens_told:
                outcome.notices.append(await notices.record_linked(session, one, lead, result))
                citizens_told.add(one.citizen_id)
            outcome.told.append(one.case_number)
            note = f"已告知市民：{_resolved_mark(lead)}"
        session.add(_linked_event(one, user, note))
    if outcome.told or outcome.opted_out:
        session.add(
            _linked_event(lead, user, f"通知关联市民：{'、'.join(outcome.told) or '无'}" + _skipped(outcome.opted_out))
        )
    audit.record(
        session,
        user,
        "case.notify_linked",
        lead.case_number,
        f"told {','.join(outcome.told) or '-'}; before {','.join(outcome.already) or '-'}; "
        f"opted out {','.join(outcome.opted_out) or '-'}",
        address=address,
    )
    return outcome


def _resolved_mark(lead: ServiceCase) -> str:
    """What a linked case's 通知关联市民 event says of its lead: how a second click knows it was told."""
    return f"工单 {lead.case_number} 已办结"


def _skipped(numbers: list[str]) -> str:
    return f"（{'、'.join(numbers)} 的市民已关闭通知）" if numbers else ""


def _linked_event(case: ServiceCase, user: StaffUser, note: str) -> CaseEvent:
    return CaseEvent(
        case_id=case.id,
        from_status=case.status,
        to_status=case.status,
        kind=LINKED_NOTICE_EVENT,
        note=note,
        actor=user.display_name[:64],
        actor_id=user.id,
    )
