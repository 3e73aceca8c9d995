"""API clients in the staff console: an admin makes one, sees its key once, and revokes it."""

from __future__ import annotations

import re

import pytest

from tests.support.console import ConsoleClient, create_staff
from tests.support.stack import Stack

PAGE = "/admin/api-clients"
_KEY = re.compile(r'id="new-api-key" value="(c12345_[^"]+)"')


def signed_in(stack: Stack, username: str) -> ConsoleClient:
    client = ConsoleClient(stack)
    response = client.login(username)
    assert response.status_code == 200 and client.csrf, response.text[:300]
    return client


@pytest.fixture(scope="module")
def admin(stack: Stack) -> ConsoleClient:
    return signed_in(stack, create_staff(stack, "admin", display_name="管理员"))


def row_of(page: str, name: str) -> str:
    rows = [row for row in page.split("<tr>") if f"<td>{name}</td>" in row]
    assert len(rows) == 1, f"{name} is not listed once"
    return rows[0]


def test_an_admin_creates_a_client_sees_its_key_once_and_revokes_it(stack: Stack, admin: ConsoleClient) -> None:
    created = admin.post(PAGE, {"op": "create", "name": "case-export", "scope": "read"})
    assert created.status_code == 201, created.text[:500]
    assert created.headers["Cache-Control"] == "no-store"
    found = _KEY.search(created.text)
    assert found, "the new key is not shown"
    key = found.group(1)

    listing = admin.get(PAGE).text
    assert key not in listing  # shown once: never again
    prefix = "_".join(key.split("_")[:2])  # c12345_<8 hex>; the secret after it may hold "_" too
    row = row_of(listing, "case-export")
    assert f"<code>{prefix}</code>" in row and "从未使用" in row and "在用" in row

    assert stack.api("GET", "/stats", key=key).status_code == 200
    used = row_of(admin.get(PAGE).text, "case-export")
    assert "从未使用" not in used  # last used is shown

    client_id = re.search(r'name="client_id" value="(\d+)"', used)
    assert client_id
    revoked = admin.post(PAGE, {"op": "revoke", "client_id": client_id.group(1)})
    assert revoked.status_code == 200 and "已吊销 case-export" in revoked.text
    assert "已吊销" in row_of(revoked.text, "case-export")
    refused = stack.api("GET", "/stats", key=key)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"

    audit = signed_in(stack, create_staff(stack, "supervisor")).get("/audit").text
    assert "api_client.create" in audit and "api_client.revoke" in audit


def test_a_taken_name_is_refused_on_the_page(admin: ConsoleClient) -> None:
    assert admin.post(PAGE, {"op": "create", "name": "dup-client", "scope": "write"}).status_code == 201
    again = admin.post(PAGE, {"op": "create", "name": "dup-client", "scope": "write"})
    assert again.status_code == 422 and "已被使用" in again.text and not _KEY.search(again.text)


def test_agents_and_supervisors_cannot_reach_the_page(stack: Stack) -> None:
    for role, department in (("agent", "A-hotline"), ("supervisor", None)):
        member = signed_in(stack, create_staff(stack, role, department))
        assert member.get(PAGE).status_code == 404, role
        refused = member.post(PAGE, {"op": "create", "name": f"by-{role}", "scope": "write"})
        assert refused.status_code == 404 and not _KEY.search(refused.text), role


def test_a_post_without_the_csrf_token_makes_no_client(admin: ConsoleClient) -> None:
    missing = admin.post(PAGE, {"op": "create", "name": "no-csrf", "scope": "write"}, csrf=False)
    assert missing.status_code == 403 and missing.json()["error"] == "csrf"
    forged = admin.post(PAGE, {"op": "create", "name": "no-csrf", "scope": "write", "csrf": "forged"}, csrf=False)
    assert forged.status_code == 403
    assert "no-csrf" not in admin.get(PAGE).text


def test_signed_out_browsers_are_sent_to_sign_in(stack: Stack) -> None:
    assert ConsoleClient(stack).get(PAGE).url.endswith("/console/login")
