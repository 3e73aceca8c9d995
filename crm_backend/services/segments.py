"""Segments of citizens (民众关系管理), computed from what the CRM holds, in SQL.

Each segment is one SQL predicate on a citizen (`in_segment`), which the case list
(`/console/cases?segment=...`), the dashboard's counts and the citizen page all use:

- 企业 (enterprise): one of the citizen's case descriptions names 企业, 公司, 个体户, 商户 or 厂;
  every other citizen is a 居民 (resident).
- 重复反映 (repeat reporter): at least two cases filed in the 90 days up to the reference time.
- 不满意 (dissatisfied): a 回访 rating of 1 or 2 given in the 90 days up to the reference time.
- 热点问题相关 (affected by a hot issue): a case of theirs is in an issue of the newest stored
  hot-issue ranking (`HotIssueMember`); no one until the ranking has been computed once.

The reference time is the end of the period asked about (the dashboard's `until`), or now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, Select, and_, case, func, literal, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_backend.models import (
    BUSINESS_WORDS,
    HotIssueDecision,
    HotIssueMember,
    HotIssueSnapshot,
    Satisfaction,
    ServiceCase,
    utcnow,
)


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
ENTERPRISE_WORDS = BUSINESS_WORDS
SEGMENT_WINDOW = timedelta(days=90)
REPEAT_MIN_CASES = 2
DISSATISFIED_MAX_RATING = 2
UNRELATED_DECISION = "unrelated"  # crm_backend.hotissues.service.UNRELATED (not imported: it pulls in numpy)


def parse_segment(raw: str | None) -> Segment | None:
    """A segment from a query parameter; None (no filter) for anything else."""
    try:
        return Segment(raw) if raw else None
    except ValueError:
        return None


def _named_business(cases: type[ServiceCase] | Any) -> ColumnElement[bool]:
    """The cases naming a business, spelled as the partial index ``ix_service_case_business_citizen_id``.

    The description is encrypted at rest, so the flag is set when it is written
    (`crm_backend.models.names_business`). ``= true()`` is a literal, not a parameter, so a
    planner can match the index's predicate: ``names_business = 1`` on SQLite, and on PostgreSQL
    ``names_business = true``, which it simplifies to the index's ``names_business``.
    """
    return cases.names_business == true()


def latest_snapshot_id() -> ScalarSelect[int | None]:
    """The id of the newest stored hot-issue ranking (any window): the city's current hot issues."""
    return select(func.max(HotIssueSnapshot.id)).scalar_subquery()


def _current_member() -> ColumnElement[bool]:
    """A `HotIssueMember` row of the newest ranking whose message was not marked unrelated since."""
    unrelated = select(HotIssueDecision.message_key).where(HotIssueDecision.kind == UNRELATED_DECISION)
    return and_(HotIssueMember.snapshot_id == latest_snapshot_id(), HotIssueMember.case_number.not_in(unrelated))


def hot_issue_case_numbers() -> Select[tuple[str]]:
    """The case numbers in an issue of the newest hot-issue ranking, less those marked unrelated since."""
    return select(HotIssueMember.case_number).where(_current_member())


def same_issue_case_numbers(case_number: str) -> Select[tuple[str]]:
    """The other case numbers in the issue holding `case_number` in the newest hot-issue ranking.

    Empty when the case is in no current issue (or was marked unrelated); the messages marked
    unrelated since the ranking was stored are left out, as in `hot_issue_case_numbers`.
    """
    issue = select(HotIssueMember.issue_id).where(_current_member(), HotIssueMember.case_number == case_number)
    return select(HotIssueMember.case_number).where(
        _current_member(), HotIssueMember.issue_id.in_(issue), HotIssueMember.case_number != case_number
    )


def hot_issue_citizen_ids(as_of: datetime) -> Select[tuple[int]]:
    """Citizens with a case in an issue of the newest stored hot-issue ranking.

    The ranking is the job's (the last `HOT_ISSUES_WINDOW_DAYS` days, recomputed every few
    minutes) or the ``hot-issues`` command's, whichever was stored last; its cases are the
    `HotIssueMember` rows written with it. A message a supervisor marked 不属于此问题 after the
    ranking was stored leaves at once. `as_of` is not used: the ranking is the current one.
    """
    del as_of
    return select(ServiceCase.citizen_id).where(ServiceCase.case_number.in_(hot_issue_case_numbers()))


