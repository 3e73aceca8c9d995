"""Administration: staff accounts, departments, routing rules; and the audit log for supervisors."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import delete, select

from crm_backend.console.web import ConsoleBase, Staff, form, int_or_none, signed_in
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.http import client_address
from crm_backend.lifecycle import Role
from crm_backend.models import CategoryPolicy, Department, RoutingRule, StaffUser
from crm_backend.services import audit, staff

MAX_DEADLINE_DAYS = 60


class AdminViews(ConsoleBase):
    """Pages only admins (and, for the audit log, supervisors) reach."""

    def __init__(self, base: ConsoleBase, districts: list[str]) -> None:
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

    @signed_in(Role.SUPERVISOR)
    async def audit_log(self, request: web.Request) -> web.StreamResponse:
        before = int_or_none(request.query.get("before"))
        action = request.query.get("action") or None
        async with self.sessions() as session:
            entries = await audit.recent_entries(session, before_id=before, action=action, limit=100)
        return self.render(
            request,
            "audit.html",
            entries=entries,
            action=action or "",
            next_before=entries[-1].id if len(entries) == 100 else None,
        )

    # --- users -------------------------------------------------------------------

    @signed_in(Role.ADMIN)
    async def users(self, request: web.Request) -> web.StreamResponse:
        return await self._users_page(request)

    async def _users_page(
        self, request: web.Request, *, error: str | None = None, notice: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        async with self.sessions() as session:
            users = await staff.list_users(session)
            departments = list((await session.scalars(select(Department).order_by(Department.name))).all())
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
        )

    @signed_in(Role.ADMIN)
    async def users_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        address = client_address(request)
        try:
            async with self.sessions.begin() as session:
                operation = data.get("op")
                if operation == "create":
                    user = await staff.create_user(
                        session,
                        username=data.get("username", ""),
                        display_name=data.get("display_name", ""),
                        password=data.get("password", ""),
                        role=data.get("role", ""),
                        department_code=data.get("department") or None,
                    )
                    audit.record(session, member.user, "user.create", user.username, user.role, address=address)
                    notice = f"已创建用户 {user.username}"
                elif operation in ("deactivate", "activate", "password"):
                    user_id = int_or_none(data.get("user_id"))
                    target = await session.get(StaffUser, user_id) if user_id else None
                    if target is None:
                        raise NotFound("user")
                    if operation == "password":
                        await staff.set_password(session, target.id, data.get("password", ""))
                        notice = f"已重置 {target.username} 的密码"
                    else:
                        if target.id == member.user.id:
                            raise InvalidInput("self", "不能停用自己的账号")
                        target.active = operation == "activate"
                        notice = f"已{'启用' if target.active else '停用'} {target.username}"
                    audit.record(session, member.user, f"user.{operation}", target.username, address=address)
                else:
                    raise InvalidInput("bad_op", "未知的操作")
        except InvalidInput as problem:
            return await self._users_page(request, error=str(problem), status=422)
        self.done(request, "/console/admin/users", notice)

    # --- departments ---------------------------------------------------------------

    @signed_in(Role.ADMIN)
    async def departments(self, request: web.Request) -> web.StreamResponse:
        return await self._departments_page(request)

    async def _departments_page(
        self, request: web.Request, *, error: str | None = None, notice: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        async with self.sessions() as session:
            departments = list((await session.scalars(select(Department).order_by(Department.code))).all())
        return self.render(
            request,
            "admin_departments.html",
            status=status,
            error=error,
            notice=notice,
            departments=departments,
            districts=self.districts,
        )

    @signed_in(Role.ADMIN)
    async def departments_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        try:
            async with self.sessions.begin() as session:
                name = data.get("name", "").strip()
                if not 0 < len(name) <= 64:
                    raise InvalidInput("bad_name", "部门名称为 1-64 个字符")
                district = data.get("district") or None
                if district is not None and district not in self.districts:
                    raise InvalidInput("bad_district", "区县无效")
                department_id = int_or_none(data.get("department_id"))
                if department_id is None:
                    code = data.get("code", "").strip()
                    if not 0 < len(code) <= 64 or not code.replace("-", "").replace("_", "").isalnum():
                        raise InvalidInput("bad_code", "部门编码为字母、数字、连字符")
                    if await session.scalar(select(Department.id).where(Department.code == code)):
                        raise InvalidInput("code_taken", f"编码 {code} 已存在")
                    session.add(Department(code=code, name=name, district=district, active=True))
                    action, target, notice = "department.create", code, f"已添加部门 {name}"
                else:
                    department = await session.get(Department, department_id)
                    if department is None:
                        raise NotFound("department")
                    department.name, department.district = name, district
                    department.active = data.get("active") == "1"
                    action, target, notice = "department.update", department.code, f"已保存 {name}"
                audit.record(session, member.user, action, target, name, address=client_address(request))
        except InvalidInput as problem:
            return await self._departments_page(request, error=str(problem), status=422)
        self.done(request, "/console/admin/departments", notice)

    # --- routing -----------------------------------------------------------------

    @signed_in(Role.ADMIN)
    async def routing(self, request: web.Request) -> web.StreamResponse:
        return await self._routing_page(request)

    async def _routing_page(
        self, request: web.Request, *, error: str | None = None, notice: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        async with self.sessions() as session:
            policies = list((await session.scalars(select(CategoryPolicy).order_by(CategoryPolicy.category))).all())
            rules = list(
                (await session.scalars(select(RoutingRule).order_by(RoutingRule.category, RoutingRule.district))).all()
            )
            departments = list((await session.scalars(select(Department).order_by(Department.name))).all())
        return self.render(
            request,
            "admin_routing.html",
            status=status,
            error=error,
            notice=notice,
            policies=policies,
            rules=rules,
            departments=departments,
            names={d.id: d.name for d in departments},
            categories=CATEGORIES,
            districts=self.districts,
        )

    @signed_in(Role.ADMIN)
    async def routing_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        data = await form(request)
        try:
            async with self.sessions.begin() as session:
                operation = data.get("op")
                category = data.get("category", "")
                if category not in CATEGORIES:
                    raise InvalidInput("bad_category", "分类无效")
                if operation == "policy":
                    policy = await session.get(CategoryPolicy, category)
                    days = int_or_none(data.get("deadline_working_days"))
                    department = await self._active_department(session, data.get("department_id"))
                    if policy is None or days is None or not 1 <= days <= MAX_DEADLINE_DAYS:
                        raise InvalidInput("bad_days", f"办理时限为 1-{MAX_DEADLINE_DAYS} 个工作日")
                    policy.deadline_working_days, policy.default_department_id = days, department.id
                    detail = f"{days} 个工作日，默认 {department.name}"
                elif operation in ("rule", "delete-rule"):
                    district = data.get("district", "")
                    if district not in self.districts:
                        raise InvalidInput("bad_district", "区县无效")
                    await session.execute(
                        delete(RoutingRule).where(RoutingRule.category == category, RoutingRule.district == district)
                    )
                    detail = f"{district} 删除规则"
                    if operation == "rule":
                        department = await self._active_department(session, data.get("department_id"))
                        session.add(RoutingRule(category=category, district=district, department_id=department.id))
                        detail = f"{district} → {department.name}"
                else:
                    raise InvalidInput("bad_op", "未知的操作")
                audit.record(
                    session, member.user, f"routing.{operation}", category, detail, address=client_address(request)
                )
        except InvalidInput as problem:
            return await self._routing_page(request, error=str(problem), status=422)
        self.done(request, "/console/admin/routing", f"已保存：{category} {detail}")

    async def _active_department(self, session: object, raw: str | None) -> Department:
        department_id = int_or_none(raw)
        department = await session.get(Department, department_id) if department_id else None  # type: ignore[attr-defined]
        if department is None or not department.active:
            raise InvalidInput("bad_department", "请选择一个在用的部门")
        return department
