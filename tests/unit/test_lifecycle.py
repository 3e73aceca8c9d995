"""The case life cycle: which status moves are allowed, and the Chinese labels."""

from __future__ import annotations

import itertools

import pytest

from crm_backend.errors import InvalidTransition
from crm_backend.lifecycle import (
    CASE_ACTIONS,
    ROLE_PERMISSIONS,
    STATUS_LABELS,
    CaseAction,
    CaseStatus,
    Permission,
    Role,
    allowed_moves,
    available_actions,
    check_action,
    open311_status,
)

S = CaseStatus

# Written out by hand, so a change to the life cycle has to change this test too.
EXPECTED_MOVES: frozenset[tuple[CaseStatus, CaseStatus]] = frozenset(
    {
        (S.RECEIVED, S.DISPATCHED),
        (S.DISPATCHED, S.ACCEPTED),
        (S.DISPATCHED, S.RETURNED),
        (S.DISPATCHED, S.DISPATCHED),  # re-dispatch to another department
        (S.ACCEPTED, S.IN_PROGRESS),
        (S.ACCEPTED, S.RETURNED),
        (S.IN_PROGRESS, S.RESOLVED),
        (S.RESOLVED, S.REVIEWED),
        (S.RESOLVED, S.IN_PROGRESS),  # reopened after the follow-up call
        (S.RESOLVED, S.ARCHIVED),  # 未回访: no answer to the follow-up nor its reminder
        (S.REVIEWED, S.ARCHIVED),
        (S.RETURNED, S.DISPATCHED),
    }
)
ALL_PAIRS = list(itertools.product(CaseStatus, CaseStatus))
REFUSED_MOVES = [pair for pair in ALL_PAIRS if pair not in EXPECTED_MOVES]


