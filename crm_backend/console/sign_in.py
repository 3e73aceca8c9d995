"""The second step of signing in: a TOTP or recovery code, or setting up two-factor sign-in.

After the right password (`ConversationViews.login`) a session that must still give a code
or enrol holds only that step (`staff.SessionStep`): every other console page sends it here
(`crm_backend.console.web.signed_in`). A signed-in member of staff who need not use two
factors may enrol of their own accord on the same page.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from crm_backend.console.web import SESSION_COOKIE, ConsoleBase, form, home_page, secure
from crm_backend.errors import NotFound
from crm_backend.http import client_address
from crm_backend.lifecycle import Role
from crm_backend.models import StaffSession, StaffUser
from crm_backend.services import staff, two_factor

CSRF_REFUSED = '{"error": "csrf", "message": "页面已过期，请刷新后重试"}'


class SignInStepViews(ConsoleBase):
    """/console/login/code and /console/login/enrol."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/login/code", self.code_page)
        app.router.add_post("/console/login/code", self.code_post)
        app.router.add_get("/console/login/enrol", self.enrol_page)
        app.router.add_post("/console/login/enrol", self.enrol_post)

    async def _session(self, request: web.Request, *steps: str | None) -> tuple[StaffSession, StaffUser]:
        """The session behind the cookie, if it waits for one of `steps` (None: fully signed in)."""
        async with self.sessions.begin() as session:
            found = await staff.find_session(session, request.cookies.get(SESSION_COOKIE, ""), pending=True)
        if found is None or found[0].pending_step not in steps:
            raise web.HTTPSeeOther("/console/login")
        if request.method == "POST":
            supplied = str((await request.post()).get("csrf", ""))
            if not hmac.compare_digest(supplied.encode(), found[0].csrf_token.encode()):
                raise web.HTTPForbidden(text=CSRF_REFUSED, content_type="application/json")
        return found

    # --- a code ------------------------------------------------------------------

    async def code_page(self, request: web.Request) -> web.StreamResponse:
        row, _user = await self._session(request, staff.SessionStep.CODE)
        return self.render(request, "login_code.html", step_csrf=row.csrf_token)

    async def code_post(self, request: web.Request) -> web.StreamResponse:
        row, user = await self._session(request, staff.SessionStep.CODE)
        code = (await form(request)).get("code", "")[:32]
        try:
            accepted = await staff.second_factor(
                self.sessions, request.cookies.get(SESSION_COOKIE, ""), code, client_address(request)
            )
        except staff.LoginThrottled as error:
            return self.render(request, "login_code.html", step_csrf=row.csrf_token, error=str(error), status=429)
        except NotFound as gone:
            raise web.HTTPSeeOther("/console/login") from gone
        if accepted is None:
            return self.render(
                request, "login_code.html", step_csrf=row.csrf_token, error=staff.CODE_REFUSED, status=401
            )
        response = secure(web.HTTPSeeOther(home_page(Role(user.role))))
        if accepted.token:
            self.set_session_cookie(response, accepted.token)
        raise response

    # --- enrolment -----------------------------------------------------------------

    async def enrol_page(self, request: web.Request) -> web.StreamResponse:
        row, user = await self._session(request, staff.SessionStep.ENROL, None)
        return await self._enrol_form(request, row, user)

    async def _enrol_form(
        self, request: web.Request, row: StaffSession, user: StaffUser, *, error: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        async with self.sessions.begin() as session:
            member = await session.get(StaffUser, user.id)
            if member is None:
                raise web.HTTPSeeOther("/console/login")
            already = two_factor.enrolled(member)
            enrolment = None if already else two_factor.start_enrolment(member)
            required = await two_factor.required(session, member)
        return self.render(
            request,
            "two_factor_enrol.html",
            step_csrf=row.csrf_token,
            enrolment=enrolment,
            already=already,
            required=required,
            error=error,
            status=status,
        )

    async def enrol_post(self, request: web.Request) -> web.StreamResponse:
        row, user = await self._session(request, staff.SessionStep.ENROL, None)
        code = (await form(request)).get("code", "")[:32]
        try:
            done = await staff.second_factor(
                self.sessions, request.cookies.get(SESSION_COOKIE, ""), code, client_address(request), enrol=True
            )
        except staff.LoginThrottled as error:
            return await self._enrol_form(request, row, user, error=str(error), status=429)
        except NotFound as gone:
            raise web.HTTPSeeOther("/console/login") from gone
        if done is None:
            return await self._enrol_form(request, row, user, error=staff.CODE_REFUSED, status=422)
        response = self.render(
            request, "two_factor_codes.html", codes=done.recovery_codes, home=home_page(Role(user.role))
        )
        if done.token:
            self.set_session_cookie(response, done.token)
        return response
