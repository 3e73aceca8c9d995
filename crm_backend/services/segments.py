"""Segments of citizens (民众关系管理), computed from what the CRM holds, in SQL.

Each segment is a set of citizen ids, built as a subquery that the case list
(`/console/cases?segment=...`), the dashboard's counts and the citizen page all use:

- 企业 (enterprise): one of the citizen's case descriptions names 企业, 公司, 个体户, 商户 or 厂;
  every other citizen is a 居民 (resident).
- 重复反映 (repeat reporter): at least two cases filed in the 90 days up to the reference time.
- 不满意 (dissatisfied): a 回访 rating of 1 or 2 given in the 90 days up to the reference time.
- 热点问题相关 (affected by an open hot issue): filled by the hot-issue work; empty until then.

The reference time is the end of the period asked about (the dashboard's `until`), or now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Select, case, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.models import Citizen, Satisfaction, ServiceCase, utcnow


class Segment(StrEnum):
    """The groups of citizens the console counts and filters by."""

    ENTERPRISE = "enterprise"
    RESIDENT = "resident"
    REPEAT = "repeat"
    DISSATISFIED = "dissatisfied"
    HOT_ISSUE = "hot_issue"

    @property
    def label(self) -> str:
        return SEGMENT_LABELS[self]


SEGMENT_LABELS: dict[Segment, str] = {
    Segment.ENTERPRISE: "企业",
    Segment.RESIDENT: "居民",
    Segment.REPEAT: "重复反映",
    Segment.DISSATISFIED: "不满意",
    Segment.HOT_ISSUE: "热点问题相关",
}
# Words in a case description that say the citizen writes for a business.
ENTERPRISE_WORDS = ("企业", "公司", "个体户", "商户", "厂")
SEGMENT_WINDOW = timedelta(days=90)
REPEAT_MIN_CASES = 2
DISSATISFIED_MAX_RATING = 2


def parse_segment(raw: str | None) -> Segment | None:
    """A segment from a query parameter; None (no filter) for anything else."""
    try:
        return Segment(raw) if raw else None
    except ValueError:
        return None


def enterprise_citizen_ids() -> Select[tuple[int]]:
    """Citizens with a case whose description names a business (企业/公司/个体户/商户/厂)."""
    named = or_(*(ServiceCase.description.contains(word, autoescape=True) for word in ENTERPRISE_WORDS))
    return select(ServiceCase.citizen_id).where(named)


def repeat_citizen_ids(as_of: datetime) -> Select[tuple[int]]:
    """Citizens who filed at least `REPEAT_MIN_CASES` cases in the 90 days up to `as_of`."""
    return (
        select(ServiceCase.citizen_id)
        .where(ServiceCase.created_at > as_of - SEGMENT_WINDOW, ServiceCase.created_at <= as_of)
        .group_by(ServiceCase.citizen_id)
        .having(func.count(ServiceCase.id) >= REPEAT_MIN_CASES)
    )


def dissatisfied_citizen_ids(as_of: datetime) -> Select[tuple[int]]:
    """Citizens who rated a case 1 or 2 in the 90 days up to `as_of`."""
    return (
        select(ServiceCase.citizen_id)
        .join(Satisfaction, Satisfaction.case_id == ServiceCase.id)
        .where(
            Satisfaction.rating <= DISSATISFIED_MAX_RATING,
            Satisfaction.created_at > as_of - SEGMENT_WINDOW,
            Satisfaction.created_at <= as_of,
        )
    )


def hot_issue_citizen_ids(as_of: datetime) -> Select[tuple[int]]:
    """Citizens with a case in a hot issue that is still open at `as_of`.

    TODO(lead): hot issues are built in parallel (issue 14, 热点问题); replace this with the
    citizen ids of the cases grouped into open hot issues. Until then it selects no one, so the
    segment counts 0 and its filter lists no case: it is empty, not made up.
    """
    return select(ServiceCase.citizen_id).where(false())


def segment_citizen_ids(segment: Segment, as_of: datetime) -> Select[tuple[int]]:
    """The citizen ids of one segment, as a subquery to filter or count with."""
    if segment is Segment.ENTERPRISE:
        return enterprise_citizen_ids()
    if segment is Segment.RESIDENT:
        return select(Citizen.id).where(Citizen.id.not_in(enterprise_citizen_ids()))
    if segment is Segment.REPEAT:
        return repeat_citizen_ids(as_of)
    if segment is Segment.DISSATISFIED:
        return dissatisfied_citizen_ids(as_of)
    return hot_issue_citizen_ids(as_of)


@dataclass(frozen=True)
class SegmentCounts:
    """How many citizens who filed a case in the period belong to each segment."""

    citizens: int
    by_segment: dict[Segment, int]


async def segment_counts(
    session: AsyncSession, *, since: datetime, until: datetime, department_ids: list[int] | None = None
) -> SegmentCounts:
    """Count the segments among the citizens with a case filed in [since, until), in one query.

    Args:
        session: any session.
        since: start of the period (inclusive).
        until: end of the period (exclusive); the 90-day windows of 重复反映 and 不满意 end here.
        department_ids: only citizens with a case of these departments in the period (an agent's
            dashboard); None for all. A citizen in the population is placed in a segment by all
            their cases, whichever department handled them.
    """
    population = select(ServiceCase.citizen_id).where(ServiceCase.created_at >= since, ServiceCase.created_at < until)
    if department_ids is not None:
        population = population.where(ServiceCase.department_id.in_(department_ids))
    people = population.distinct().subquery()
    citizen = people.c.citizen_id
    counted = [
        func.coalesce(func.sum(case((citizen.in_(segment_citizen_ids(segment, until)), 1), else_=0)), 0)
        for segment in Segment
    ]
    row = (await session.execute(select(func.count(citizen), *counted).select_from(people))).one()
    return SegmentCounts(int(row[0]), {segment: int(value) for segment, value in zip(Segment, row[1:], strict=True)})


async def segments_of(session: AsyncSession, citizen_id: int, *, as_of: datetime | None = None) -> list[Segment]:
    """The segments one citizen belongs to."""
    as_of = as_of or utcnow()
    found = []
    for segment in Segment:
        ids = segment_citizen_ids(segment, as_of).subquery()
        if await session.scalar(select(func.count()).select_from(ids).where(ids.c[0] == citizen_id)):
            found.append(segment)
    return found
