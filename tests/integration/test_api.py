"""The CRM API: one key per client, scoped, audited, masked, and strict about the case life cycle."""

from __future__ import annotations

import sqlite3

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


WRITES = [(method, path) for method, path in ROUTES if method == "POST"]
UNKNOWN_KEY = "c12345_0badc0de_" + "x" * 43


def database(stack: Stack) -> sqlite3.Connection:
    assert stack.database_url is not None and stack.database_url.startswith("sqlite:///")
    return sqlite3.connect(stack.database_url.removeprefix("sqlite:///"))


def audit_rows(stack: Stack, actor: str) -> list[tuple[str, str]]:
    """(action, target) of the audit rows written under an actor's name, oldest first."""
    with database(stack) as connection:
        return connection.execute(
            "SELECT action, target FROM audit_entry WHERE actor = ? ORDER BY id", (actor,)
        ).fetchall()


def revoke(stack: Stack, name: str) -> None:
    with database(stack) as connection:
        connection.execute("UPDATE api_client SET revoked_at = CURRENT_TIMESTAMP WHERE name = ?", (name,))


@pytest.fixture(scope="module")
def reader_key(stack: Stack) -> str:
    return stack.create_api_client("dashboard", "read")


@pytest.fixture(scope="module")
def revoked_key(stack: Stack) -> str:
    key = stack.create_api_client("retired-sync", "write")
    assert stack.api("GET", "/stats", key=key).status_code == 200
    revoke(stack, "retired-sync")
    return key


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_api_route_refuses_a_caller_without_a_key(stack: Stack, method: str, path: str) -> None:
    resp = requests.request(method, f"{stack.app_url}/api/v1{path}", json={}, timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"
    assert resp.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_api_route_refuses_an_unknown_or_revoked_key(
    stack: Stack, revoked_key: str, method: str, path: str
) -> None:
    for key in (UNKNOWN_KEY, revoked_key, "not-a-key"):
        resp = stack.api(method, path, key=key, json={})
        assert resp.status_code == 401, (key, resp.text)
        assert resp.json()["error"] == "unauthorized"


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_a_read_client_is_refused_every_change(stack: Stack, reader_key: str, method: str, path: str) -> None:
    resp = stack.api(method, path, key=reader_key, json={"action": "accept"})
    assert resp.status_code == 403
    assert resp.json()["error"] == "forbidden"


def test_a_read_client_reads_and_its_case_reads_are_audited_under_its_name(
    stack: Stack, sender: str, reader_key: str
) -> None:
    case_number = file_report(stack, sender)
    resp = stack.api("GET", f"/cases/{case_number}", key=reader_key)
    assert resp.status_code == 200 and resp.json()["case_number"] == case_number
    listed = stack.api("GET", "/cases", key=reader_key, params={"limit": 5})
    assert listed.status_code == 200
    rows = audit_rows(stack, "api:dashboard")
    assert ("case.view", case_number) in rows
    assert any(action == "case.list" for action, _ in rows)


def test_a_write_client_moves_a_case_under_its_own_name(stack: Stack, sender: str) -> None:
    key = stack.create_api_client("ticket-sync", "write")
    case_number = file_report(stack, sender)
    routed = stack.api("GET", f"/cases/{case_number}", key=key).json()
    action = "reassign" if routed["status"] == "dispatched" else "dispatch"
    moved = stack.api(
        "POST",
        f"/cases/{case_number}/transitions",
        key=key,
        json={"action": action, "department": "A3-commerce", "note": "转办"},
    )
    assert moved.status_code == 200, moved.text
    body = moved.json()
    assert (body["status"], body["department"]) == ("dispatched", "A3区商务局") and body["due_at"]
    events = stack.api("GET", f"/cases/{case_number}", key=key).json()["events"]
    assert events[-1]["actor"] == "api:ticket-sync" and events[-1]["to"] == "dispatched"
    assert (f"case.{action}", case_number) in audit_rows(stack, "api:ticket-sync")


def test_the_caller_cannot_name_the_actor_of_a_transition(stack: Stack, sender: str) -> None:
    case_number = file_report(stack, sender)
    resp = stack.api("POST", f"/cases/{case_number}/transitions", json={"action": "accept", "actor": "王局长"})
    assert resp.status_code == 422
    assert stack.api("GET", f"/cases/{case_number}").json()["status"] in ("received", "dispatched")
    assert "王局长" not in str(stack.api("GET", f"/cases/{case_number}").json()["events"])


def test_a_call_records_when_the_client_was_last_used(stack: Stack) -> None:
    key = stack.create_api_client("night-report", "read")
    with database(stack) as connection:
        query = "SELECT last_used_at FROM api_client WHERE name = 'night-report'"
        assert connection.execute(query).fetchone() == (None,)
        assert stack.api("GET", "/stats", key=key).status_code == 200
        assert connection.execute(query).fetchone()[0] is not None


def test_a_key_printed_by_the_cli_works_against_the_api(stack: Stack) -> None:
    key = stack.create_api_client("cli-made", "read")
    assert key.startswith("c12345_")
    assert stack.api("GET", "/stats", key=key).status_code == 200


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


def test_reading_a_conversations_messages_is_audited_under_the_clients_name(
    stack: Stack, sender: str, reader_key: str
) -> None:
    stack.rest(sender, "你好")
    with database(stack) as connection:
        (conversation_id,) = connection.execute(
            "SELECT conversation.id FROM conversation JOIN channel_identity ON channel_identity.id = "
            "conversation.identity_id WHERE channel_identity.external_id = ?",
            (sender,),
        ).fetchone()
    resp = stack.api("GET", f"/conversations/{conversation_id}/messages", key=reader_key)
    assert resp.status_code == 200 and resp.json()["messages"][0]["text"] == "你好"
    assert ("conversation.view", f"conversation:{conversation_id}") in audit_rows(stack, "api:dashboard")
