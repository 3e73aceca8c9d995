"""The staff console over HTTP against the running app: sign-in, CSRF, roles, escaping, live events."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from html import unescape
from typing import Any, TypeVar

import aiohttp
import pytest
import requests
from sqlalchemy import select

from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.dispatch.classifier import CategoryPrediction
from crm_backend.dispatch.routing import apply_dispatch, plan_dispatch
from crm_backend.models import AuditEntry, Department, ServiceCase
from crm_backend.services import staff
from crm_backend.services.conversations import current_conversation, log_incoming, resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.settings import normalise_database_url
from tests.support.console import PASSWORD, ConsoleClient, create_staff
from tests.support.naming import unique
from tests.support.stack import Stack

MARKUP = '<img src=x onerror="window.__xss=1"><script>alert(1)</script>'
DRAFT_PHONE = "13912345678"
T = TypeVar("T")


async def file_case_for(stack: Stack, department_code: str | None, text: str = "路灯坏了") -> tuple[str, int]:
    """A case filed straight through the CRM service, dispatched to the department or, for None,
    waiting in the manual dispatch queue; (number, conversation id)."""
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine).begin() as session:
            identity = await resolve_identity(session, "web", unique("console"))
            conversation = await current_conversation(session, identity)
            log_incoming(session, conversation, text, max_chars=10_000)
            case = await file_case(
                session,
                identity,
                Report(description=text, location="A1区解放路", contact_phone="13812345678", district="A1区"),
                conversation_id=conversation.id,
            )
            case.category = "城乡建设"
            if department_code is not None:
                department = await session.scalar(select(Department).where(Department.code == department_code))
                assert department is not None
                case.department_id, case.department, case.status = department.id, department.name, "dispatched"
            return case.case_number, conversation.id
    finally:
        await engine.dispose()


async def routed_case_for(stack: Stack, text: str = "解放路的路灯坏了") -> str:
    """A case the bot files and the routing table sends (城乡建设 × A1区) to A1区's housing
    department, as a citizen's report goes; its number."""
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine).begin() as session:
            identity = await resolve_identity(session, "web", unique("routed"))
            conversation = await current_conversation(session, identity)
            report = Report(description=text, location="A1区解放路", contact_phone="13812345678", district="A1区")
            case = await file_case(session, identity, report, conversation_id=conversation.id)
            await session.flush()
            prediction = CategoryPrediction.from_probabilities({"城乡建设": 0.9, "环境保护": 0.1}, threshold=0.5)
            plan = await plan_dispatch(
                session, prediction=prediction, model_version="test-model", district="A1区", urgent=False
            )
            await apply_dispatch(session, case, plan)
            return case.case_number
    finally:
        await engine.dispose()


def routed_case_now(stack: Stack) -> str:
    """`routed_case_for` from synchronous code, even where an event loop is running (Playwright)."""
    return run_now(routed_case_for(stack))


def resolve_through_the_console(client: ConsoleClient, number: str) -> None:
    """签收, 开始办理, 办结: the moves that leave `in_progress → resolved` in the audit log."""
    for action in ("accept", "start", "resolve"):
        moved = client.post(f"/cases/{number}/action", {"action": action, "note": "路灯已修复"})
        assert moved.status_code == 200, (action, moved.text[:300])


def visible_text(html: str) -> str:
    """What a page shows: its text without the head, tags and attributes (titles, values)."""
    body = re.sub(r"<(script|style|head)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", body)))


def file_case_now(stack: Stack, department_code: str | None, text: str = "路灯坏了") -> tuple[str, int]:
    """`file_case_for` from synchronous code, even where an event loop is running (Playwright)."""
    return run_now(file_case_for(stack, department_code, text))


