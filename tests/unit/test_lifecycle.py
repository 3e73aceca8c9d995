"""The case life cycle: which status moves are allowed, and the Chinese labels."""

from __future__ import annotations

import itertools

import pytest

from crm_backend.errors import InvalidTransition
from crm_backend.lifecycle import ALLOWED_TRANSITIONS, STATUS_LABELS, CaseStatus, check_transition

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
        (S.IN_PROGRESS, S.IN_PROGRESS),  # a progress note
        (S.RESOLVED, S.REVIEWED),
        (S.RESOLVED, S.IN_PROGRESS),  # reopened after the follow-up call
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


def test_allowed_transitions_table_matches_the_expected_moves() -> None:
    declared = {(current, target) for current, targets in ALLOWED_TRANSITIONS.items() for target in targets}
    assert declared == EXPECTED_MOVES
    assert set(ALLOWED_TRANSITIONS) == set(CaseStatus)


@pytest.mark.parametrize("move", sorted(EXPECTED_MOVES), ids=pair_id)
def test_allowed_move_is_accepted(move: tuple[CaseStatus, CaseStatus]) -> None:
    check_transition(*move)  # raises InvalidTransition if refused


@pytest.mark.parametrize("move", REFUSED_MOVES, ids=pair_id)
def test_every_other_move_is_refused_naming_both_statuses(move: tuple[CaseStatus, CaseStatus]) -> None:
    current, target = move
    with pytest.raises(InvalidTransition) as caught:
        check_transition(current, target)
    assert str(caught.value) == f"cannot move a case from {current.value} to {target.value}"
    assert caught.value.code == "invalid_transition"


def test_archived_is_final() -> None:
    assert ALLOWED_TRANSITIONS[S.ARCHIVED] == frozenset()


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
