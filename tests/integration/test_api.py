"""The CRM API: authenticated, masked, and strict about the case life cycle."""

from __future__ import annotations

import pytest
import requests

from tests.integration.test_rest_channel import file_report
from tests.support.stack import Stack

ROUTES = [
    ("GET", "/stats"),
    ("GET", "/cases"),
    ("GET", "/cases/20261124-0001"),
    ("POST", "/cases/20261124-0001/transitions"),
    ("GET", "/conversations"),
    ("GET", "/conversations/1/messages"),
    ("POST", "/conversations/1/replies"),
    ("POST", "/conversations/1/release"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_api_route_refuses_a_caller_without_the_token(stack: Stack, method: str, path: str) -> None:
    resp = requests.request(method, f"{stack.app_url}/api/v1{path}", json={}, timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"


def test_case_list_masks_phone_numbers(stack: Stack, sender: str) -> None:
    case_number = file_report(stack, sender, phone="13612345678")
    cases = stack.api("GET", "/cases", params={"limit": 200}).json()["cases"]
    listed = next(case for case in cases if case["case_number"] == case_number)
    assert listed["contact_phone"] == "136****5678"
    assert "13612345678" not in str(cases)


def test_invalid_transition_is_refused_with_409_and_changes_nothing(stack: Stack, sender: str) -> None:
    case_number = file_report(stack, sender)
    resp = stack.api("POST", f"/cases/{case_number}/transitions", json={"action": "archive"})
    assert resp.status_code == 409
    assert resp.json()["error"] == "invalid_transition"
    assert stack.api("GET", f"/cases/{case_number}").json()["status"] in ("received", "dispatched")


@pytest.mark.parametrize(
    "body",
    [
        {"to": "archived"},  # a raw status: moves are named operations now
        {"action": "accept", "actor": "someone else"},  # the actor is the API client, not free text
        {"action": "close_unrated"},  # only the 回访 loop archives an unrated case
        {"action": "dispatch", "department": "no-such-department"},
    ],
    ids=["raw-status", "free-text-actor", "system-only", "unknown-department"],
)
def test_a_transition_outside_the_rules_is_refused_and_changes_nothing(
    stack: Stack, sender: str, body: dict[str, str]
) -> None:
    case_number = file_report(stack, sender)
    before = stack.api("GET", f"/cases/{case_number}").json()
    resp = stack.api("POST", f"/cases/{case_number}/transitions", json=body)
    assert resp.status_code in (409, 422), resp.text
    after = stack.api("GET", f"/cases/{case_number}").json()
    assert (after["status"], after["events"]) == (before["status"], before["events"])


def test_unknown_case_and_bad_status_are_json_errors(stack: Stack) -> None:
    assert stack.api("GET", "/cases/19990101-0001").status_code == 404
    assert stack.api("GET", "/cases", params={"status": "nonsense"}).status_code == 422
    assert stack.api("GET", "/cases", params={"limit": "many"}).status_code == 422
    assert stack.api("GET", "/conversations/abc/messages").status_code == 404


def test_stats_count_cases_by_status(stack: Stack, sender: str) -> None:
    before = stack.api("GET", "/stats").json()
    file_report(stack, sender)
    after = stack.api("GET", "/stats").json()
    assert after["cases"] == before["cases"] + 1
    gained = {k: after["cases_by_status"][k] - v for k, v in before["cases_by_status"].items()}
    assert sorted(gained.values()) == [0] * (len(gained) - 1) + [1]
    assert after["messages"] > before["messages"]
