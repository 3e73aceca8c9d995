"""Administration: staff accounts, departments and routing rules, each change audited.

Every change writes its audit row in the caller's transaction, so both land together
or not at all. Refusals are `InvalidInput` with a sentence the admin can act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.models import CategoryPolicy, Department, RoutingRule, StaffUser
from crm_backend.services import audit, staff

MAX_DEADLINE_DAYS = 60
USER_OPERATIONS = ("deactivate", "activate", "password")


async def departments(session: AsyncSession, *, by_code: bool = False) -> list[Department]:
    """Every department, by name (or by code)."""
    order = Department.code if by_code else Department.name
    return list((await session.scalars(select(Department).order_by(order))).all())


# --- staff accounts ------------------------------------------------------------------


async def create_user(
    session: AsyncSession,
    actor: StaffUser,
    *,
    username: str,
    display_name: str,
    password: str,
    role: str,
    department_code: str | None,
    address: str = "",
) -> StaffUser:
    """Add a member of staff (see `staff.create_user`), audited.

    Raises:
        InvalidInput: as `staff.create_user`.
    """
    user = await staff.create_user(
        session,
        username=username,
        display_name=display_name,
        password=password,
        role=role,
        department_code=department_code,
    )
    audit.record(session, actor, "user.create", user.username, user.role, address=address)
    return user


async def change_user(
    session: AsyncSession,
    actor: StaffUser,
    user_id: int | None,
    operation: str,
    *,
    password: str = "",
    address: str = "",
) -> StaffUser:
    """Deactivate, activate or reset the password of an account, audited; the account.

    Raises:
        NotFound: no such account.
        InvalidInput: an unknown operation, a weak password, or an admin deactivating themselves.
    """
    if operation not in USER_OPERATIONS:
        raise InvalidInput("bad_op", "未知的操作")
    target = await session.get(StaffUser, user_id) if user_id else None
    if target is None:
        raise NotFound("user")
    if operation == "password":
        await staff.set_password(session, target.id, password)
    else:
        if target.id == actor.id:
            raise InvalidInput("self", "不能停用自己的账号")
        target.active = operation == "activate"
    audit.record(session, actor, f"user.{operation}", target.username, address=address)
    return target


# --- departments -----------------------------------------------------------------------


async def save_department(
    session: AsyncSession,
    actor: StaffUser,
    *,
    department_id: int | None,
    code: str,
    name: str,
    district: str | None,
    active: bool,
    districts: Sequence[str],
    address: str = "",
) -> Department:
    """Add a department (no ``department_id``) or change one's name, district and state, audited.

    Raises:
        InvalidInput: a bad name, district or code, or a code already taken.
        NotFound: no department with that id.
    """
    name = name.strip()
    if not 0 < len(name) <= 64:
        raise InvalidInput("bad_name", "部门名称为 1-64 个字符")
    if district is not None and district not in districts:
        raise InvalidInput("bad_district", "区县无效")
    if department_id is None:
        code = code.strip()
        if not 0 < len(code) <= 64 or not code.replace("-", "").replace("_", "").isalnum():
            raise InvalidInput("bad_code", "部门编码为字母、数字、连字符")
        if await session.scalar(select(Department.id).where(Department.code == code)):
            raise InvalidInput("code_taken", f"编码 {code} 已存在")
        department = Department(code=code, name=name, district=district, active=True)
        session.add(department)
        action = "department.create"
    else:
        found = await session.get(Department, department_id)
        if found is None:
            raise NotFound("department")
        department = found
        department.name, department.district, department.active = name, district, active
        action = "department.update"
    audit.record(session, actor, action, department.code, name, address=address)
    return department


# --- routing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingTable:
    """What the routing page shows: deadlines and default departments, and district rules."""

    policies: list[CategoryPolicy]
    rules: list[RoutingRule]
    departments: list[Department]


async def routing_table(session: AsyncSession) -> RoutingTable:
    policies = await session.scalars(select(CategoryPolicy).order_by(CategoryPolicy.category))
    rules = await session.scalars(select(RoutingRule).order_by(RoutingRule.category, RoutingRule.district))
    return RoutingTable(list(policies.all()), list(rules.all()), await departments(session))


async def change_routing(
    session: AsyncSession,
    actor: StaffUser,
    operation: str,
    category: str,
    *,
    districts: Sequence[str],
    district: str = "",
    department_id: int | None = None,
    deadline_working_days: int | None = None,
    address: str = "",
) -> str:
    """Change how a category is routed, audited; the change in words.

    ``policy`` sets the category's deadline and default department; ``rule`` sends the
    category's cases from a district to a department; ``delete-rule`` removes that rule.

    Raises:
        InvalidInput: an unknown operation, category, district or department, or a deadline out of range.
    """
    if category not in CATEGORIES:
        raise InvalidInput("bad_category", "分类无效")
    if operation == "policy":
        policy = await session.get(CategoryPolicy, category)
        department = await _active_department(session, department_id)
        days = deadline_working_days
        if policy is None or days is None or not 1 <= days <= MAX_DEADLINE_DAYS:
            raise InvalidInput("bad_days", f"办理时限为 1-{MAX_DEADLINE_DAYS} 个工作日")
        policy.deadline_working_days, policy.default_department_id = days, department.id
        detail = f"{days} 个工作日，默认 {department.name}"
    elif operation in ("rule", "delete-rule"):
        if district not in districts:
            raise InvalidInput("bad_district", "区县无效")
        await session.execute(
            delete(RoutingRule).where(RoutingRule.category == category, RoutingRule.district == district)
        )
        detail = f"{district} 删除规则"
        if operation == "rule":
            department = await _active_department(session, department_id)
            session.add(RoutingRule(category=category, district=district, department_id=department.id))
            detail = f"{district} → {department.name}"
    else:
        raise InvalidInput("bad_op", "未知的操作")
    audit.record(session, actor, f"routing.{operation}", category, detail, address=address)
    return detail


async def _active_department(session: AsyncSession, department_id: int | None) -> Department:
    department = await session.get(Department, department_id) if department_id else None
    if department is None or not department.active:
        raise InvalidInput("bad_department", "请选择一个在用的部门")
    return department
