"""Two-factor sign-in over the real console routes, in process: enrolment, codes, replay, recovery, throttling."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import pyotp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select

from crm_backend.console.web import SESSION_COOKIE
from crm_backend.dispatch.routing import seed_routing
from crm_backend.models import AuditEntry, StaffRecoveryCode, StaffSession, StaffUser, utcnow
from crm_backend.services import staff, two_factor
from tests.support.console_app import console_app
from tests.unit.test_staff_roles import PASSWORD, Sessions

Client = TestClient[web.Request, web.Application]
_FORM_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def people(sessions: Sessions) -> dict[str, StaffUser]:
    async with sessions.begin() as session:
        await seed_routing(session)
        made = {
            role: await staff.create_user(
                session,
                username=f"{role}.two",
                display_name=role,
                password=PASSWORD,
                role=role,
                department_code="A-housing" if role == "agent" else None,
            )
            for role in ("agent", "supervisor", "admin")
        }
    return made


@pytest.fixture
async def client(sessions: Sessions) -> AsyncIterator[Client]:
    async with TestClient(TestServer(console_app(sessions))) as test_client:
        yield test_client


async def password_step(client: Client, username: str) -> web.Response:
    """Sign in with the password; the response is the redirect (not followed)."""
    client.session.cookie_jar.clear()
    page = await (await client.get("/console/login")).text()
    token = _FORM_CSRF.search(page)
    assert token
    return await client.post(
        "/console/login",
        data={"csrf": token.group(1), "username": username, "password": PASSWORD},
        allow_redirects=False,
    )


async def post_code(client: Client, path: str, code: str) -> tuple[int, str]:
    page = await (await client.get(path)).text()
    token = _FORM_CSRF.search(page)
    assert token, page
    response = await client.post(path, data={"csrf": token.group(1), "code": code}, allow_redirects=False)
    return response.status, (response.headers.get("Location") or await response.text())


async def enrol(client: Client, username: str) -> tuple[pyotp.TOTP, list[str]]:
    """Password, then the enrolment page: its secret, a first code; the recovery codes shown."""
    moved = await password_step(client, username)
    assert moved.status == 303 and moved.headers["Location"] == "/console/login/enrol"
    page = await (await client.get("/console/login/enrol")).text()
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page)
    assert secret and "<svg" in page
    totp = pyotp.TOTP(secret.group(1))
    status, shown = await post_code(client, "/console/login/enrol", totp.now())
    assert status == 200, shown
    codes = re.findall(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>", shown)
    return totp, codes


async def test_a_supervisor_must_enrol_before_reaching_anything(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    moved = await password_step(client, "supervisor.two")
    assert moved.headers["Location"] == "/console/login/enrol"
    for path in ("/console/inbox", "/console/cases", "/console/audit", "/console/dashboard"):
        page = await client.get(path, headers={"Accept": "text/html"}, allow_redirects=False)
        assert (page.status, page.headers.get("Location")) == (303, "/console/login/enrol"), path
    fetched = await client.get("/console/inbox/rows", allow_redirects=False)
    assert fetched.status == 401
    enrol_page = await (await client.get("/console/login/enrol")).text()
    assert "必须使用两步验证" in enrol_page and 'href="/console/inbox"' not in enrol_page
    # The QR code is an SVG in the page itself: nothing fetched from elsewhere, nothing inline the CSP forbids.
    assert re.search(r'<figure class="qr" id="totp-qr"><svg [^>]*class="segno"', enrol_page)
    assert "style=" not in enrol_page and "<script>" not in enrol_page


async def test_enrolment_is_confirmed_by_a_code_and_shows_ten_recovery_codes_stored_hashed(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    moved = await password_step(client, "supervisor.two")
    assert moved.headers["Location"] == "/console/login/enrol"
    page = await (await client.get("/console/login/enrol")).text()
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page)
    assert secret
    wrong_code = f"{(int(pyotp.TOTP(secret.group(1)).now()) + 1) % 1_000_000:06d}"
    status, body = await post_code(client, "/console/login/enrol", wrong_code)
    assert status == 422 and staff.CODE_REFUSED in body
    assert secret.group(1) in body  # the same secret, to try again
    status, shown = await post_code(client, "/console/login/enrol", pyotp.TOTP(secret.group(1)).now())
    assert status == 200
    codes = re.findall(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>", shown)
    assert len(set(codes)) == 10
    inbox = await client.get("/console/inbox", headers={"Accept": "text/html"}, allow_redirects=False)
    assert inbox.status == 200
    async with sessions() as session:
        stored = (await session.scalars(select(StaffRecoveryCode.code_hash))).all()
        actions = (await session.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all()
    assert len(stored) == 10 and all(h.startswith("$argon2id$") for h in stored)
    assert not any(code.replace("-", "") in h for code in codes for h in stored)
    assert actions[-3:] == ["totp.enrol_failed", "totp.enrol", "login"]


async def test_a_code_is_accepted_once_and_a_wrong_one_is_refused_and_audited(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    totp, _codes = await enrol(client, "admin.two")
    async with sessions() as session:
        user = await session.get(StaffUser, people["admin"].id)
        assert user is not None and user.totp_last_step is not None
        used_step = user.totp_last_step
    moved = await password_step(client, "admin.two")
    assert moved.headers["Location"] == "/console/login/code"
    replayed = totp.generate_otp(used_step)
    status, body = await post_code(client, "/console/login/code", replayed)
    assert status == 401 and staff.CODE_REFUSED in body
    status, where = await post_code(client, "/console/login/code", totp.generate_otp(used_step + 1))
    assert (status, where) == (303, "/console/inbox")
    async with sessions() as session:
        failed = await session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.action == "login.code_failed"))
    assert failed == 1


async def test_a_recovery_code_works_once(sessions: Sessions, people: dict[str, StaffUser], client: Client) -> None:
    _totp, codes = await enrol(client, "supervisor.two")
    await password_step(client, "supervisor.two")
    status, where = await post_code(client, "/console/login/code", codes[3].upper())
    assert (status, where) == (303, "/console/inbox")
    await password_step(client, "supervisor.two")
    status, body = await post_code(client, "/console/login/code", codes[3])
    assert status == 401 and staff.CODE_REFUSED in body
    async with sessions() as session:
        used = await session.scalar(
            select(func.count(StaffRecoveryCode.id)).where(StaffRecoveryCode.used_at.is_not(None))
        )
        detail = await session.scalar(select(AuditEntry.detail).where(AuditEntry.action == "totp.recovery_used"))
    assert (used, detail) == (1, "9 left")


async def test_wrong_codes_count_in_the_sign_in_throttling(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    totp, _codes = await enrol(client, "supervisor.two")
    await password_step(client, "supervisor.two")
    wrong = f"{(int(totp.now()) + 500_000) % 1_000_000:06d}"
    statuses = [
        (await post_code(client, "/console/login/code", wrong))[0] for _ in range(staff.MAX_FAILURES_PER_USERNAME)
    ]
    assert statuses == [401] * staff.MAX_FAILURES_PER_USERNAME
    status, body = await post_code(client, "/console/login/code", totp.at(utcnow() + timedelta(seconds=30)))
    assert status == 429 and staff.THROTTLED in body


async def test_an_agent_may_skip_two_factor_until_an_admin_requires_it_for_everyone(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    moved = await password_step(client, "agent.two")
    assert moved.headers["Location"] == "/console/inbox"
    async with sessions.begin() as session:
        await two_factor.set_required_for_all(session, people["admin"], True)
    moved = await password_step(client, "agent.two")
    assert moved.headers["Location"] == "/console/login/enrol"
    async with sessions() as session:
        setting = await session.scalar(
            select(AuditEntry.detail).where(AuditEntry.action == "security.totp_required_for_all")
        )
    assert setting == "on"


async def test_an_admin_resets_a_members_two_factor_and_signs_them_out(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    await enrol(client, "supervisor.two")
    async with sessions.begin() as session:
        await two_factor.reset(session, people["admin"], people["supervisor"].id)
    async with sessions() as session:
        user = await session.get(StaffUser, people["supervisor"].id)
        left = await session.scalar(select(func.count(StaffSession.id)).where(StaffSession.user_id == user.id))
        codes = await session.scalar(select(func.count(StaffRecoveryCode.id)))
        audited = await session.scalar(select(AuditEntry.target).where(AuditEntry.action == "totp.reset"))
    assert user is not None and user.totp_secret is None and not two_factor.enrolled(user)
    assert (left, codes, audited) == (0, 0, "supervisor.two")
    moved = await password_step(client, "supervisor.two")
    assert moved.headers["Location"] == "/console/login/enrol"


async def test_the_admin_page_requires_two_factor_for_everyone_and_resets_a_member(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    await enrol(client, "supervisor.two")
    client.session.cookie_jar.clear()
    async with sessions.begin() as session:
        opened = await staff.open_session(session, people["admin"])
    cookies = {SESSION_COOKIE: opened.token}
    page = await (await client.get("/console/admin/users", cookies=cookies)).text()
    assert 'data-two-factor="on"' in page and 'value="totp_reset"' in page
    csrf = opened.session.csrf_token
    turned = await client.post(
        "/console/admin/users", data={"csrf": csrf, "op": "totp_all", "value": "1"}, cookies=cookies
    )
    assert "已要求所有人使用两步验证" in await turned.text()
    reset = await client.post(
        "/console/admin/users",
        data={"csrf": csrf, "op": "totp_reset", "user_id": str(people["supervisor"].id)},
        cookies=cookies,
    )
    assert "已重置 supervisor.two 的两步验证" in await reset.text()
    async with sessions() as session:
        assert await two_factor.required_for_all(session)
        user = await session.get(StaffUser, people["supervisor"].id)
        audited = (await session.scalars(select(AuditEntry.action).where(AuditEntry.actor == "admin.two"))).all()
    assert user is not None and not two_factor.enrolled(user)
    assert audited == ["security.totp_required_for_all", "totp.reset"]


async def test_supervisors_admins_and_auditors_must_use_two_factor_and_agents_need_not(sessions: Sessions) -> None:
    async with sessions() as session:
        needs = {
            role: await two_factor.required(session, StaffUser(username="x", role=role))
            for role in ("agent", "supervisor", "admin", "auditor")
        }
    assert needs == {"agent": False, "supervisor": True, "admin": True, "auditor": True}


async def test_the_session_token_changes_when_the_second_factor_completes_the_sign_in(
    sessions: Sessions, people: dict[str, StaffUser], client: Client
) -> None:
    totp, _codes = await enrol(client, "admin.two")
    moved = await password_step(client, "admin.two")
    waiting = moved.cookies[SESSION_COOKIE].value
    async with sessions() as session:
        step = (await session.get(StaffUser, people["admin"].id)).totp_last_step  # type: ignore[union-attr]
    status, where = await post_code(client, "/console/login/code", totp.generate_otp(step + 1))
    assert (status, where) == (303, "/console/inbox")
    signed = client.session.cookie_jar.filter_cookies(client.make_url("/console/inbox"))[SESSION_COOKIE].value
    assert signed != waiting
    async with sessions() as session:
        assert await staff.find_session(session, waiting, pending=True) is None  # the password step's token is spent
        assert await staff.find_session(session, signed) is not None
