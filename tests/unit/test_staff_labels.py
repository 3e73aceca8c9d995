"""Staff decisions kept as training data: every entry point where a person decides a category
writes one staff label (console and API here, the bot's category buttons in test_actions), and
the manual dispatch queue lists the least sure cases first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.dispatch.deadlines import due_at
from crm_backend.dispatch.routing import apply_dispatch, plan_dispatch, seed_routing
from crm_backend.dispatch.service import Dispatcher, Preview
from crm_backend.models import (
    AuditEntry,
    CaseEvent,
    CategoryPolicy,
    Department,
    ServiceCase,
    StaffLabel,
    StaffUser,
    utcnow,
)
from crm_backend.services import api_clients, casework, staff
from crm_backend.services.conversations import current_conversation, resolve_identity
from crm_backend.services.intake import Report, file_case, file_report
from crm_backend.services.moves import Actor
from tests.support.console_app import console_app
from tests.unit.test_console_hot_issues import PASSWORD, signed_in_as
from tests.unit.test_routing import FixedPrediction

Sessions = async_sessionmaker[AsyncSession]
Client = TestClient[web.Request, web.Application]
WORDS = "小区门口垃圾堆了一个星期没人清运，味道很大"


def unsure(confidence: float) -> FixedPrediction:
    """The model leans to 环境保护, below the manual dispatch threshold."""
    return FixedPrediction(
        "环境保护",
        confidence,
        needs_manual_dispatch=True,
        top=[("环境保护", confidence), ("城乡建设", round(confidence / 2, 2))],
        suggestions=["环境保护", "城乡建设"],
    )


async def queued_case(sessions: Sessions, sender: str, confidence: float = 0.41, *, filed_minutes_ago: int = 0) -> str:
    """A case the model (version m1) sent to the manual queue; its number."""
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", sender)
        conversation = await current_conversation(session, identity)
        case = await file_case(
            session,
            identity,
            Report(description=WORDS, location="A1区人民路", contact_phone="13812345678", district="A1区"),
            conversation_id=conversation.id,
        )
        case.created_at = utcnow() - timedelta(minutes=filed_minutes_ago)
        plan = await plan_dispatch(
            session, prediction=unsure(confidence), model_version="m1", district="A1区", urgent=False
        )
        await apply_dispatch(session, case, plan)
        return case.case_number


class SilentNotices:
    """The citizen's notices of a move, not sent (they are not under test)."""

    async def record(self, session: AsyncSession, case: ServiceCase, event: CaseEvent) -> Any:
        return None

    def deliver(self, notice: Any) -> None:
        return None


@pytest.fixture
async def seeded(sessions: Sessions) -> Sessions:
    async with sessions.begin() as session:
        await seed_routing(session)
        await staff.create_user(session, username="wang", display_name="王", password=PASSWORD, role="supervisor")
    return sessions


@pytest.fixture
async def client(seeded: Sessions) -> AsyncIterator[Client]:
    """The console's and the API's routes in process, their collaborators absent but 派单's notices."""
    async with TestClient(TestServer(console_app(seeded, watcher=SilentNotices()))) as test_client:
        yield test_client


async def department_id(sessions: Sessions, name: str) -> int:
    async with sessions() as session:
        found = await session.scalar(select(Department.id).where(Department.name == name))
    assert found is not None
    return found


async def labels(sessions: Sessions) -> list[StaffLabel]:
    async with sessions() as session:
        return list((await session.scalars(select(StaffLabel).order_by(StaffLabel.id))).all())


async def api_key(sessions: Sessions) -> dict[str, str]:
    async with sessions.begin() as session:
        issued = await api_clients.create_client(session, name="desk-tool", scope="write")
    return {"Authorization": f"Bearer {issued.key}"}


def summary(label: StaffLabel) -> tuple[Any, ...]:
    return (
        label.text,
        label.model_version,
        label.model_category,
        label.staff_category,
        label.decision,
        label.channel,
        label.actor,
    )


async def test_dispatch_from_the_console_queue_records_the_staff_category(seeded: Sessions, client: Client) -> None:
    number = await queued_case(seeded, "a")
    csrf = await signed_in_as(seeded, client, "wang")
    housing = await department_id(seeded, "A1区住建局")
    response = await client.post(
        f"/console/cases/{number}/action",
        data={"csrf": csrf, "action": "dispatch", "department_id": str(housing), "category": "城乡建设"},
        allow_redirects=False,
    )
    assert response.status in (302, 303), await response.text()
    [label] = await labels(seeded)
    assert summary(label) == (WORDS, "m1", "环境保护", "城乡建设", "dispatch", "console", "wang")
    assert label.model_confidence == pytest.approx(0.41)
    async with seeded() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
    assert case is not None and case.category == "城乡建设"


