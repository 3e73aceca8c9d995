"""The case life cycle: status codes, their Chinese labels, and the operations that move a case.

Codes are English and stored; labels are what citizens and staff read. `CASE_ACTIONS` is the
one table of the life cycle: every allowed status move is some operation's source → target,
and `crm_backend.services.moves.move_case` is the one function that performs them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from crm_backend.errors import InvalidTransition


class CaseStatus(StrEnum):
    """Where a case stands."""

    RECEIVED = "received"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    REVIEWED = "reviewed"
    ARCHIVED = "archived"
    RETURNED = "returned"

    @property
    def label(self) -> str:
        """The status as citizens and staff read it."""
        return STATUS_LABELS[self]


STATUS_LABELS: dict[CaseStatus, str] = {
    CaseStatus.RECEIVED: "已受理",
    CaseStatus.DISPATCHED: "已派单",
    CaseStatus.ACCEPTED: "已签收",
    CaseStatus.IN_PROGRESS: "办理中",
    CaseStatus.RESOLVED: "已办结",
    CaseStatus.REVIEWED: "已回访",
    CaseStatus.ARCHIVED: "已归档",
    CaseStatus.RETURNED: "退回",
}


class Permission(StrEnum):
    """What a member of staff may do; roles hold permissions, checks ask for one by name."""

    SIGN_IN = "sign_in"  # hold a console session: sign out, set up two-factor sign-in
    HANDLE_CASES = "handle_cases"  # conversations, cases, citizens, knowledge, dashboard (own department)
    SUPERVISE = "supervise"  # every department, dispatch, 重办, hot issues, security alerts
    ADMINISTER = "administer"  # staff accounts, departments, routing, API clients, security settings
    READ_AUDIT = "read_audit"  # the audit log

    @property
    def label(self) -> str:
        """The role a refusal names as the one needed."""
        return PERMISSION_LABELS[self]


PERMISSION_LABELS: dict[Permission, str] = {
    Permission.SIGN_IN: "登录",
    Permission.HANDLE_CASES: "坐席",
    Permission.SUPERVISE: "值班长",
    Permission.ADMINISTER: "管理员",
    Permission.READ_AUDIT: "审计员",
}


class Role(StrEnum):
    """A member of staff's role: a set of permissions (`ROLE_PERMISSIONS`), not a rank.

    Agents, supervisors and admins each hold what the one before holds, and more. The
    auditor (三员分立: the system administrator, the security administrator and the auditor
    are different people) holds only the audit log: no case, conversation, citizen,
    dashboard or administration.
    """

    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"
    AUDITOR = "auditor"

    @property
    def label(self) -> str:
        return ROLE_LABELS[self]

    def may(self, permission: Permission) -> bool:
        """Whether this role holds the permission."""
        return permission in ROLE_PERMISSIONS[self]


ROLE_LABELS: dict[Role, str] = {
    Role.AGENT: "坐席",
    Role.SUPERVISOR: "值班长",
    Role.ADMIN: "管理员",
    Role.AUDITOR: "审计员",
}
_CASEWORK = frozenset({Permission.SIGN_IN, Permission.HANDLE_CASES})
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.AGENT: _CASEWORK,
    Role.SUPERVISOR: _CASEWORK | {Permission.SUPERVISE, Permission.READ_AUDIT},
    Role.ADMIN: _CASEWORK | {Permission.SUPERVISE, Permission.READ_AUDIT, Permission.ADMINISTER},
    Role.AUDITOR: frozenset({Permission.SIGN_IN, Permission.READ_AUDIT}),
}


class CaseAction(StrEnum):
    """The operations staff perform on a case; each is one status move."""

    DISPATCH = "dispatch"  # 派单, from the manual queue or after 退回
    REASSIGN = "reassign"  # 改派
    ACCEPT = "accept"  # 签收
    START = "start"  # 开始办理
    RETURN = "return"  # 退回
    RESOLVE = "resolve"  # 办结
    REOPEN = "reopen"  # 重办
    REVIEW = "review"  # 回访
    ARCHIVE = "archive"  # 归档
    CLOSE_UNRATED = "close_unrated"  # 未回访归档: the citizen answered neither the 回访 nor its reminder


class ActionSpec:
    """One operation: where it may start, where it leads, what it needs and who may do it."""

    __slots__ = ("label", "needs_department", "needs_note", "permission", "sources", "system_only", "target")

    def __init__(
        self,
        label: str,
        sources: frozenset[CaseStatus],
        target: CaseStatus,
        *,
        permission: Permission = Permission.HANDLE_CASES,
        needs_note: bool = False,
        needs_department: bool = False,
        system_only: bool = False,
    ) -> None:
        self.label = label
        self.sources = sources
        self.target = target
        self.permission = permission
        self.needs_note = needs_note
        self.needs_department = needs_department
        self.system_only = system_only  # done by the system's own loops, never by a person or a client


_OPEN_AT_DEPARTMENT = frozenset({CaseStatus.DISPATCHED, CaseStatus.ACCEPTED})
CASE_ACTIONS: dict[CaseAction, ActionSpec] = {
    CaseAction.DISPATCH: ActionSpec(
        "派单",
        frozenset({CaseStatus.RECEIVED, CaseStatus.RETURNED}),
        CaseStatus.DISPATCHED,
        permission=Permission.SUPERVISE,
        needs_department=True,
    ),
    CaseAction.REASSIGN: ActionSpec(
        "改派",
        frozenset({CaseStatus.DISPATCHED}),
        CaseStatus.DISPATCHED,
        permission=Permission.SUPERVISE,
        needs_department=True,
    ),
    CaseAction.ACCEPT: ActionSpec("签收", frozenset({CaseStatus.DISPATCHED}), CaseStatus.ACCEPTED),
    CaseAction.START: ActionSpec("开始办理", frozenset({CaseStatus.ACCEPTED}), CaseStatus.IN_PROGRESS),
    CaseAction.RETURN: ActionSpec("退回", _OPEN_AT_DEPARTMENT, CaseStatus.RETURNED, needs_note=True),
    CaseAction.RESOLVE: ActionSpec("办结", frozenset({CaseStatus.IN_PROGRESS}), CaseStatus.RESOLVED, needs_note=True),
    CaseAction.REOPEN: ActionSpec(
        "重办",
        frozenset({CaseStatus.RESOLVED}),
        CaseStatus.IN_PROGRESS,
        permission=Permission.SUPERVISE,
        needs_note=True,
    ),
    CaseAction.REVIEW: ActionSpec("回访完成", frozenset({CaseStatus.RESOLVED}), CaseStatus.REVIEWED),
    CaseAction.ARCHIVE: ActionSpec("归档", frozenset({CaseStatus.REVIEWED}), CaseStatus.ARCHIVED),
    CaseAction.CLOSE_UNRATED: ActionSpec(
        "未回访归档",
        frozenset({CaseStatus.RESOLVED}),
        CaseStatus.ARCHIVED,
        permission=Permission.ADMINISTER,
        system_only=True,
    ),
}
# Cases a department still owes an answer on: these can be overdue, 督办 or extended.
OPEN_STATUSES = frozenset({CaseStatus.DISPATCHED, CaseStatus.ACCEPTED, CaseStatus.IN_PROGRESS})
# Cases answered: 办结 and what follows it (回访, 归档). Only a 重办 moves one back (to 办理中).
CLOSED_STATUSES = frozenset({CaseStatus.RESOLVED, CaseStatus.REVIEWED, CaseStatus.ARCHIVED})


def open311_status(status: CaseStatus | str) -> Literal["open", "closed"]:
    """The case's status in Open311 GeoReport v2's two words (the API and the open data share it).

    Closed once the department has answered (已办结) and after (已回访, 已归档): what the citizen
    was owed has been given. A 重办 moves a case from 已办结 back to 办理中, and it is open again,
    as the specification allows a request to change status. Every other status, 退回 included
    (back in the dispatcher's queue, not answered), is open.

    Raises:
        ValueError: not a status code.
    """
    return "closed" if CaseStatus(status) in CLOSED_STATUSES else "open"


def allowed_moves() -> frozenset[tuple[CaseStatus, CaseStatus]]:
    """Every (from, to) status pair some operation performs: the life cycle as a graph."""
    return frozenset((source, spec.target) for spec in CASE_ACTIONS.values() for source in spec.sources)


def check_action(action: CaseAction, current: CaseStatus, role: Role, *, system: bool = False) -> ActionSpec:
    """The operation's spec, if this role may perform it on a case in this status.

    Args:
        action: the operation.
        current: the case's status now.
        role: whose rules apply (a member of staff's role; API clients and the system's own
            loops act with the role they were given).
        system: True for the system's own loops, the only ones allowed system-only operations.

    Raises:
        InvalidTransition: with a message staff can read (Chinese labels).
    """
    spec = CASE_ACTIONS[action]
    if current not in spec.sources:
        allowed = "、".join(CaseStatus(s).label for s in sorted(spec.sources))
        raise InvalidTransition(f"「{current.label}」的工单不能{spec.label}（只有{allowed}的工单可以）")
    if spec.system_only and not system:
        raise InvalidTransition(f"{spec.label}只能由系统自动进行，不能手动操作")
    if not role.may(spec.permission):
        raise InvalidTransition(f"{role.label}不能{spec.label}，需要{spec.permission.label}权限")
    return spec


def available_actions(current: CaseStatus, role: Role) -> list[CaseAction]:
    """The operations this member of staff may perform now, in life-cycle order."""
    return [
        action
        for action, spec in CASE_ACTIONS.items()
        if current in spec.sources and role.may(spec.permission) and not spec.system_only
    ]
