"""Two-factor sign-in: TOTP codes (RFC 6238, ``pyotp``) and one-time recovery codes.

Supervisors, admins and auditors must use it (等保 2.0 level 3: two methods, one of them
cryptographic); agents may enrol, and an admin can require it of everyone (a
`SecuritySetting`, audited). Enrolment shows a QR code (inline SVG drawn here by ``segno``,
no outside service, nothing the console's Content-Security-Policy forbids) and the secret as
text; a first code confirms it, and ten recovery codes are shown once and stored as Argon2
hashes, as passwords are. A code is accepted once: the time step it belongs to is kept, and
a code of that step or an earlier one is refused (no replay within its window). Wrong codes
count in the sign-in throttling (`crm_backend.services.staff`) and are audited.

The TOTP secret is stored as it is: it must move under the at-rest encryption of
``crm_backend.crypto`` when that module lands (issue 16).
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import pyotp
import segno
from markupsafe import Markup
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import InvalidInput, NotFound
from crm_backend.lifecycle import Role
from crm_backend.models import SecuritySetting, StaffRecoveryCode, StaffSession, StaffUser, utcnow
from crm_backend.services import audit

ISSUER = "12345热线工作台"
RECOVERY_CODES = 10
REQUIRED_FOR_ALL = "totp_required_for_all"
# Roles that must use two-factor sign-in whatever the setting says.
ALWAYS_REQUIRED = frozenset({Role.SUPERVISOR, Role.ADMIN, Role.AUDITOR})
_TOTP_CODE = re.compile(r"\d{6}")
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i


@dataclass(frozen=True)
class Enrolment:
    """What the enrolment page shows: the secret as text, its otpauth URI, and the QR code as SVG."""

    secret: str
    uri: str
    qr_svg: Markup


def enrolled(user: StaffUser) -> bool:
    return user.totp_enrolled_at is not None and bool(user.totp_secret)


async def required_for_all(session: AsyncSession) -> bool:
    setting = await session.get(SecuritySetting, REQUIRED_FOR_ALL)
    return setting is not None and setting.value == "1"


async def required(session: AsyncSession, user: StaffUser) -> bool:
    """Whether this member of staff must sign in with a second factor."""
    return Role(user.role) in ALWAYS_REQUIRED or await required_for_all(session)


async def set_required_for_all(session: AsyncSession, actor: StaffUser, on: bool, *, address: str = "") -> None:
    """Require (or stop requiring) two-factor sign-in of every member of staff, audited."""
    setting = await session.get(SecuritySetting, REQUIRED_FOR_ALL)
    value = "1" if on else "0"
    if setting is None:
        session.add(SecuritySetting(key=REQUIRED_FOR_ALL, value=value, updated_at=utcnow()))
    else:
        setting.value, setting.updated_at = value, utcnow()
    audit.record(session, actor, "security.totp_required_for_all", "", "on" if on else "off", address=address)


def start_enrolment(user: StaffUser) -> Enrolment:
    """A secret for the user to add to an authenticator app (kept while enrolment is unconfirmed)."""
    if enrolled(user) or not user.totp_secret:
        user.totp_secret = pyotp.random_base32()
        user.totp_enrolled_at = None
        user.totp_last_step = None
    secret = user.totp_secret
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=ISSUER)
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff", title="两步验证二维码")
    return Enrolment(secret, uri, Markup(svg))  # noqa: S704  (segno's own SVG of our URI, no outside text)


def _matching_step(secret: str, code: str, last_step: int | None, now: datetime) -> int | None:
    """The time step (now, one before or one after) whose code this is, unless it was used already."""
    if not _TOTP_CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current - 1, current, current + 1):
        if last_step is not None and step <= last_step:
            continue
        if secrets.compare_digest(totp.generate_otp(step), code):
            return step
    return None


async def confirm_enrolment(
    session: AsyncSession, user: StaffUser, code: str, *, address: str = "", now: datetime | None = None
) -> list[str]:
    """Confirm enrolment with a first code; the ten recovery codes, to show once.

    Raises:
        InvalidInput: no enrolment started, or the code is not the authenticator's current one.
    """
    if not user.totp_secret or enrolled(user):
        raise InvalidInput("no_enrolment", "请先打开两步验证设置页面")
    step = _matching_step(user.totp_secret, code.strip(), None, now or utcnow())
    if step is None:
        audit.record(session, user, "totp.enrol_failed", user.username, address=address)
        raise InvalidInput("bad_code", "验证码不正确，请输入验证器应用当前显示的 6 位数字")
    user.totp_enrolled_at = now or utcnow()
    user.totp_last_step = step
    codes = await _new_recovery_codes(session, user)
    audit.record(session, user, "totp.enrol", user.username, address=address)
    return codes


async def _new_recovery_codes(session: AsyncSession, user: StaffUser) -> list[str]:
    from crm_backend.services.staff import hash_password

    await session.execute(delete(StaffRecoveryCode).where(StaffRecoveryCode.user_id == user.id))
    codes = [_recovery_code() for _ in range(RECOVERY_CODES)]
    hashes = await asyncio.gather(*(hash_password(_normalise_recovery(code)) for code in codes))
    session.add_all(StaffRecoveryCode(user_id=user.id, code_hash=digest) for digest in hashes)
    return codes


def _recovery_code() -> str:
    raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


def _normalise_recovery(code: str) -> str:
    return re.sub(r"[\s-]", "", code).lower()


async def check_code(
    session: AsyncSession, user: StaffUser, code: str, *, address: str = "", now: datetime | None = None
) -> bool:
    """Whether the code (a TOTP code not used before, or an unused recovery code) proves the second factor.

    An accepted code is spent: its time step is remembered, a recovery code is marked used
    (and audited). Refusals are audited by the caller, which counts them.
    """
    if not enrolled(user) or not code.strip():
        return False
    secret = user.totp_secret or ""
    step = _matching_step(secret, code.strip(), user.totp_last_step, now or utcnow())
    if step is not None:
        user.totp_last_step = step
        return True
    normalised = _normalise_recovery(code)
    if _TOTP_CODE.fullmatch(code.strip()) or len(normalised) != 10:
        return False
    from crm_backend.services.staff import verify_password

    unused = await session.scalars(
        select(StaffRecoveryCode).where(StaffRecoveryCode.user_id == user.id, StaffRecoveryCode.used_at.is_(None))
    )
    for stored in unused.all():
        if await verify_password(stored.code_hash, normalised):
            stored.used_at = now or utcnow()
            left = await _unused_recovery_codes(session, user)  # autoflush: this one counts as used
            audit.record(session, user, "totp.recovery_used", user.username, f"{left} left", address=address)
            return True
    return False


async def _unused_recovery_codes(session: AsyncSession, user: StaffUser) -> int:
    rows = await session.scalars(
        select(StaffRecoveryCode.id).where(StaffRecoveryCode.user_id == user.id, StaffRecoveryCode.used_at.is_(None))
    )
    return len(rows.all())


async def reset(session: AsyncSession, actor: StaffUser, user_id: int | None, *, address: str = "") -> StaffUser:
    """Remove a member's two-factor enrolment (lost phone), sign them out everywhere, audited.

    They enrol again at their next sign-in if their role or the setting requires it.

    Raises:
        NotFound: no such account.
    """
    target = await session.get(StaffUser, user_id) if user_id else None
    if target is None:
        raise NotFound("user")
    target.totp_secret = None
    target.totp_enrolled_at = None
    target.totp_last_step = None
    await session.execute(delete(StaffRecoveryCode).where(StaffRecoveryCode.user_id == target.id))
    await session.execute(delete(StaffSession).where(StaffSession.user_id == target.id))
    audit.record(session, actor, "totp.reset", target.username, address=address)
    return target
