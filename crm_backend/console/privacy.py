"""Citizens' privacy requests in the console: supervisors see them, admins carry them out.

A copy request is answered with the citizen's data as a JSON download (then marked done); an
erasure request is carried out here (`privacy.forget_citizen`, the CRM and the engine's tracker
store) or refused with a reason. Every step is audited by the service.
"""

from __future__ import annotations

import json

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.console.web import ConsoleBase, Staff, form, signed_in
from crm_backend.errors import NotFound
from crm_backend.http import client_address
from crm_backend.lifecycle import Permission
from crm_backend.models import PrivacyRequest
from crm_backend.services import privacy

STATUS_CHOICES = (privacy.PENDING, privacy.DONE, privacy.REFUSED)


class PrivacyViews(ConsoleBase):
    """The list of requests, and what an admin does with one."""

    def __init__(self, base: ConsoleBase, tracker_store_url: str | None) -> None:
        super().__init__(**base.share())
        self.tracker_store_url = tracker_store_url

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/privacy", self.requests)
        app.router.add_post("/console/privacy/{request_id:\\d{1,12}}", self.handle)
        app.router.add_get("/console/privacy/{request_id:\\d{1,12}}/export.json", self.export)

    @signed_in(Permission.SUPERVISE)
    async def requests(self, request: web.Request) -> web.StreamResponse:
        status = request.query.get("status", privacy.PENDING)
        if status not in STATUS_CHOICES:
            status = privacy.PENDING
        async with self.sessions() as session:
            rows = await privacy.list_requests(session, status=status)
        return self.render(request, "privacy.html", rows=rows, shown=status)

    @signed_in(Permission.ADMINISTER)
    async def handle(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        request_id = int(request.match_info["request_id"])
        data = await form(request)
        operation = data.get("op", "")
        address = client_address(request)
        async with self.sessions.begin() as session:
            found = await self._pending(session, request_id)
            if operation == "erase" and found.kind == privacy.ERASURE:
                forgotten = await privacy.forget_citizen(
                    session, found.citizen_id, member.user, tracker_store_url=self.tracker_store_url, address=address
                )
                notice = f"已删除该市民的个人信息：{forgotten.cases} 件工单已匿名化，{forgotten.messages} 条消息已删除"
            elif operation == "done" and found.kind == privacy.COPY:
                await privacy.close_request(session, request_id, member.user, address=address)
                notice = "已标记为已提供副本"
            elif operation == "refuse" and data.get("reason", "").strip():
                await privacy.close_request(
                    session, request_id, member.user, refused_because=data["reason"].strip(), address=address
                )
                notice = "已驳回该申请"
            else:
                return self.render(
                    request,
                    "privacy.html",
                    status=400,
                    rows=await privacy.list_requests(session),
                    shown=privacy.PENDING,
                    error="无法执行：请选择正确的操作，驳回时须填写理由",
                )
        self.done(request, "/console/privacy", notice)

    @signed_in(Permission.ADMINISTER)
    async def export(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        async with self.sessions.begin() as session:
            found = await self._pending(session, int(request.match_info["request_id"]))
            data = await privacy.export_citizen(session, found.citizen_id, member.user, address=client_address(request))
        body = json.dumps(data, ensure_ascii=False, indent=2)
        return web.Response(
            text=body,
            content_type="application/json",
            charset="utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="citizen-{found.citizen_id}.json"',
                "Cache-Control": "no-store",
            },
        )

    @staticmethod
    async def _pending(session: AsyncSession, request_id: int) -> PrivacyRequest:
        found = await session.get(PrivacyRequest, request_id)
        if found is None or found.status != privacy.PENDING:
            raise NotFound("没有这个待处理的申请")
        return found