def dissatisfied_citizen_ids(as_of: datetime) -> Select[tuple[int]]:
    """Citizens who gave a 1–2 rating in the 90 days up to `as_of`, in one pass over those ratings.

    For many citizens at once (the dashboard's counts, the case list); `in_segment` asks per
    citizen, which is cheaper for one.
    """
    return (
        select(ServiceCase.citizen_id)
        .join(Satisfaction, Satisfaction.case_id == ServiceCase.id)
        .where(
            Satisfaction.rating <= DISSATISFIED_MAX_RATING,
            Satisfaction.created_at > as_of - SEGMENT_WINDOW,
            Satisfaction.created_at <= as_of,
        )
    )


def in_segment(segment: Segment, citizen_id: ColumnElement[int] | Any, as_of: datetime) -> ColumnElement[bool]:
    """Whether the citizen `citizen_id` (a column or a value) is in `segment` at `as_of`.

    Correlated on ``service_case.citizen_id`` (indexed), so its cost grows with the citizens
    asked about, not with the whole table.
    """
    if segment is Segment.HOT_ISSUE:
        return citizen_id.in_(hot_issue_citizen_ids(as_of))
    cases = aliased(ServiceCase)
    if segment in (Segment.ENTERPRISE, Segment.RESIDENT):
        named = select(cases.id).where(cases.citizen_id == citizen_id, _named_business(cases)).exists()
        return named if segment is Segment.ENTERPRISE else ~named
    if segment is Segment.REPEAT:
        recent = (
            select(func.count(cases.id))
            .where(
                cases.citizen_id == citizen_id,
                cases.created_at > as_of - SEGMENT_WINDOW,
                cases.created_at <= as_of,
            )
            .scalar_subquery()
        )
        return recent >= REPEAT_MIN_CASES
    return (
        select(Satisfaction.id)
        .join(cases, cases.id == Satisfaction.case_id)
        .where(
            cases.citizen_id == citizen_id,
            Satisfaction.rating <= DISSATISFIED_MAX_RATING,
            Satisfaction.created_at > as_of - SEGMENT_WINDOW,
            Satisfaction.created_at <= as_of,
        )
        .exists()
    )


def case_in_segment(segment: Segment, as_of: datetime) -> ColumnElement[bool]:
    """The case list's filter: cases whose citizen is in `segment` at `as_of`.

    The list reads cases newest first and stops at a page, so a per-row test is cheap for a
    common segment; 企业 may be rare (a per-row test could read the whole table to fill a
    page), so its citizens are found in one pass over the descriptions instead.
    """
    if segment is Segment.ENTERPRISE:
        cases = aliased(ServiceCase)
        return ServiceCase.citizen_id.in_(select(cases.citizen_id).where(_named_business(cases)))
    if segment is Segment.DISSATISFIED:
        return ServiceCase.citizen_id.in_(dissatisfied_citizen_ids(as_of))
    return in_segment(segment, ServiceCase.citizen_id, as_of)


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
    # 居民 is everyone who is not 企业: counted by subtraction, not by a second scan.
    counted_segments: list[Segment] = [segment for segment in Segment if segment is not Segment.RESIDENT]
    # 不满意 as one pass over the window's ratings: per citizen it would read every case of theirs.
    counted = [
        func.coalesce(
            func.sum(
                case(
                    (
                        citizen.in_(dissatisfied_citizen_ids(until))
                        if segment is Segment.DISSATISFIED
                        else in_segment(segment, citizen, until),
                        1,
                    ),
                    else_=0,
                )
            ),
            0,
        )
        for segment in counted_segments
    ]
    row = (await session.execute(select(func.count(citizen), *counted).select_from(people))).one()
    total = int(row[0])
    by_segment: dict[Segment, int] = {
        segment: int(value) for segment, value in zip(counted_segments, row[1:], strict=True)
    }
    by_segment[Segment.RESIDENT] = total - by_segment[Segment.ENTERPRISE]
    return SegmentCounts(total, {segment: by_segment[segment] for segment in Segment})


async def segments_of(session: AsyncSession, citizen_id: int, *, as_of: datetime | None = None) -> list[Segment]:
    """The segments one citizen belongs to."""
    as_of = as_of or utcnow()
    who = literal(citizen_id)
    row = (await session.execute(select(*(in_segment(segment, who, as_of) for segment in Segment)))).one()
    return [segment for segment, member in zip(Segment, row, strict=True) if member]
