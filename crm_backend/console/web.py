"""What every console page shares: sign-in guard, CSRF, templates, security headers.

Pages are rendered on the server with Jinja2 (autoescaping on: every piece of citizen
text is HTML-escaped) and carry a strict Content-Security-Policy: scripts and styles
only from /console/static, no inline code, no inline event handlers.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import jinja2
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.console import labels
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.lifecycle import ROLE_LABELS, CaseStatus, Permission, Role
from crm_backend.models import CHANNEL_LABELS, StaffSession, StaffUser, utcnow
from crm_backend.services import lookup, staff
from crm_backend.validation import clean_text, mask_phone

HERE = Path(__file__).resolve().parent
SESSION_COOKIE = "console_session"
LOGIN_CSRF_COOKIE = "console_login_csrf"
NOTICE_COOKIE = "console_notice"
NOTICE_MAX_AGE = 300  # seconds a notice waits for the page after its redirect
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class Staff:
    """The signed-in member of staff behind a request."""

    user: StaffUser
    session: StaffSession

    @property
    def role(self) -> Role:
        return Role(self.user.role)

    def may(self, permission: Permission) -> bool:
        return self.role.may(permission)


def _beijing(value: datetime | None, pattern: str = "%Y-%m-%d %H:%M") -> str:
    return value.astimezone(CHINA_TZ).strftime(pattern) if value else ""


def _waited(value: datetime | None) -> str:
    if value is None:
        return ""
    minutes = int((utcnow() - value).total_seconds() // 60)
    if minutes < 1:
        return "不到 1 分钟"
    if minutes < 60:
        return f"{minutes} 分钟"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} 小时 {minutes} 分"
    return f"{hours // 24} 天 {hours % 24} 小时"


def _score_band(total: int) -> str:
    """The colour class of a 答复质量 total: below 30 low, below 70 middling, else high (see the calibration)."""
    return "score-low" if total < 30 else "score-mid" if total < 70 else "score-high"


def _status_label(value: str) -> str:
    try:
        return CaseStatus(value).label
    except ValueError:
        return value


def build_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        beijing=_beijing, waited=_waited, status_label=_status_label, mask=mask_phone, score_band=_score_band
    )
    env.filters.update(
        action_label=labels.action_label,
        actor_label=labels.actor_label,
        rule_label=labels.rule_label,
        detail_label=labels.detail_label,
    )
    env.globals.update(
        role_labels={role.value: label for role, label in ROLE_LABELS.items()},
        channel_labels=CHANNEL_LABELS,
        action_labels=labels.ACTION_LABELS,
    )
    return env


class Flashes:
    """One-shot messages carried across a POST → redirect → GET, in a cookie.

    The redirect may be served by another app process than the POST, so the notice travels
    with the browser, not in a process's memory: a cookie holding the text (base64url) and an
    HMAC of it keyed by the console session's secret CSRF token, so only a notice this session
    was given is shown. The page that shows it expires the cookie.
    """

    def __init__(self, *, secure: bool = False) -> None:
        self._secure = secure

    def put(self, response: web.StreamResponse | web.HTTPException, session: StaffSession, message: str) -> None:
        """Set the notice on the response (or the redirect about to be raised)."""
        encoded = base64.urlsafe_b64encode(message.encode()).decode().rstrip("=")
        value = f"{encoded}.{_notice_signature(session, message)}"
        cookie = SimpleCookie()
        cookie[NOTICE_COOKIE] = value
        morsel = cookie[NOTICE_COOKIE]
        morsel["path"], morsel["samesite"], morsel["max-age"] = "/console", "Strict", str(NOTICE_MAX_AGE)
        morsel["httponly"] = True
        if self._secure:
            morsel["secure"] = True
        response.headers.add("Set-Cookie", morsel.OutputString())

    def read(self, request: web.Request, session: StaffSession) -> str | None:
        """The notice the request carries for this session, if its signature holds."""
        raw = request.cookies.get(NOTICE_COOKIE, "")
        encoded, _, signature = raw.partition(".")
        try:
            message = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        if not signature or not hmac.compare_digest(signature, _notice_signature(session, message)):
            return None
        return message

    def consume(self, request: web.Request, response: web.StreamResponse) -> None:
        """Expire the notice cookie the request carried, once its page is shown."""
        if NOTICE_COOKIE in request.cookies:
            response.del_cookie(NOTICE_COOKIE, path="/console")


def _notice_signature(session: StaffSession, message: str) -> str:
    return hmac.new(session.csrf_token.encode(), message.encode(), hashlib.sha256).hexdigest()[:32]


class ConsoleBase:
    """Shared plumbing of the console's handlers."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        templates: jinja2.Environment,
        *,
        secure_cookies: bool,
        flashes: Flashes | None = None,
    ) -> None:
        self.sessions = sessions
        self.templates = templates
        self.secure_cookies = secure_cookies
        self.flashes = flashes or Flashes(secure=secure_cookies)

    def share(self) -> dict[str, Any]:
        """What a view built on this one passes to `ConsoleBase.__init__`."""
        return {
            "sessions": self.sessions,
            "templates": self.templates,
            "secure_cookies": self.secure_cookies,
            "flashes": self.flashes,
        }

    def done(self, request: web.Request, location: str, notice: str) -> NoReturn:
        """After a successful change: redirect to the page to show, with a notice (POST → redirect → GET)."""
        redirect = web.HTTPSeeOther(location)
        self.flashes.put(redirect, request["staff"].session, notice)
        raise redirect

    def render(
        self, request: web.Request, name: str, *, status: int = 200, fragment: bool = False, **context: Any
    ) -> web.Response:
        """A page (or, with `fragment`, a piece of one fetched by the page's script)."""
        staff_member: Staff | None = request.get("staff")
        context.setdefault("error", None)
        shows_notice = staff_member is not None and request.method == "GET" and not fragment
        if context.get("notice") is None and staff_member is not None and shows_notice:
            context["notice"] = self.flashes.read(request, staff_member.session)
        context.setdefault("notice", None)
        html = self.templates.get_template(name).render(
            staff=staff_member,
            security_alert=None if fragment else request.get("security_alert"),
            csrf=staff_member.session.csrf_token if staff_member else "",
            path=request.path,
            Role=Role,
            Permission=Permission,
            **context,
        )
        response = secure(web.Response(text=html, status=status, content_type="text/html", charset="utf-8"))
        if shows_notice:
            self.flashes.consume(request, response)
        return response

    def set_session_cookie(self, response: web.StreamResponse, token: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            token,
            httponly=True,
            samesite="Strict",
            secure=self.secure_cookies,
            path="/console",
            max_age=int(staff.SESSION_MAX_AGE.total_seconds()),
        )

    def set_login_csrf(self, response: web.StreamResponse, token: str) -> None:
        """The sign-in form's CSRF token, as a double-submit cookie (there is no session yet)."""
        response.set_cookie(
            LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=self.secure_cookies, path="/console"
        )


