"""Administration: staff accounts, departments, routing rules; and the audit log.

The audit log is read-only here as everywhere: its page is a GET with filters, and no route
changes or deletes a row (the database's triggers would refuse it anyway).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from aiohttp import web

from crm_backend.console.web import ConsoleBase, Staff, form, int_or_none, signed_in
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.errors import InvalidInput
from crm_backend.http import client_address
from crm_backend.lifecycle import Permission, Role
from crm_backend.services import admin, audit, staff, two_factor

AUDIT_PAGE = 100


def _china_date(raw: str | None) -> str:
    """A YYYY-MM-DD date from a filter field, or "" if it is not one."""
    try:
        return date.fromisoformat((raw or "").strip()).isoformat()
    except ValueError:
        return ""


def _china_midnight(day: str, *, next_day: bool = False) -> datetime | None:
    """The start (or, with `next_day`, the end) of a China date, as an aware time."""
    if not day:
        return None
    start = datetime.combine(date.fromisoformat(day), time(), tzinfo=CHINA_TZ)
    return start + timedelta(days=1) if next_day else start


class AdminViews(ConsoleBase):
    """Pages only admins reach; and the audit log, for those who may read it (auditors, supervisors, admins)."""

    def __init__(self, base: ConsoleBase, districts: Sequence[str]) -> None:
        super().__init__(**base.share())
        self.districts = districts

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/audit", self.audit_log)
        app.router.add_get("/console/admin/users", self.users)
        app.router.add_post("/console/admin/users", self.users_post)
        app.router.add_get("/console/admin/departments", self.departments)
        app.router.add_post("/console/admin/departments", self.departments_post)
        app.router.add_get("/console/admin/routing", self.routing)
        app.router.add_post("/console/admin/routing", self.routing_post)

    @signed_in(Permission.READ_AUDIT)
    async def audit_log(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        before = int_or_none(query.get("before"))
        filters = {
            "action": query.get("action", "")[:48],
            "actor": query.get("actor", "").strip()[:64],
            "since": _china_date(query.get("since")),
            "until": _china_date(query.get("until")),
        }
        async with self.sessions() as session:
            entries = await audit.recent_entries(
                session,
                before_id=before,
                action=filters["action"] or None,
                actor=filters["actor"] or None,
                since=_china_midnight(filters["since"]),
                until=_china_midnight(filters["until"], next_day=True),
                limit=AUDIT_PAGE,
            )
        return self.render(
            request,
            "audit.html",
            entries=entries,
            filters=filters,
            filter_query=urlencode({key: value for key, value in filters.items() if value}),
            next_before=entries[-1].entry.id if len(entries) == AUDIT_PAGE else None,
        )

    # --- users -------------------------------------------------------------------

    @signed_in(Permission.ADMINISTER)
    async def users(self, request: web.Request) -> web.StreamResponse:
        return await self._users_page(request)

    async def _users_page(
        self, request: web.Request, *, error: str | None = None, notice: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        async with self.sessions() as session:
            users = await staff.list_users(session)
            departments = await admin.departments(session)
            totp_for_all = await two_factor.required_for_all(session)
        names = {d.id: d.name for d in departments}
        return self.render(
            request,
            "admin_users.html",
            status=status,
            error=error,
            notice=notice,
            users=users,
            departments=departments,
            department_names=names,
            roles=list(Role),
            totp_for_all=totp_for_all,
            totp_enrolled={user.id for user in users if two_factor.enrolled(user)},
        )

    @signed_in(Permission.ADMINISTER)
    async def users_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        address = client_address(request)
        try:
            async with self.sessions.begin() as session:
                operation = data.get("op", "")
                if operation == "totp_all":
                    on = data.get("value") == "1"
                    await two_factor.set_required_for_all(session, member.user, on, address=address)
                    notice = "已要求所有人使用两步验证" if on else "已改为仅值班长、管理员、审计员必须使用两步验证"
                elif operation == "totp_reset":
                    target = await two_factor.reset(
                        session, member.user, int_or_none(data.get("user_id")), address=address
                    )
                    notice = f"已重置 {target.username} 的两步验证，其下次登录时重新设置"
                elif operation == "create":
                    user = await admin.create_user(
                        session,
                        member.user,
                        username=data.get("username", ""),
                        display_name=data.get("display_name", ""),
                        password=data.get("password", ""),
                        role=data.get("role", ""),
                        department_code=data.get("department") or None,
                        address=address,
                    )
                    notice = f"已创建用户 {user.username}"
                else:
                    target = await admin.change_user(
                        session,
                        member.user,
                        int_or_none(data.get("user_id")),
                        operation,
                        password=data.get("password", ""),
                        address=address,
                    )
                    notice = {
                        "password": f"已重置 {target.username} 的密码",
                        "activate": f"已启用 {target.username}",
                        "deactivate": f"已停用 {target.username}",
                    }[operation]
        except InvalidInput as problem:
            return await self._users_page(request, error=str(problem), status=422)
        self.done(request, "/console/admin/users", notice)

    # --- departments ---------------------------------------------------------------

    @signed_in(Permission.ADMINISTER)
    async def departments(self, request: web.Request) -> web.StreamResponse:
        return await self._departments_page(request)

    async def _departments_page(
        self, request: web.Request, *, error: str | None = None, notice: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        async with self.sessions() as session:
            departments = await admin.departments(session, by_code=True)
        return self.render(
            request,
            "admin_departments.html",
            status=status,
            error=error,
            notice=notice,
            departments=departments,
            districts=self.districts,
        )

    @signed_in(Permission.ADMINISTER)
    async def departments_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        try:
            department_id = int_or_none(data.get("department_id"))
            async with self.sessions.begin() as session:
                department = await admin.save_department(
                    session,
                    member.user,
                    department_id=department_id,
                    code=data.get("code", ""),
                    name=data.get("name", ""),
                    district=data.get("district") or None,
                    active=data.get("active") == "1",
                    districts=self.districts,
                    address=client_address(request),
                )
            notice = f"已添加部门 {department.name}" if department_id is None else f"已保存 {department.name}"
        except InvalidInput as problem:
            return await self._departments_page(request, error=str(problem), status=422)
        self.done(request, "/console/admin/departments", notice)

    # --- routing -----------------------------------------------------------------

    @signed_in(Permission.ADMINISTER)
    async def routing(self, request: web.Request) -> web.StreamResponse:
        return await self._routing_page(request)

    async def _routing_page(
        self, request: web.Request, *, error: str | None = None, notice: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        async with self.sessions() as session:
            table = await admin.routing_table(session)
        return self.render(
            request,
            "admin_routing.html",
            status=status,
            error=error,
            notice=notice,
            policies=table.policies,
            rules=table.rules,
            departments=table.departments,
            names={d.id: d.name for d in table.departments},
            categories=CATEGORIES,
            districts=self.districts,
        )

    @signed_in(Permission.ADMINISTER)
    async def routing_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        try:
            category = data.get("category", "")
            async with self.sessions.begin() as session:
                detail = await admin.change_routing(
                    session,
                    member.user,
                    data.get("op", ""),
                    category,
                    districts=self.districts,
                    district=data.get("district", ""),
                    department_id=int_or_none(data.get("department_id")),
                    deadline_working_days=int_or_none(data.get("deadline_working_days")),
                    address=client_address(request),
                )
        except InvalidInput as problem:
            return await self._routing_page(request, error=str(problem), status=422)
        self.done(request, "/console/admin/routing", f"已保存：{category} {detail}")
