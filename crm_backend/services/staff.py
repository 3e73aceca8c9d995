"""Staff accounts, sign-in and console sessions.

Passwords are hashed with Argon2id (argon2-cffi's defaults); hashing runs in a worker
thread so a sign-in never stalls the event loop. A browser holds a random session
token in a cookie; the database keeps only its SHA-256, so a leaked table opens no
session. Failed sign-ins are counted per username and per address (the client's, as
`crm_backend.http.client_address` finds it behind a trusted proxy) and throttled.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.errors import CrmError, InvalidInput, NotFound
from crm_backend.lifecycle import Role
from crm_backend.models import Department, LoginFailure, StaffSession, StaffUser, utcnow
from crm_backend.services import audit, two_factor

SESSION_IDLE_LIMIT = timedelta(hours=2)
SESSION_MAX_AGE = timedelta(hours=12)
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_USERNAME = 5
MAX_FAILURES_PER_ADDRESS = 20
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 256
COMMON_PASSWORDS_FILE = "common_passwords.txt"  # in crm_backend/data, see its PROVENANCE.md
PENDING_MAX_AGE = timedelta(minutes=10)  # to give the code or enrol, after the password
LOGIN_REFUSED = "用户名或密码不正确"  # never says which of the two was wrong
CODE_REFUSED = "验证码不正确或已使用过，请输入验证器应用当前显示的 6 位数字或一个恢复码"
THROTTLED = "登录失败次数过多，请 15 分钟后再试"
USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{2,31}")
_hasher = PasswordHasher()
# Verified against when the username is unknown, so a miss costs as long as a hit.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class SessionStep(StrEnum):
    """What a session opened by a right password still waits for."""

    CODE = "totp"  # a TOTP or recovery code
    ENROL = "enrol"  # setting up two-factor sign-in, which the role or the admins require


@dataclass(frozen=True)
class SecondFactor:
    """A second step accepted: the recovery codes to show once (enrolment), and the session's new
    cookie token when the step completed a sign-in (None when a signed-in member enrolled)."""

    recovery_codes: list[str]
    token: str | None


class LoginThrottled(CrmError):
    """Too many failed sign-ins recently."""

    code = "login_throttled"


@dataclass(frozen=True)
class SignedIn:
    """A console session just opened: the cookie value and the session row."""

    token: str
    session: StaffSession
    user: StaffUser


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower-cased; read on first use, then kept."""
    text = resources.files("crm_backend.data").joinpath(COMMON_PASSWORDS_FILE).read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def check_password_rules(password: str, username: str) -> None:
    """Refuse a password that is short, built on the username, or one of the common ones.

    Each refusal says its own reason, in Chinese, so staff know what to change.

    Args:
        password: the new password, as typed.
        username: the account's username (the password may neither be it nor contain it).

    Raises:
        InvalidInput: ``weak_password`` (too short), ``long_password``, ``password_has_username``
            or ``common_password``.
    """
    if len(password) < MIN_PASSWORD_CHARS:
        raise InvalidInput("weak_password", f"密码至少需要 {MIN_PASSWORD_CHARS} 个字符")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidInput("long_password", f"密码不能超过 {MAX_PASSWORD_CHARS} 个字符")
    name = username.strip().lower()
    if name and name in password.lower():
        raise InvalidInput("password_has_username", "密码不能是用户名，也不能包含用户名")
    if password.lower() in common_passwords():
        raise InvalidInput("common_password", "这个密码是常见密码，很容易被猜中，请换一个")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def create_user(
    session: AsyncSession,
    *,
    username: str,
    display_name: str,
    password: str,
    role: str,
    department_code: str | None = None,
) -> StaffUser:
    """Add a member of staff, in the caller's transaction.

    Raises:
        InvalidInput: a bad username, display name, role, department or password, or a
            username already taken.
    """
    username = username.strip().lower()
    display_name = display_name.strip()
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInput("bad_username", "用户名为 3-32 位小写字母、数字、点、下划线或连字符")
    if not 0 < len(display_name) <= 32:
        raise InvalidInput("bad_display_name", "显示名称为 1-32 个字符")
    try:
        staff_role = Role(role)
    except ValueError as error:
        raise InvalidInput("bad_role", "角色只能是 agent、supervisor、admin 或 auditor") from error
    check_password_rules(password, username)
    department_id = None
    if department_code:
        department_id = await session.scalar(select(Department.id).where(Department.code == department_code))
        if department_id is None:
            raise InvalidInput("bad_department", f"没有编码为 {department_code} 的部门")
    if staff_role is Role.AGENT and department_id is None:
        raise InvalidInput("department_required", "坐席必须属于一个部门")
    if await session.scalar(select(StaffUser.id).where(StaffUser.username == username)):
        raise InvalidInput("username_taken", f"用户名 {username} 已被使用")
    user = StaffUser(
        username=username,
        display_name=display_name,
        password_hash=await hash_password(password),
        role=staff_role.value,
        department_id=department_id,
        active=True,
    )
    session.add(user)
    await session.flush()
    return user