def run_now(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from synchronous code, even where an event loop is running (Playwright)."""
    with ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, work).result()


async def citizen_with_cases(stack: Stack, external_id: str, department_codes: list[str]) -> tuple[list[str], int]:
    """One web-chat citizen, one conversation, and a case from it dispatched to each department;
    (case numbers, conversation id)."""
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine).begin() as session:
            identity = await resolve_identity(session, "web", external_id)
            conversation = await current_conversation(session, identity)
            log_incoming(session, conversation, "路灯坏了，井盖也丢了", max_chars=10_000)
            numbers = []
            for code in department_codes:
                case = await file_case(
                    session,
                    identity,
                    Report(description=f"{code} 的问题", location="A1区解放路", contact_phone="13812345678"),
                    conversation_id=conversation.id,
                )
                department = await session.scalar(select(Department).where(Department.code == code))
                assert department is not None
                case.department_id, case.department, case.status = department.id, department.name, "dispatched"
                numbers.append(case.case_number)
            return numbers, conversation.id
    finally:
        await engine.dispose()


async def read_database(stack: Stack, statement: Any) -> list[Any]:
    engine = create_engine(normalise_database_url(str(stack.database_url)))
    try:
        async with create_sessionmaker(engine)() as session:
            return list((await session.scalars(statement)).all())
    finally:
        await engine.dispose()


def set_slots(stack: Stack, sender_id: str, slots: dict[str, str]) -> None:
    """What the bot collected, set in the real engine's tracker (as the report form would)."""
    # The app's client sends the id with ":" as it is (yarl undoes %3A), so the tracker is keyed so.
    response = requests.post(
        f"{stack.engine_url}/conversations/{sender_id}/tracker/events",
        headers=stack.engine_api_headers(),
        json=[{"event": "slot", "name": name, "value": value} for name, value in slots.items()],
        timeout=30,
    )
    assert response.status_code == 200, response.text


def citizen_with_a_draft(stack: Stack, external_id: str) -> tuple[str, str, int]:
    """A citizen with a case in A-housing and one in A-transport from the same conversation, and a
    report the bot collected (with the phone `DRAFT_PHONE`); (housing case, transport case, conversation id)."""
    (housing_case, transport_case), conversation_id = run_now(
        citizen_with_cases(stack, external_id, ["A-housing", "A-transport"])
    )
    set_slots(
        stack,
        f"web:{external_id}",
        {"description": "路灯坏了好几天", "location": "A1区解放路18号", "contact_phone": DRAFT_PHONE},
    )
    return housing_case, transport_case, conversation_id


@pytest.fixture(scope="module")
def accounts(stack: Stack) -> dict[str, str]:
    return {
        "housing": create_staff(stack, "agent", "A-housing", "住建李"),
        "transport": create_staff(stack, "agent", "A-transport", "交通赵"),
        "supervisor": create_staff(stack, "supervisor", None, "值班王"),
        "admin": create_staff(stack, "admin", None, "管理员"),
    }


def signed_in(stack: Stack, username: str) -> ConsoleClient:
    client = ConsoleClient(stack)
    response = client.login(username)
    assert response.status_code == 200 and client.csrf, response.text[:300]
    return client


def test_sign_in_sets_a_strict_http_only_cookie_and_pages_carry_a_csp(stack: Stack, accounts: dict[str, str]) -> None:
    client = ConsoleClient(stack)
    login_page = client.get("/login")
    assert "default-src 'none'" in login_page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in login_page.headers["Content-Security-Policy"]
    response = client.login(accounts["supervisor"])  # password, then the second factor
    assert client.password_step is not None
    cookie_header = client.password_step.history[0].headers["Set-Cookie"]
    session_cookie = next(part for part in cookie_header.split(", console") if "console_session=" in part)
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie and "Path=/console" in session_cookie
    assert response.url.endswith("/console/inbox")
    assert "值班王" in response.text
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", response.text)  # no inline event handlers


def test_a_page_without_a_session_leads_to_the_sign_in_page(stack: Stack) -> None:
    client = ConsoleClient(stack)
    response = client.get("/cases")
    assert response.url.endswith("/console/login") and "登录" in response.text
    fetch = client.http.get(f"{client.base}/inbox/rows", headers={"Accept": "*/*"}, timeout=10)
    assert fetch.status_code == 401 and fetch.json()["error"] == "unauthorized"


def test_wrong_passwords_are_refused_then_throttled(stack: Stack) -> None:
    username = create_staff(stack, "supervisor")
    client = ConsoleClient(stack)
    for _ in range(5):
        refused = client.login(username, "not the password")
        assert refused.status_code == 401 and "用户名或密码不正确" in refused.text
    throttled = client.login(username, PASSWORD)
    assert throttled.status_code == 429 and "15 分钟" in throttled.text


@pytest.fixture(scope="module")
def behind_proxy(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """Two more apps, each on a database of its own (sign-in failures there lock out nobody
    else): one trusting a reverse proxy on 127.0.0.1, one trusting nobody."""
    proxied = Stack(workdir=tmp_path_factory.mktemp("proxied"), rasa_port=stack.rasa_port, secrets=stack.secrets)
    direct = Stack(workdir=tmp_path_factory.mktemp("direct"), rasa_port=stack.rasa_port, secrets=stack.secrets)
    try:
        proxied.start_app({"TRUSTED_PROXIES": "127.0.0.1"})
        direct.start_app()
        yield proxied, direct
    finally:
        direct.stop_app()
        proxied.stop_app()


def client_behind(stack: Stack, forwarded_for: str) -> ConsoleClient:
    client = ConsoleClient(stack)
    client.http.headers["X-Forwarded-For"] = forwarded_for
    return client


def test_behind_a_trusted_proxy_one_guessing_address_does_not_lock_out_the_others(
    behind_proxy: tuple[Stack, Stack],
) -> None:
    proxied, _ = behind_proxy
    username = create_staff(proxied, "supervisor", display_name="代理后的值班")
    guesser = client_behind(proxied, "203.0.113.7")
    guesses = [f"guess{number:02d}" for number in range(staff.MAX_FAILURES_PER_ADDRESS)]
    for guess in guesses:
        assert guesser.login(guess, "not the password").status_code == 401
    assert guesser.login(username).status_code == 429  # that address is throttled...
    colleague = client_behind(proxied, "10.1.1.1, 198.51.100.9")  # (a left-most entry the client wrote)
    assert colleague.login(username).url.endswith("/console/inbox")  # ...the colleague's is not
    addresses = run_now(
        read_database(proxied, select(AuditEntry.address).where(AuditEntry.actor.in_([username, *guesses])))
    )
    assert sorted(set(addresses)) == ["198.51.100.9", "203.0.113.7"]


def test_without_trusted_proxies_a_forged_forwarded_for_does_not_escape_the_throttle(
    behind_proxy: tuple[Stack, Stack],
) -> None:
    _, direct = behind_proxy
    username = create_staff(direct, "supervisor", display_name="直连的值班")
    for number in range(staff.MAX_FAILURES_PER_ADDRESS):
        forger = client_behind(direct, f"192.0.2.{number + 1}")
        assert forger.login(f"forged{number:02d}", "not the password").status_code == 401
    assert client_behind(direct, "192.0.2.200").login(username).status_code == 429
    forged = run_now(read_database(direct, select(AuditEntry.address).where(AuditEntry.actor.like("forged%"))))
    assert set(forged) == {"127.0.0.1"}


def test_a_post_without_the_csrf_token_is_refused(stack: Stack, accounts: dict[str, str]) -> None:
    number, _ = file_case_now(stack, "A-housing")
    client = signed_in(stack, accounts["housing"])
    missing = client.post(f"/cases/{number}/note", {"note": "no token"}, csrf=False)
    assert missing.status_code == 403 and missing.json()["error"] == "csrf"
    wrong = client.post(f"/cases/{number}/note", {"note": "bad token", "csrf": "forged"}, csrf=False)
    assert wrong.status_code == 403
    ok = client.post(f"/cases/{number}/note", {"note": "带令牌的备注"})
    assert ok.status_code == 200 and "带令牌的备注" in ok.text
    assert "no token" not in ok.text and "bad token" not in ok.text
    login_without_token = client.http.post(f"{client.base}/login", data={"username": "x", "password": "y"}, timeout=10)
    assert login_without_token.status_code == 403


def test_an_agent_cannot_read_another_departments_case_or_conversation(stack: Stack, accounts: dict[str, str]) -> None:
    number, conversation_id = file_case_now(stack, "A-housing")
    transport = signed_in(stack, accounts["transport"])
    assert transport.get(f"/cases/{number}").status_code == 404
    assert transport.post(f"/cases/{number}/action", {"action": "accept"}).status_code == 404
    assert transport.get(f"/conversations/{conversation_id}").status_code == 404
    assert number not in transport.get("/cases").text
    housing = signed_in(stack, accounts["housing"])
    assert housing.get(f"/cases/{number}").status_code == 200
    assert number in housing.get("/cases").text
    assert signed_in(stack, accounts["supervisor"]).get(f"/cases/{number}").status_code == 200


def test_pages_are_kept_to_their_roles(stack: Stack, accounts: dict[str, str]) -> None:
    agent = signed_in(stack, accounts["housing"])
    for path in ("/queue", "/audit", "/admin/users", "/admin/routing", "/hot-issues"):
        assert agent.get(path).status_code == 404, path
    supervisor = signed_in(stack, accounts["supervisor"])
    assert supervisor.get("/queue").status_code == 200
    assert "热点问题" in supervisor.get("/hot-issues").text
    assert supervisor.get("/audit").status_code == 200
    assert supervisor.get("/admin/users").status_code == 404
    admin = signed_in(stack, accounts["admin"])
    users = admin.get("/admin/users")
    assert users.status_code == 200 and accounts["housing"] in users.text


def test_citizen_text_is_escaped_and_phone_views_are_audited(stack: Stack, accounts: dict[str, str]) -> None:
    number, conversation_id = file_case_now(stack, "A-housing", f"路灯坏了{MARKUP}")
    housing = signed_in(stack, accounts["housing"])
    case_page = housing.get(f"/cases/{number}")
    assert MARKUP not in case_page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in case_page.text
    assert "138****5678" in case_page.text and "13812345678" not in case_page.text
    conversation_page = housing.get(f"/conversations/{conversation_id}")
    assert conversation_page.status_code == 200 and MARKUP not in conversation_page.text
    revealed = housing.post(f"/cases/{number}/reveal-phone", {})
    assert "13812345678" in revealed.text
    audit = signed_in(stack, accounts["supervisor"]).get("/audit").text
    assert "case.view_phone" in audit and number in audit and "conversation.view" in audit
    assert accounts["housing"] in audit


def test_an_agent_sees_only_their_departments_cases_beside_a_conversation(
    stack: Stack, accounts: dict[str, str]
) -> None:
    housing_case, transport_case, conversation_id = citizen_with_a_draft(stack, "scope-two-departments")
    housing = signed_in(stack, accounts["housing"]).get(f"/conversations/{conversation_id}")
    assert housing.status_code == 200
    assert housing_case in housing.text and transport_case not in housing.text
    transport = signed_in(stack, accounts["transport"]).get(f"/conversations/{conversation_id}")
    assert transport_case in transport.text and housing_case not in transport.text
    supervisor = signed_in(stack, accounts["supervisor"]).get(f"/conversations/{conversation_id}")
    assert housing_case in supervisor.text and transport_case in supervisor.text


def test_the_draft_phone_is_masked_and_shown_whole_only_by_the_audited_action(
    stack: Stack, accounts: dict[str, str]
) -> None:
    _, _, conversation_id = citizen_with_a_draft(stack, "draft-phone-masked")
    housing = signed_in(stack, accounts["housing"])
    page = housing.get(f"/conversations/{conversation_id}").text
    draft = page[page.index('id="draft-case"') :]
    assert "139****5678" in draft and DRAFT_PHONE not in page

    revealed = housing.post(f"/conversations/{conversation_id}/reveal-phone", {})
    assert revealed.status_code == 200 and f'value="{DRAFT_PHONE}"' in revealed.text
    views = run_now(
        read_database(
            stack,
            select(AuditEntry).where(
                AuditEntry.action == "conversation.view_phone", AuditEntry.target == f"conversation:{conversation_id}"
            ),
        )
    )
    assert [entry.actor for entry in views] == [accounts["housing"]]
    assert housing.get(f"/conversations/{conversation_id}").text.count(DRAFT_PHONE) == 0  # one view, not a mode

    # Left blank, the phone the citizen gave the bot is the one filed.
    filed = housing.post(
        f"/conversations/{conversation_id}/file-case",
        {"description": "路灯坏了好几天", "location": "A1区解放路18号", "contact_phone": ""},
    )
    number = re.search(r"已登记工单 (\d{8}-\d{4,})", filed.text)
    assert filed.status_code == 200 and number, filed.text[:500]
    phones = run_now(
        read_database(stack, select(ServiceCase.contact_phone).where(ServiceCase.case_number == number.group(1)))
    )
    assert phones == [DRAFT_PHONE]


def test_logout_ends_the_session(stack: Stack, accounts: dict[str, str]) -> None:
    client = signed_in(stack, accounts["housing"])
    assert client.post("/logout", {}).url.endswith("/console/login")
    assert client.get("/cases").url.endswith("/console/login")


async def test_escalations_and_citizen_messages_arrive_live(stack: Stack, accounts: dict[str, str]) -> None:
    client = await asyncio.to_thread(signed_in, stack, accounts["supervisor"])
    cookies = {cookie.name: cookie.value or "" for cookie in client.http.cookies}
    sender = unique("live")
    events: list[dict[str, object]] = []

    async with (
        aiohttp.ClientSession(cookies=cookies) as http,
        http.get(f"{client.base}/events", timeout=aiohttp.ClientTimeout(total=60)) as stream,
    ):
        assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")

        async def read_until(kind: str) -> dict[str, object]:
            current = ""
            async for raw in stream.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    current = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = json.loads(line.removeprefix("data: "))
                    events.append({"kind": current, **data})
                    if current == kind:
                        return data
            raise AssertionError("stream ended")

        replies = await asyncio.to_thread(stack.rest, sender, "我要转人工")
        assert replies, "the bot said nothing on handoff"
        escalation = await asyncio.wait_for(read_until("escalation"), 20)
        conversation_id = escalation["conversation_id"]
        silent = await asyncio.to_thread(stack.rest, sender, f"我的问题是{MARKUP}")
        assert silent == []  # handed off: the bot stays silent
        message = await asyncio.wait_for(read_until("message"), 20)
        assert message["conversation_id"] == conversation_id

    rows = await asyncio.to_thread(client.http.get, f"{client.base}/inbox/rows", timeout=10)
    assert f'data-conversation="{conversation_id}"' in rows.text
    transcript = await asyncio.to_thread(
        client.http.get, f"{client.base}/conversations/{conversation_id}/messages?after=0", timeout=10
    )
    assert "我要转人工" in transcript.text and "&lt;script&gt;" in transcript.text and MARKUP not in transcript.text


def test_staff_see_what_the_bot_collected_as_a_draft_case(stack: Stack, accounts: dict[str, str]) -> None:
    sender = unique("draft")
    stack.rest(sender, "我家楼下的路灯坏了好几天了，晚上很黑")
    stack.rest(sender, "A1区解放路18号")
    handed = stack.rest(sender, "我要转人工")
    assert any("人工" in str(reply.get("text", "")) for reply in handed), handed
    supervisor = signed_in(stack, accounts["supervisor"])
    inbox = supervisor.get("/inbox/rows").text
    conversation_id = re.findall(r'data-conversation="(\d+)"', inbox)[-1]
    page = supervisor.get(f"/conversations/{conversation_id}").text
    draft = page[page.index('id="draft-case"') :]
    assert "我家楼下的路灯坏了好几天了，晚上很黑</textarea>" in draft
    assert 'value="A1区解放路18号"' in draft
    assert "机器人已收集" in page and "问题描述" in page


def department_option(page: str, name: str) -> str:
    found = re.search(rf'<option value="(\d+)"[^>]*>{name}</option>', page)
    assert found, f"no option {name}"
    return found.group(1)


def test_a_supervisor_dispatches_from_the_manual_queue(stack: Stack, accounts: dict[str, str]) -> None:
    number, _ = file_case_now(stack, None)
    housing = signed_in(stack, accounts["housing"])
    assert housing.get(f"/cases/{number}").status_code == 404  # in no department yet
    supervisor = signed_in(stack, accounts["supervisor"])
    queue = supervisor.get("/queue").text
    assert number in queue
    done = supervisor.post(
        f"/cases/{number}/action",
        {"action": "dispatch", "department_id": department_option(queue, "A市住房和城乡建设局")},
    )
    assert done.url.endswith(f"/console/cases/{number}")  # redirected to the case after the change
    assert "工单已变为「已派单」" in done.text and "A市住房和城乡建设局" in done.text
    assert number not in supervisor.get("/queue").text
    case_page = housing.get(f"/cases/{number}")
    assert case_page.status_code == 200 and "签收" in case_page.text
    refused = housing.post(f"/cases/{number}/action", {"action": "resolve", "note": "跳过步骤"})
    assert refused.status_code == 409 and "「已派单」的工单不能办结" in refused.text


def test_an_admin_manages_staff_and_routing_and_it_is_audited(stack: Stack, accounts: dict[str, str]) -> None:
    admin = signed_in(stack, accounts["admin"])
    username = unique("new", ".")
    created = admin.post(
        "/admin/users",
        {
            "op": "create",
            "username": username,
            "display_name": "新同事",
            "role": "agent",
            "department": "A-hotline",
            "password": PASSWORD,
        },
    )
    assert f"已创建用户 {username}" in created.text
    weak = admin.post("/admin/users", {"op": "create", "username": "weak.one", "display_name": "x",
                                       "role": "admin", "password": "short"})  # fmt: skip
    assert weak.status_code == 422 and "密码至少需要" in weak.text
    newcomer = ConsoleClient(stack)
    assert newcomer.login(username).url.endswith("/console/inbox")

    rows = [row for row in created.text.split("<tr>") if f"<td>{username}</td>" in row]
    assert rows, "the new user is not listed"
    user_id = re.search(r'name="user_id" value="(\d+)"', rows[0])
    assert user_id
    admin.post("/admin/users", {"op": "deactivate", "user_id": user_id.group(1)})
    assert ConsoleClient(stack).login(username).status_code == 401
    assert newcomer.get("/inbox").url.endswith("/console/login")  # the open session ends too

    routing = admin.get("/admin/routing").text
    saved = admin.post(
        "/admin/routing",
        {
            "op": "rule",
            "category": "卫生计生",
            "district": "A1区",
            "department_id": department_option(routing, "A市卫生健康委员会"),
        },
    )
    assert "已保存：卫生计生 A1区 → A市卫生健康委员会" in saved.text
    audit = signed_in(stack, accounts["supervisor"]).get("/audit").text
    for action in ("user.create", "user.deactivate", "routing.rule"):
        assert action in audit, action


def test_the_case_page_and_the_audit_log_read_in_chinese_not_in_codes(stack: Stack, accounts: dict[str, str]) -> None:
    number = routed_case_now(stack)
    supervisor = signed_in(stack, accounts["supervisor"])
    resolve_through_the_console(supervisor, number)

    case_page = visible_text(supervisor.get(f"/cases/{number}").text)
    assert "智能助手" in case_page and "智能分派" in case_page and "值班王" in case_page
    assert "规则：城乡建设 × A1区" in case_page and "办理中 → 已办结" in case_page
    for code in ("bot", "dispatch", "rule:", "resolved", "in_progress"):
        assert code not in case_page, code

    audit_page = supervisor.get("/audit").text
    row = next(r for r in audit_page.split("<tr>") if number in r and 'data-action="case.resolve"' in r)
    shown = visible_text(row)
    assert "值班王" in shown and "办结工单" in shown and "办理中 → 已办结" in shown, shown
    assert accounts["supervisor"] not in shown and f'title="{accounts["supervisor"]}"' in row  # only as a tooltip
    audit_text = visible_text(audit_page)
    for code in ("case.", "conversation.", "login.failed", "→ resolved", "in_progress"):
        assert code not in audit_text, code
    assert "登录" in audit_text and "查看工单" in audit_text and "登记人：智能助手" in audit_text
