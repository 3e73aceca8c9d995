"""The case life cycle: status codes, their Chinese labels, and the allowed moves.

Codes are English and stored; labels are what citizens and staff read.
"""

from __future__ import annotations

from enum import StrEnum

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

ALLOWED_TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.RECEIVED: frozenset({CaseStatus.DISPATCHED}),
    CaseStatus.DISPATCHED: frozenset({CaseStatus.ACCEPTED, CaseStatus.RETURNED, CaseStatus.DISPATCHED}),
    CaseStatus.ACCEPTED: frozenset({CaseStatus.IN_PROGRESS, CaseStatus.RETURNED}),
    CaseStatus.IN_PROGRESS: frozenset({CaseStatus.RESOLVED, CaseStatus.IN_PROGRESS}),
    CaseStatus.RESOLVED: frozenset({CaseStatus.REVIEWED, CaseStatus.IN_PROGRESS}),
    CaseStatus.REVIEWED: frozenset({CaseStatus.ARCHIVED}),
    CaseStatus.ARCHIVED: frozenset(),
    CaseStatus.RETURNED: frozenset({CaseStatus.DISPATCHED}),
}


def check_transition(current: CaseStatus, target: CaseStatus) -> None:
    """Refuse a move the life cycle does not allow.

    Raises:
        InvalidTransition: with a message naming both statuses.
    """
    if target not in ALLOWED_TRANSITIONS[current]:
        raise InvalidTransition(f"cannot move a case from {current.value} to {target.value}")