async def set_password(session: AsyncSession, user_id: int, password: str) -> StaffUser:
    """Replace a password and sign the user out everywhere.

    Raises:
        NotFound: no such user.
        InvalidInput: the password breaks a rule (`check_password_rules`).
    """
    user = await session.get(StaffUser, user_id)
    if user is None:
        raise NotFound("staff user")
    check_password_rules(password, user.username)
    user.password_hash = await hash_password(password)
    await session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
    return user


async def sign_in(
    sessions: async_sessionmaker[AsyncSession], username: str, password: str, address: str
) -> SignedIn | None:
    """Check a username and password and open a console session; None if refused.

    Every attempt is first recorded as a failure and committed, then counted: an
    attempt sees every attempt committed before it, so of any number of concurrent
    guesses at most the limit's worth get their password checked (counting first and
    recording after, they would all count the same number and all pass). A sign-in that
    succeeds removes its own record; a throttled one too, so only checked guesses count.
    The refusal and the sign-in are written to the audit log.

    Args:
        sessions: opens the two transactions (the record must commit before it is counted).
        username: as typed; compared trimmed and lower-cased.
        password: as typed.
        address: the client's address (`crm_backend.http.client_address`).

    Raises:
        LoginThrottled: too many recent failures for this username or from this address.
    """
    username = username.strip().lower()[:64]
    address = address[:64]
    async with sessions.begin() as session:
        attempt = LoginFailure(username=username, address=address)
        session.add(attempt)
    async with sessions.begin() as session:
        if not await _over_limit(session, username, address):
            user = await session.scalar(select(StaffUser).where(StaffUser.username == username))
            valid = await asyncio.to_thread(_verify, user.password_hash if user else _DUMMY_HASH, password)
            if user is None or not valid or not user.active:
                audit.record(session, None, "login.failed", username, address=address, actor_name=username)
                return None
            await session.execute(delete(LoginFailure).where(LoginFailure.id == attempt.id))
            if _hasher.check_needs_rehash(user.password_hash):
                user.password_hash = await hash_password(password)
            step = await _next_step(session, user)
            signed = await open_session(session, user, pending_step=step)
            if step is None:
                user.last_login_at = utcnow()
                audit.record(session, user, "login", address=address)
            else:
                audit.record(session, user, "login.password", f"next: {step}", address=address)
            return signed
        await session.execute(delete(LoginFailure).where(LoginFailure.id == attempt.id))
    raise LoginThrottled(THROTTLED)


async def _next_step(session: AsyncSession, user: StaffUser) -> str | None:
    """What a user whose password was right must still do: give a code, enrol, or nothing."""
    if two_factor.enrolled(user):
        return SessionStep.CODE
    if await two_factor.required(session, user):
        return SessionStep.ENROL
    return None