async def test_reassign_and_correction_in_the_console_are_recorded(seeded: Sessions, client: Client) -> None:
    number = await queued_case(seeded, "a")
    csrf = await signed_in_as(seeded, client, "wang")
    housing = await department_id(seeded, "A1区住建局")
    environment = await department_id(seeded, "A市生态环境局")
    for data in (
        {"action": "dispatch", "department_id": str(housing), "category": "城乡建设"},
        {"action": "reassign", "department_id": str(environment), "category": "环境保护"},
    ):
        sent = await client.post(f"/console/cases/{number}/action", data={"csrf": csrf, **data}, allow_redirects=False)
        assert sent.status in (302, 303), await sent.text()
    corrected = await client.post(
        f"/console/cases/{number}/category", data={"csrf": csrf, "category": "卫生计生"}, allow_redirects=False
    )
    assert corrected.status in (302, 303), await corrected.text()
    assert [(label.decision, label.staff_category, label.channel) for label in await labels(seeded)] == [
        ("dispatch", "城乡建设", "console"),
        ("reassign", "环境保护", "console"),
        ("correction", "卫生计生", "console"),
    ]


async def test_dispatch_and_correction_through_the_api_are_recorded(seeded: Sessions, client: Client) -> None:
    number = await queued_case(seeded, "a")
    headers = await api_key(seeded)
    moved = await client.post(
        f"/api/v1/cases/{number}/transitions",
        json={"action": "dispatch", "department": "A1-housing", "category": "城乡建设"},
        headers=headers,
    )
    assert moved.status == 200, await moved.text()
    corrected = await client.post(f"/api/v1/cases/{number}/category", json={"category": "商贸旅游"}, headers=headers)
    assert corrected.status == 200, await corrected.text()
    assert (await corrected.json())["category"] == "商贸旅游"
    assert [summary(label) for label in await labels(seeded)] == [
        (WORDS, "m1", "环境保护", "城乡建设", "dispatch", "api", "api:desk-tool"),
        (WORDS, "m1", "环境保护", "商贸旅游", "correction", "api", "api:desk-tool"),
    ]


async def test_an_unknown_category_is_refused_and_nothing_is_recorded(seeded: Sessions, client: Client) -> None:
    number = await queued_case(seeded, "a")
    headers = await api_key(seeded)
    refused = await client.post(f"/api/v1/cases/{number}/category", json={"category": "天气"}, headers=headers)
    assert refused.status == 422
    assert await labels(seeded) == []


async def test_the_queue_lists_the_least_sure_cases_first_then_the_oldest(seeded: Sessions) -> None:
    sure_old = await queued_case(seeded, "a", 0.70, filed_minutes_ago=50)
    unsure_new = await queued_case(seeded, "b", 0.30, filed_minutes_ago=10)
    middling_new = await queued_case(seeded, "c", 0.55, filed_minutes_ago=5)
    middling_old = await queued_case(seeded, "d", 0.55, filed_minutes_ago=40)
    async with seeded() as session:
        queue = await casework.dispatch_queue(session)
    assert [case.case_number for case, _ in queue] == [unsure_new, middling_old, middling_new, sure_old]
    assert [cast(Any, decision).confidence for _, decision in queue] == [0.30, 0.55, 0.55, 0.70]


async def test_a_category_staff_choose_when_filing_a_draft_is_recorded(seeded: Sessions) -> None:
    """The console's 登记工单 with a 分类 chosen: `file_report` with the member of staff as actor."""
    async with seeded.begin() as session:
        user = await session.scalar(select(StaffUser).where(StaffUser.username == "wang"))
        assert user is not None
        identity = await resolve_identity(session, "web", "drafted")
        plan = await plan_dispatch(
            session,
            prediction=unsure(0.41),
            model_version="m1",
            district="A1区",
            urgent=False,
            category_override="城乡建设",
        )
        none = cast(Any, None)
        await file_report(
            session,
            Dispatcher(none, none, ()),
            identity,
            Report(description=WORDS, location="A1区人民路", contact_phone="13812345678", district="A1区"),
            Preview(plan=plan, location=none, duplicate=None),
            actor=Actor.staff(user),
        )
    [label] = await labels(seeded)
    assert summary(label) == (WORDS, "m1", "环境保护", "城乡建设", "filing", "console", "wang")


async def test_dispatch_with_a_new_category_takes_that_categorys_deadline_and_says_so(seeded: Sessions) -> None:
    number = await queued_case(seeded, "a")
    housing = await department_id(seeded, "A1区住建局")
    async with seeded.begin() as session:
        user = await session.scalar(select(StaffUser).where(StaffUser.username == "wang"))
        assert user is not None
        move = await casework.perform(session, user, number, "dispatch", department_id=housing, category="教育文体")
        policy = await session.get(CategoryPolicy, "教育文体")
        assert policy is not None
        entry = await session.scalar(select(AuditEntry).where(AuditEntry.action == "case.dispatch"))
    assert move.case.category == "教育文体"
    assert move.case.due_at == due_at(move.event.created_at, policy.deadline_working_days)
    assert entry is not None and entry.detail.endswith("；分类 环境保护 → 教育文体；部门 无 → A1区住建局")
    assert move.event.note == "A1区住建局。分类：教育文体"