def pair_id(pair: tuple[CaseStatus, CaseStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_the_matrix_covers_every_pair_of_statuses() -> None:
    assert len(ALL_PAIRS) == 64
    assert len(REFUSED_MOVES) == 64 - len(EXPECTED_MOVES)


def test_the_operations_table_makes_exactly_the_expected_moves() -> None:
    assert allowed_moves() == EXPECTED_MOVES


@pytest.mark.parametrize("move", REFUSED_MOVES, ids=pair_id)
def test_no_operation_makes_any_other_move(move: tuple[CaseStatus, CaseStatus]) -> None:
    current, target = move
    for action, spec in CASE_ACTIONS.items():
        if spec.target is target:
            with pytest.raises(InvalidTransition) as caught:
                check_action(action, current, Role.ADMIN, system=True)
            assert caught.value.code == "invalid_transition"


def test_archived_is_final() -> None:
    assert not [action for action, spec in CASE_ACTIONS.items() if S.ARCHIVED in spec.sources]


@pytest.mark.parametrize(
    ("status", "code", "label"),
    [
        (S.RECEIVED, "received", "已受理"),
        (S.DISPATCHED, "dispatched", "已派单"),
        (S.ACCEPTED, "accepted", "已签收"),
        (S.IN_PROGRESS, "in_progress", "办理中"),
        (S.RESOLVED, "resolved", "已办结"),
        (S.REVIEWED, "reviewed", "已回访"),
        (S.ARCHIVED, "archived", "已归档"),
        (S.RETURNED, "returned", "退回"),
    ],
)
def test_each_status_has_an_english_code_and_a_chinese_label(status: CaseStatus, code: str, label: str) -> None:
    assert status.value == code
    assert CaseStatus(code) is status
    assert status.label == label
    assert STATUS_LABELS[status] == label


def test_labels_cover_every_status_and_are_distinct() -> None:
    assert set(STATUS_LABELS) == set(CaseStatus)
    assert len(set(STATUS_LABELS.values())) == len(CaseStatus)


# --- named operations and who may perform them ------------------------------------------

A, Sup, Adm = Role.AGENT, Role.SUPERVISOR, Role.ADMIN
# (operation, from status) → (target, lowest role allowed), written out by hand.
EXPECTED_OPERATIONS: dict[tuple[CaseAction, CaseStatus], tuple[CaseStatus, Role]] = {
    (CaseAction.DISPATCH, S.RECEIVED): (S.DISPATCHED, Sup),
    (CaseAction.DISPATCH, S.RETURNED): (S.DISPATCHED, Sup),
    (CaseAction.REASSIGN, S.DISPATCHED): (S.DISPATCHED, Sup),
    (CaseAction.ACCEPT, S.DISPATCHED): (S.ACCEPTED, A),
    (CaseAction.START, S.ACCEPTED): (S.IN_PROGRESS, A),
    (CaseAction.RETURN, S.DISPATCHED): (S.RETURNED, A),
    (CaseAction.RETURN, S.ACCEPTED): (S.RETURNED, A),
    (CaseAction.RESOLVE, S.IN_PROGRESS): (S.RESOLVED, A),
    (CaseAction.REOPEN, S.RESOLVED): (S.IN_PROGRESS, Sup),
    (CaseAction.REVIEW, S.RESOLVED): (S.REVIEWED, A),
    (CaseAction.ARCHIVE, S.REVIEWED): (S.ARCHIVED, A),
}
# Done only by the system's own loops: 未回访 archiving.
SYSTEM_OPERATIONS: dict[tuple[CaseAction, CaseStatus], CaseStatus] = {
    (CaseAction.CLOSE_UNRATED, S.RESOLVED): S.ARCHIVED
}
EVERY_OPERATION = list(itertools.product(CaseAction, CaseStatus, Role))
# Who may do what an operation's named role may: the roles above it too; never the auditor.
PERFORMED_BY: dict[Role, set[Role]] = {A: {A, Sup, Adm}, Sup: {Sup, Adm}}


def operation_id(item: tuple[CaseAction, CaseStatus, Role]) -> str:
    return f"{item[0].value}@{item[1].value}-by-{item[2].value}"


@pytest.mark.parametrize("item", EVERY_OPERATION, ids=operation_id)
def test_each_operation_is_allowed_exactly_where_expected(item: tuple[CaseAction, CaseStatus, Role]) -> None:
    action, status, role = item
    expected = EXPECTED_OPERATIONS.get((action, status))
    if expected is not None and role in PERFORMED_BY[expected[1]]:
        spec = check_action(action, status, role)
        assert spec.target == expected[0]
        assert action in available_actions(status, role)
    else:
        with pytest.raises(InvalidTransition) as refused:
            check_action(action, status, role)
        assert "不能" in str(refused.value)  # a reason staff can read
        assert action not in available_actions(status, role)


@pytest.mark.parametrize("status", list(CaseStatus), ids=str)
def test_system_only_operations_are_refused_to_every_role_and_allowed_to_the_system(status: CaseStatus) -> None:
    for (action, source), target in SYSTEM_OPERATIONS.items():
        for role in Role:
            with pytest.raises(InvalidTransition):
                check_action(action, status, role)
            assert action not in available_actions(status, role)
        if status is source:
            assert check_action(action, status, Role.ADMIN, system=True).target is target
        else:
            with pytest.raises(InvalidTransition):
                check_action(action, status, Role.ADMIN, system=True)


def test_return_and_resolve_and_reopen_need_a_reason_and_dispatch_a_department() -> None:
    assert {a for a, spec in CASE_ACTIONS.items() if spec.needs_note} == {
        CaseAction.RETURN,
        CaseAction.RESOLVE,
        CaseAction.REOPEN,
    }
    assert {a for a, spec in CASE_ACTIONS.items() if spec.needs_department} == {
        CaseAction.DISPATCH,
        CaseAction.REASSIGN,
    }


def test_working_roles_nest_and_the_auditor_holds_only_the_audit_log() -> None:
    assert ROLE_PERMISSIONS[A] < ROLE_PERMISSIONS[Sup] < ROLE_PERMISSIONS[Adm]
    assert ROLE_PERMISSIONS[Role.AUDITOR] == {Permission.SIGN_IN, Permission.READ_AUDIT}
    auditor = Role.AUDITOR
    assert auditor.may(Permission.READ_AUDIT)
    assert not any(auditor.may(p) for p in (Permission.HANDLE_CASES, Permission.SUPERVISE, Permission.ADMINISTER))
    assert not A.may(Permission.READ_AUDIT) and Sup.may(Permission.READ_AUDIT)


# Open311's two states, by hand: 办结 and after are closed (a 重办 makes the case open again);
# every status before 办结, and 退回 (back in the dispatcher's queue), is open.
OPEN311: dict[CaseStatus, str] = {
    S.RECEIVED: "open",
    S.DISPATCHED: "open",
    S.ACCEPTED: "open",
    S.IN_PROGRESS: "open",
    S.RETURNED: "open",
    S.RESOLVED: "closed",
    S.REVIEWED: "closed",
    S.ARCHIVED: "closed",
}


@pytest.mark.parametrize(("status", "expected"), sorted(OPEN311.items()))
def test_each_status_maps_to_open311_open_or_closed(status: CaseStatus, expected: str) -> None:
    assert open311_status(status) == expected
    assert open311_status(status.value) == expected


def test_the_open311_mapping_covers_every_status() -> None:
    assert set(OPEN311) == set(CaseStatus)


def test_a_reopened_case_is_open_again_in_open311() -> None:
    reopen = CASE_ACTIONS[CaseAction.REOPEN]
    assert all(open311_status(source) == "closed" for source in reopen.sources)
    assert open311_status(reopen.target) == "open"


def test_an_unknown_status_code_is_refused_by_the_open311_mapping() -> None:
    with pytest.raises(ValueError):
        open311_status("lost")