async def second_factor(
    sessions: async_sessionmaker[AsyncSession], token: str, code: str, address: str, *, enrol: bool = False
) -> SecondFactor | None:
    """Finish a sign-in with a second-factor code: the session is then signed in, under a new token.

    With `enrol`, the code confirms a new enrolment instead (a session waiting to enrol, or a
    signed-in one enrolling of its own accord), and the recovery codes to show once are
    returned. Attempts are recorded, counted and throttled as passwords are (`sign_in`), and
    refusals audited.

    The token the password step gave is spent: the signed-in session gets a new one (set it as
    the cookie), so a token seen before the second factor never opens the console.

    Returns:
        What the step gave (recovery codes to show once, a new token), or None (refused).

    Raises:
        LoginThrottled: too many recent failures for this username or from this address.
        NotFound: no session waiting for this step behind the token.
    """
    address = address[:64]
    async with sessions.begin() as session:
        found = await find_session(session, token, pending=True)
        if found is None:
            raise NotFound("sign-in step")
        row, user = found
        wanted = (SessionStep.ENROL, None) if enrol else (SessionStep.CODE,)
        if row.pending_step not in wanted:
            raise NotFound("sign-in step")
        attempt = LoginFailure(username=user.username, address=address)
        session.add(attempt)
    async with sessions.begin() as session:
        current_row = await session.get(StaffSession, row.id)
        current_user = await session.get(StaffUser, user.id)
        if current_row is None or current_user is None:
            raise NotFound("sign-in step")
        row, user = current_row, current_user
        if await _over_limit(session, user.username, address):
            await session.execute(delete(LoginFailure).where(LoginFailure.id == attempt.id))
            raise LoginThrottled(THROTTLED)
        recovery: list[str] = []
        if enrol:
            try:
                recovery = await two_factor.confirm_enrolment(session, user, code, address=address)
            except InvalidInput:
                return None
        elif not await two_factor.check_code(session, user, code, address=address):
            audit.record(session, user, "login.code_failed", user.username, address=address)
            return None
        await session.execute(delete(LoginFailure).where(LoginFailure.id == attempt.id))
        new_token = None
        if row.pending_step is not None:
            now = utcnow()
            new_token = secrets.token_urlsafe(32)
            row.token_hash, row.pending_step = token_hash(new_token), None
            row.expires_at, row.last_seen_at = now + SESSION_MAX_AGE, now
            user.last_login_at = now
            audit.record(session, user, "login", "", "two-factor", address=address)
        return SecondFactor(recovery, new_token)


async def _over_limit(session: AsyncSession, username: str, address: str) -> bool:
    """Whether the recent attempts, this one's included, are more than a limit allows."""
    since = utcnow() - THROTTLE_WINDOW
    by_name = await session.scalar(
        select(func.count(LoginFailure.id)).where(LoginFailure.username == username, LoginFailure.created_at >= since)
    )
    by_address = await session.scalar(
        select(func.count(LoginFailure.id)).where(LoginFailure.address == address, LoginFailure.created_at >= since)
    )
    return (by_name or 0) > MAX_FAILURES_PER_USERNAME or (by_address or 0) > MAX_FAILURES_PER_ADDRESS


async def sign_out(session: AsyncSession, user: StaffUser, token: str, *, address: str = "") -> None:
    """End the console session behind a cookie token, and say so in the audit log."""
    await close_session(session, token)
    audit.record(session, user, "logout", address=address)


async def verify_password(stored: str, password: str) -> bool:
    """Whether the password (or recovery code) matches the stored Argon2 hash; in a worker thread."""
    return await asyncio.to_thread(_verify, stored, password)


def _verify(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


async def open_session(
    session: AsyncSession, user: StaffUser, now: datetime | None = None, *, pending_step: str | None = None
) -> SignedIn:
    """Start a console session for a user who just signed in (or, with `pending_step`, who
    gave the right password and must still give a code or enrol: such a session reaches
    only that step's pages, and lasts `PENDING_MAX_AGE`)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    row = StaffSession(
        token_hash=token_hash(token),
        csrf_token=secrets.token_urlsafe(32),
        user_id=user.id,
        created_at=now,
        last_seen_at=now,
        expires_at=now + (PENDING_MAX_AGE if pending_step else SESSION_MAX_AGE),
        pending_step=pending_step,
    )
    session.add(row)
    await session.flush()
    return SignedIn(token, row, user)


async def find_session(
    session: AsyncSession, token: str, now: datetime | None = None, *, pending: bool = False
) -> tuple[StaffSession, StaffUser] | None:
    """The live session and its active user for a cookie token; None if unknown or expired.

    A session still waiting for its second factor (or enrolment) counts only with `pending`.
    An expired session (idle too long, or past its maximum age) is deleted.
    """
    if not token or len(token) > 100:
        return None
    now = now or utcnow()
    row = await session.scalar(select(StaffSession).where(StaffSession.token_hash == token_hash(token)))
    if row is None or (row.pending_step is not None and not pending):
        return None
    if now >= row.expires_at or now - row.last_seen_at >= SESSION_IDLE_LIMIT:
        await session.delete(row)
        return None
    user = await session.get(StaffUser, row.user_id)
    if user is None or not user.active:
        return None
    if now - row.last_seen_at > timedelta(minutes=1):
        row.last_seen_at = now
    return row, user


async def close_session(session: AsyncSession, token: str) -> None:
    await session.execute(delete(StaffSession).where(StaffSession.token_hash == token_hash(token)))


async def list_users(session: AsyncSession) -> list[StaffUser]:
    return list((await session.scalars(select(StaffUser).order_by(StaffUser.username))).all())
