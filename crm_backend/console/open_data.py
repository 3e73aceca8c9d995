"""The open dataset from the console: a month's CSV or JSON, for supervisors and admins.

The same files as ``python -m crm_backend open-data`` writes (`crm_backend.services.open_data`,
default generalisation), streamed as they are read; every download is audited with the member
of staff and the file. Agents and auditors get 404, as for every page above their role.
"""

from __future__ import annotations

from aiohttp import web

from crm_backend.console.web import ConsoleBase, Staff, secure, signed_in
from crm_backend.errors import NotFound
from crm_backend.http import client_address
from crm_backend.lifecycle import Permission
from crm_backend.services import audit, open_data

CONTENT_TYPES = {"csv": "text/csv", "json": "application/json"}


class OpenDataViews(ConsoleBase):
    """开放数据: ``/console/open-data/cases-YYYY-MM.csv`` and ``.json``."""

    def __init__(self, base: ConsoleBase) -> None:
        super().__init__(**base.share())

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/open-data/{name}", self.download)

    @signed_in(Permission.SUPERVISE)
    async def download(self, request: web.Request) -> web.StreamResponse:
        """Parse the file name, audit, stream the file.

        Raises:
            NotFound: not ``cases-….csv`` or ``cases-….json``.
            InvalidInput: the month is not ``YYYY-MM`` (422).
        """
        member: Staff = request["staff"]
        name = request.match_info["name"]
        stem, _, extension = name.rpartition(".")
        if not stem.startswith("cases-") or extension not in open_data.FORMATS:
            raise NotFound("open data file")
        period = open_data.Period.month(stem.removeprefix("cases-"))
        async with self.sessions.begin() as session:
            audit.record(session, member.user, "open_data.download", name, address=client_address(request))
        response = secure(web.StreamResponse())
        response.content_type = CONTENT_TYPES[extension]
        response.charset = "utf-8"
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
        await response.prepare(request)
        async with self.sessions() as session:
            async for piece in open_data.stream_dataset(session, period, open_data.FORMATS[extension]()):
                await response.write(piece.encode("utf-8"))
        await response.write_eof()
        return response