def step_page(step: str | None) -> str:
    """The page of the sign-in step a session waits for (a code, or enrolment)."""
    return "/console/login/enrol" if step == staff.SessionStep.ENROL else "/console/login/code"


def home_page(role: Role) -> str:
    """Where a member of staff lands after signing in: the inbox, or the audit log for an auditor."""
    return "/console/inbox" if role.may(Permission.HANDLE_CASES) else "/console/audit"


ResponseT = TypeVar("ResponseT", bound=web.StreamResponse)


def secure(response: ResponseT) -> ResponseT:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


ViewT = TypeVar("ViewT", bound=ConsoleBase)
Handler = Callable[[ViewT, web.Request], Awaitable[web.StreamResponse]]


def signed_in(permission: Permission = Permission.HANDLE_CASES) -> Callable[[Handler[ViewT]], Handler[ViewT]]:
    """Guard a console handler: a live session, the permission, and a CSRF token on every POST.

    A browser without a session is sent to the sign-in page (pages) or gets 401 (fetches); one
    whose session still waits for its second factor (or enrolment) is sent to that step and
    reaches nothing else; a role without the permission gets 404, as if the page did not exist.
    """

    def decorate(handler: Handler[ViewT]) -> Handler[ViewT]:
        @functools.wraps(handler)
        async def guarded(view: ViewT, request: web.Request) -> web.StreamResponse:
            token = request.cookies.get(SESSION_COOKIE, "")
            async with view.sessions.begin() as session:
                found = await staff.find_session(session, token, pending=True)
                waiting = found is not None and found[0].pending_step is not None
                if found is not None and not waiting and Role(found[1].role).may(Permission.SUPERVISE):
                    request["security_alert"] = await lookup.ceiling_alert(session)
            if found is None or waiting:
                if request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
                    raise web.HTTPSeeOther(step_page(found[0].pending_step) if found else "/console/login")
                raise web.HTTPUnauthorized(
                    text='{"error": "unauthorized", "message": "请先登录"}', content_type="application/json"
                )
            request["staff"] = Staff(user=found[1], session=found[0])
            if request.method == "POST":
                supplied = request.headers.get("X-CSRF-Token", "")
                if not supplied and request.content_type in (
                    "application/x-www-form-urlencoded",
                    "multipart/form-data",
                ):
                    supplied = str((await request.post()).get("csrf", ""))
                if not hmac.compare_digest(supplied.encode(), found[0].csrf_token.encode()):
                    raise web.HTTPForbidden(
                        text='{"error": "csrf", "message": "页面已过期，请刷新后重试"}', content_type="application/json"
                    )
            if not request["staff"].may(permission):
                raise web.HTTPNotFound()
            return await handler(view, request)

        guarded.permission = permission  # type: ignore[attr-defined]  # read by tests: who may reach each route
        return guarded

    return decorate


async def form(request: web.Request) -> dict[str, str]:
    """The posted form as plain strings (files and repeated keys ignored), control characters dropped."""
    data = await request.post()
    return {clean_text(key): clean_text(value) for key, value in data.items() if isinstance(value, str)}


def int_or_none(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    try:
        return int(raw)
    except ValueError:
        return None
