"""The console's category-model page: every version with its figures, each version's accuracy
against staff decisions per week, and the admin's rollback."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from aiohttp import web

from crm_backend.console.web import ConsoleBase, Staff, signed_in
from crm_backend.errors import InvalidTransition
from crm_backend.http import client_address
from crm_backend.lifecycle import Permission
from crm_backend.models import utcnow
from crm_backend.services import model_versions

WEEKS_SHOWN = 26  # the weekly agreement table covers about half a year


class ModelVersionViews(ConsoleBase):
    """/console/admin/models: the versions and the rollback (admins only)."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/admin/models", self.versions)
        app.router.add_post("/console/admin/models/rollback", self.rollback)

    @signed_in(Permission.ADMINISTER)
    async def versions(self, request: web.Request) -> web.StreamResponse:
        return await self._page(request)

    async def _page(self, request: web.Request, *, error: str | None = None, status: int = 200) -> web.StreamResponse:
        async with self.sessions() as session:
            versions = await model_versions.list_versions(session)
            weeks = await model_versions.weekly_accuracy(session, since=utcnow() - timedelta(weeks=WEEKS_SHOWN))
        by_version: dict[str, list[model_versions.WeekAccuracy]] = defaultdict(list)
        for week in weeks:
            by_version[week.version].append(week)
        return self.render(
            request,
            "admin_models.html",
            status=status,
            error=error,
            versions=versions,
            weeks=dict(by_version),
            status_labels=model_versions.STATUS_LABELS,
        )

    @signed_in(Permission.ADMINISTER)
    async def rollback(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        try:
            async with self.sessions.begin() as session:
                gone, back = await model_versions.rollback(session, member.user, address=client_address(request))
        except InvalidTransition as problem:
            return await self._page(request, error=str(problem), status=409)
        self.done(request, "/console/admin/models", f"已回滚：{gone} → {back}（各进程将在检查间隔内切换到 {back}）")
