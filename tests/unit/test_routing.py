"""Routing rules, the manual dispatch queue, the routing record, and duplicate detection."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.dispatch.duplicates import DUPLICATE_THRESHOLD, content_words, find_duplicate, similarity
from crm_backend.dispatch.routing import (
    apply_dispatch,
    is_urgent,
    load_urgent_keywords,
    plan_dispatch,
    seed_routing,
    suggested_department,
    suggested_departments,
)
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import CaseEvent, Department, RoutingDecision, ServiceCase
from crm_backend.services.conversations import resolve_identity
from crm_backend.services.intake import Report, file_case

Sessions = async_sessionmaker[AsyncSession]
FILED = datetime(2026, 11, 24, 10, 0, tzinfo=CHINA_TZ)


@dataclass
class FixedPrediction:
    """A classifier outcome chosen by the test (routing is what is under test here)."""

    category: str
    confidence: float
    needs_manual_dispatch: bool = False
    top: list[tuple[str, float]] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)


def sure(category: str) -> FixedPrediction:
    return FixedPrediction(category, 0.93, top=[(category, 0.93), ("环境保护", 0.04)], suggestions=[category])


@pytest.fixture
async def seeded(sessions: Sessions) -> Sessions:
    async with sessions.begin() as session:
        assert await seed_routing(session)
    return sessions


async def test_seeding_loads_the_data_once_and_never_overwrites(seeded: Sessions) -> None:
    async with seeded.begin() as session:
        assert not await seed_routing(session)
        names = set((await session.scalars(select(Department.name))).all())
    assert {"A1区住建局", "A市生态环境局", "A7县人社局"} <= names


async def test_category_and_district_pick_the_district_department(seeded: Sessions) -> None:
    async with seeded() as session:
        plan = await plan_dispatch(
            session, prediction=sure("城乡建设"), model_version="m1", district="A1区", urgent=False, now=FILED
        )
    assert (plan.department_name, plan.queued) == ("A1区住建局", False)
    assert plan.rule == "rule: 城乡建设 × A1区"
    assert plan.due_at is not None and plan.due_at.astimezone(CHINA_TZ).date().isoformat() == "2026-12-08"


@pytest.mark.parametrize("district", [None, "K8县"])
async def test_no_district_rule_falls_back_to_the_category_default(seeded: Sessions, district: str | None) -> None:
    async with seeded() as session:
        plan = await plan_dispatch(
            session, prediction=sure("环境保护"), model_version="m1", district=district, urgent=False, now=FILED
        )
    assert plan.department_name == "A市生态环境局"
    assert plan.rule == "default for 环境保护"


async def test_low_confidence_goes_to_the_manual_queue_with_three_suggestions(seeded: Sessions) -> None:
    unsure = FixedPrediction(
        "城乡建设",
        0.41,
        needs_manual_dispatch=True,
        top=[("城乡建设", 0.41), ("环境保护", 0.33), ("交通运输", 0.12)],
        suggestions=["城乡建设", "环境保护", "交通运输"],
    )
    async with seeded() as session:
        plan = await plan_dispatch(session, prediction=unsure, model_version="m1", district="A1区", urgent=False)
    assert plan.queued and plan.department_id is None and plan.due_at is None
    assert plan.suggestions == ["城乡建设", "环境保护", "交通运输"]
    assert plan.rule.startswith("manual queue")


async def test_a_category_chosen_by_the_citizen_is_routed_even_when_the_model_was_unsure(seeded: Sessions) -> None:
    unsure = FixedPrediction("城乡建设", 0.3, needs_manual_dispatch=True, top=[("城乡建设", 0.3)])
    async with seeded() as session:
        plan = await plan_dispatch(
            session, prediction=unsure, model_version="m1", district="A2区", urgent=False, category_override="交通运输"
        )
    assert (plan.queued, plan.department_name) == (False, "A2区交通运输局")
    assert "chosen by citizen" in plan.rule


async def test_urgent_reports_are_due_today(seeded: Sessions) -> None:
    async with seeded() as session:
        plan = await plan_dispatch(
            session, prediction=sure("城乡建设"), model_version="m1", district="A3区", urgent=True, now=FILED
        )
    assert plan.due_at is not None and plan.due_at.astimezone(CHINA_TZ).date() == FILED.date()


@pytest.mark.parametrize(
    ("text", "urgent"),
    [("小区里有很大的煤气味，怀疑燃气泄漏", True), ("我们这片已经停水两天了", True), ("楼下广场舞太吵", False)],
)
def test_urgent_keywords(text: str, urgent: bool) -> None:
    assert is_urgent(text, load_urgent_keywords()) is urgent


async def file_report(sessions: Sessions, description: str, district: str = "A1区") -> ServiceCase:
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", f"citizen-{description[:4]}-{district}")
        return await file_case(session, identity, Report(description, f"{district}人民路", "13812345678", district))


async def test_routing_a_case_writes_status_event_and_decision_in_one_go(seeded: Sessions) -> None:
    case = await file_report(seeded, "小区门口的路灯坏了一个星期")
    async with seeded.begin() as session:
        case = await session.get(ServiceCase, case.id)
        assert case is not None
        plan = await plan_dispatch(
            session, prediction=sure("城乡建设"), model_version="m1", district="A1区", urgent=False, now=FILED
        )
        await apply_dispatch(session, case, plan)
    async with seeded() as session:
        stored = await session.get(ServiceCase, case.id)
        events = (await session.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id))).all()
        decision = await session.scalar(select(RoutingDecision).where(RoutingDecision.case_id == case.id))
    assert stored is not None and stored.status == CaseStatus.DISPATCHED.value
    assert (stored.category, stored.department) == ("城乡建设", "A1区住建局")
    assert [(e.from_status, e.to_status) for e in events] == [(None, "received"), ("received", "dispatched")]
    assert decision is not None
    assert (decision.rule, decision.model_version, decision.queued) == ("rule: 城乡建设 × A1区", "m1", False)
    assert decision.probabilities == {"城乡建设": 0.93, "环境保护": 0.04}


async def test_a_queued_case_stays_received_with_its_suggestions_recorded(seeded: Sessions) -> None:
    case = await file_report(seeded, "这个事情不知道该找谁")
    unsure = FixedPrediction("商贸旅游", 0.35, True, [("商贸旅游", 0.35)], ["商贸旅游", "城乡建设", "环境保护"])
    async with seeded.begin() as session:
        case = await session.get(ServiceCase, case.id)
        assert case is not None
        await apply_dispatch(
            session,
            case,
            await plan_dispatch(session, prediction=unsure, model_version="m1", district=None, urgent=False),
        )
    async with seeded() as session:
        stored = await session.get(ServiceCase, case.id)
        decision = await session.scalar(select(RoutingDecision).where(RoutingDecision.case_id == case.id))
    assert stored is not None and (stored.status, stored.department) == ("received", None)
    assert decision is not None and decision.queued and decision.suggestions == ["商贸旅游", "城乡建设", "环境保护"]


def test_similarity_of_reworded_reports_is_above_the_threshold() -> None:
    a = content_words("A1区人民路阳光小区门口的路灯坏了一个星期，晚上特别黑，老人出门很危险")
    b = content_words("阳光小区门口路灯坏了一个星期了，晚上特别黑，出门很危险，请尽快修理")
    c = content_words("A1区人民路的烧烤店油烟太大，每天晚上吵到凌晨")
    assert similarity(a, b) >= DUPLICATE_THRESHOLD
    assert similarity(a, c) < DUPLICATE_THRESHOLD


async def test_an_open_similar_case_in_the_same_district_is_a_duplicate(seeded: Sessions) -> None:
    original = await file_report(seeded, "阳光小区门口的路灯坏了一个星期，晚上特别黑，老人出门很危险")
    async with seeded() as session:
        match = await find_duplicate(session, "阳光小区门口路灯坏了一个星期了，晚上特别黑，出门很危险", "A1区")
        other_district = await find_duplicate(session, "阳光小区门口路灯坏了一个星期了，晚上特别黑，出门很危险", "A2区")
        different = await find_duplicate(session, "阳光小区的垃圾三天没人清运了", "A1区")
        long_ago = await find_duplicate(
            session, "阳光小区门口路灯坏了一个星期了，晚上特别黑", "A1区", now=original.created_at + timedelta(days=40)
        )
    assert match is not None and match.case_number == original.case_number
    assert other_district is None and different is None and long_ago is None


async def test_a_closed_case_is_not_a_duplicate(seeded: Sessions) -> None:
    original = await file_report(seeded, "阳光小区门口的路灯坏了一个星期，晚上特别黑，老人出门很危险")
    async with seeded.begin() as session:
        case = await session.get(ServiceCase, original.id)
        assert case is not None
        case.status = CaseStatus.RESOLVED.value
    async with seeded() as session:
        assert await find_duplicate(session, "阳光小区门口路灯坏了一个星期了，晚上特别黑，出门很危险", "A1区") is None


async def routed(
    sessions: Sessions, description: str, prediction: FixedPrediction, district: str | None
) -> tuple[ServiceCase, RoutingDecision]:
    """A case filed in ``district`` and routed (or queued) by ``prediction``."""
    case = await file_report(sessions, description, district or "A1区")
    async with sessions.begin() as session:
        stored = await session.get(ServiceCase, case.id)
        assert stored is not None
        stored.district = district
        plan = await plan_dispatch(
            session, prediction=prediction, model_version="m1", district=district, urgent=False, now=FILED
        )
        decision = await apply_dispatch(session, stored, plan)
        return stored, decision


async def department_named(session: AsyncSession, name: str) -> int:
    department_id = await session.scalar(select(Department.id).where(Department.name == name))
    assert department_id is not None
    return department_id


UNSURE_ENVIRONMENT = FixedPrediction(
    "环境保护",
    0.38,
    needs_manual_dispatch=True,
    top=[("环境保护", 0.38), ("城乡建设", 0.35)],
    suggestions=["环境保护", "城乡建设"],
)


@pytest.mark.parametrize(
    ("district", "expected"), [("A2区", "A2区生态环境分局"), (None, "A市生态环境局"), ("K8县", "A市生态环境局")]
)
async def test_a_queued_case_suggests_the_rules_department_for_its_top_category_and_district(
    seeded: Sessions, district: str | None, expected: str
) -> None:
    case, decision = await routed(seeded, f"河边有人倾倒垃圾{district}", UNSURE_ENVIRONMENT, district)
    async with seeded() as session:
        suggested = await suggested_department(session, case, decision)
        assert suggested == await department_named(session, expected)


async def test_a_returned_case_suggests_its_routing_decisions_department(seeded: Sessions) -> None:
    case, decision = await routed(seeded, "小区门口的路灯坏了很久", sure("城乡建设"), "A1区")
    async with seeded.begin() as session:
        stored = await session.get(ServiceCase, case.id)
        assert stored is not None
        stored.department_id, stored.status = None, CaseStatus.RETURNED.value
        assert await suggested_department(session, stored, decision) == await department_named(session, "A1区住建局")


async def test_reassigning_suggests_nothing_that_is_the_current_department(seeded: Sessions) -> None:
    case, decision = await routed(seeded, "人行道上的井盖松动了", sure("城乡建设"), "A1区")
    async with seeded() as session:
        assert case.department_id == await department_named(session, "A1区住建局")
        assert await suggested_department(session, case, decision) is None


async def test_no_decision_or_an_inactive_department_suggests_nothing(seeded: Sessions) -> None:
    queued, decision = await routed(seeded, "广场的垃圾桶满了没人清", UNSURE_ENVIRONMENT, "A3区")
    async with seeded.begin() as session:
        department = await session.get(Department, await department_named(session, "A3区生态环境分局"))
        assert department is not None
        department.active = False
        suggested = await suggested_departments(session, [(queued, decision), (queued, None)])
    assert suggested == {}
