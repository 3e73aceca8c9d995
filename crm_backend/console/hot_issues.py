"""The console's hot-issue page: the cached top 10, and supervisors' corrections of the grouping.

Supervisors and admins only (an agent gets 404, as for every page above their role). The
page reads the newest ranking the job or the ``hot-issues`` command stored for the window;
it never computes one.
"""

from __future__ import annotations

from datetime import date
from urllib.parse import urlencode

from aiohttp import web

from crm_backend.console.web import ConsoleBase, Staff, form, signed_in
from crm_backend.errors import InvalidInput
from crm_backend.hotissues import service
from crm_backend.http import client_address
from crm_backend.lifecycle import Permission

TOP = 10


def _date_or_none(raw: str | None) -> date | None:
    try:
        return date.fromisoformat(raw) if raw else None
    except ValueError:
        return None


class HotIssueViews(ConsoleBase):
    """热点问题: the ranking, merge two issues, take a message out."""

    def __init__(self, base: ConsoleBase) -> None:
        super().__init__(**base.share())

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/hot-issues", self.page)
        app.router.add_post("/console/hot-issues/merge", self.merge)
        app.router.add_post("/console/hot-issues/unrelated", self.unrelated)

    @signed_in(Permission.SUPERVISE)
    async def page(self, request: web.Request) -> web.StreamResponse:
        return await self._page(request, request.query.get("since"), request.query.get("until"))

    async def _page(
        self, request: web.Request, since_raw: str | None, until_raw: str | None, *, error: str | None = None
    ) -> web.StreamResponse:
        since, until = _date_or_none(since_raw), _date_or_none(until_raw)
        async with self.sessions() as session:
            snapshot = await service.cached_snapshot(session, since=since, until=until)
            issues = await service.snapshot_issues(session, snapshot, limit=TOP) if snapshot else []
        return self.render(
            request,
            "hot_issues.html",
            status=422 if error else 200,
            error=error,
            snapshot=snapshot,
            issues=issues,
            since=snapshot.since.isoformat() if snapshot else (since_raw or ""),
            until=snapshot.until.isoformat() if snapshot else (until_raw or ""),
        )

    @signed_in(Permission.SUPERVISE)
    async def merge(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        try:
            async with self.sessions.begin() as session:
                await service.merge_issues(
                    session, member.user, data.get("issue", ""), data.get("into", ""), address=client_address(request)
                )
        except InvalidInput as problem:
            return await self._page(request, data.get("since"), data.get("until"), error=str(problem))
        self.done(request, self._back(data), "已将两个问题合并为一个；重新计算时仍会保持")

    @signed_in(Permission.SUPERVISE)
    async def unrelated(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        try:
            async with self.sessions.begin() as session:
                await service.mark_unrelated(
                    session, member.user, data.get("message", ""), address=client_address(request)
                )
        except InvalidInput as problem:
            return await self._page(request, data.get("since"), data.get("until"), error=str(problem))
        self.done(request, self._back(data), f"已将 {data.get('message', '')} 移出热点问题")

    @staticmethod
    def _back(data: dict[str, str]) -> str:
        window = {key: data[key] for key in ("since", "until") if _date_or_none(data.get(key))}
        return "/console/hot-issues" + (f"?{urlencode(window)}" if window else "")
