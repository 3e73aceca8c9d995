"""The console's citizen page: every channel, conversation and case of one citizen, and their segments."""

from __future__ import annotations

from aiohttp import web

from crm_backend.console.web import ConsoleBase, Staff, signed_in
from crm_backend.http import client_address
from crm_backend.services import citizens

# Ids past this are no citizen's (and would overflow the database's integer).
MAX_ID_DIGITS = 12


class CitizenViews(ConsoleBase):
    """One citizen as staff see them."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"/console/citizens/{{citizen_id:\\d{{1,{MAX_ID_DIGITS}}}}}", self.citizen_page)

    @signed_in()
    async def citizen_page(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        async with self.sessions.begin() as session:
            profile = await citizens.citizen_profile(
                session, member.user, int(request.match_info["citizen_id"]), address=client_address(request)
            )
        return self.render(request, "citizen.html", profile=profile)
