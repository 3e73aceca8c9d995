"""答复质量, stored: every staff reply and 办结 result scored when it is written, averages per department.

`record` is called where replies (`casework.record_reply`) and 办结 results (`moves.move_case`)
are written, in their transaction; `rescore` (re)scores existing ones in batches
(``python -m crm_backend score-replies``); `reply_quality_by_department` is one SQL aggregate
for the dashboard. The scoring itself is `crm_backend.analytics.reply_quality`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.analytics.reply_quality import SCORER_VERSION, ReplyQuality, score_reply
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import CaseEvent, Department, ReplyScore, ServiceCase

REPLY = "reply"
RESULT = "result"  # the 办结 note, sent to the citizen as the case's result
BATCH_SIZE = 200
NO_DEPARTMENT = "未派单"


def _kind_of(event: CaseEvent) -> str | None:
    """Whether an event is scored: a reply, a 办结 result with its note, or neither."""
    if event.kind == "reply" and event.note.strip():
        return REPLY
    if event.kind == "status" and event.to_status == CaseStatus.RESOLVED.value and event.note.strip():
        return RESULT
    return None


def _scored_events() -> ColumnElement[bool]:
    """The events `_kind_of` scores, as a WHERE clause."""
    return and_(
        CaseEvent.note != "",
        or_(
            CaseEvent.kind == "reply",
            and_(CaseEvent.kind == "status", CaseEvent.to_status == CaseStatus.RESOLVED.value),
        ),
    )


def _quality(case: ServiceCase, event: CaseEvent, replied_at: datetime) -> ReplyQuality:
    return score_reply(case.description, event.note, asked_at=case.created_at, replied_at=replied_at, due=case.due_at)


def _row(case: ServiceCase, event: CaseEvent, kind: str, replied_at: datetime, quality: ReplyQuality) -> ReplyScore:
    return ReplyScore(
        event_id=event.id,
        case_id=case.id,
        department_id=case.department_id,
        kind=kind,
        reasons=list(quality.reasons),
        scorer_version=SCORER_VERSION,
        replied_at=replied_at,
        **quality.as_dict(),
    )


async def record(
    session: AsyncSession, case: ServiceCase, event: CaseEvent, *, at: datetime | None = None
) -> ReplyScore | None:
    """Score a reply or 办结 result just written, in the caller's transaction.

    Args:
        session: the caller's session; the event is flushed here if it was not yet.
        case: the event's case.
        event: the reply or the status event of 办结 (others are not scored: returns None).
        at: when the reply was written, for historical imports; default the event's time.
    """
    kind = _kind_of(event)
    if kind is None:
        return None
    if event.id is None or event.created_at is None:
        await session.flush()
    replied_at = at or event.created_at
    # Segmenting runs off the event loop (jieba's dictionary loads on first use, a few seconds).
    quality = await asyncio.to_thread(_quality, case, event, replied_at)
    score = _row(case, event, kind, replied_at, quality)
    session.add(score)
    return score


async def scores_for(session: AsyncSession, events: Sequence[CaseEvent]) -> dict[int, ReplyScore]:
    """The stored scores of these events, by event id (events without one are absent)."""
    ids = [event.id for event in events if _kind_of(event) is not None]
    if not ids:
        return {}
    rows = await session.scalars(select(ReplyScore).where(ReplyScore.event_id.in_(ids)))
    return {row.event_id: row for row in rows}


@dataclass(frozen=True)
class RescoreResult:
    """What `rescore` did."""

    scored: int
    batches: int


async def rescore(
    sessions: async_sessionmaker[AsyncSession], *, everything: bool = False, batch_size: int = BATCH_SIZE
) -> RescoreResult:
    """(Re)score existing replies and 办结 results in batches, one transaction per batch.

    Args:
        sessions: the session factory; each batch commits on its own, so an interrupted run
            keeps what it did and the next run carries on.
        everything: rescore every reply; by default only those with no score or a score from
            an older `SCORER_VERSION`.
        batch_size: events per batch.
    """
    scored = batches = 0
    after = 0
    while True:
        async with sessions.begin() as session:
            stmt = (
                select(CaseEvent, ServiceCase)
                .join(ServiceCase, ServiceCase.id == CaseEvent.case_id)
                .outerjoin(ReplyScore, ReplyScore.event_id == CaseEvent.id)
                .where(_scored_events(), CaseEvent.id > after)
                .order_by(CaseEvent.id)
                .limit(batch_size)
            )
            if not everything:
                stmt = stmt.where(or_(ReplyScore.id.is_(None), ReplyScore.scorer_version != SCORER_VERSION))
            pairs = [(event, case) for event, case in (await session.execute(stmt)).all()]
            if not pairs:
                return RescoreResult(scored, batches)
            rows = await asyncio.to_thread(_score_batch, pairs)
            await session.execute(delete(ReplyScore).where(ReplyScore.event_id.in_([e.id for e, _ in pairs])))
            session.add_all(rows)
            scored += len(rows)
            batches += 1
            after = pairs[-1][0].id


def _score_batch(pairs: list[tuple[CaseEvent, ServiceCase]]) -> list[ReplyScore]:
    rows = []
    for event, case in pairs:
        kind = _kind_of(event)
        if kind is not None:
            rows.append(_row(case, event, kind, event.created_at, _quality(case, event, event.created_at)))
    return rows


@dataclass(frozen=True)
class DepartmentReplyQuality:
    """A department's average reply scores over a period (0-100, one decimal)."""

    department_id: int | None
    department: str
    replies: int
    total: float
    relevance: float
    completeness: float
    interpretability: float
    timeliness: float


async def reply_quality_by_department(
    session: AsyncSession,
    *,
    since: datetime,
    until: datetime,
    department_ids: Collection[int] | None = None,
) -> list[DepartmentReplyQuality]:
    """Average reply scores per department for replies written in [since, until), lowest total first.

    One GROUP BY over ``reply_score`` (indexed on department and time). ``department_ids``
    limits it to those departments (an agent's own); None means all, including replies on
    cases that had no department (shown as 未派单).
    """
    averages = [
        func.avg(column)
        for column in (
            ReplyScore.total,
            ReplyScore.relevance,
            ReplyScore.completeness,
            ReplyScore.interpretability,
            ReplyScore.timeliness,
        )
    ]
    stmt = (
        select(ReplyScore.department_id, Department.name, func.count(ReplyScore.id), *averages)
        .outerjoin(Department, Department.id == ReplyScore.department_id)
        .where(ReplyScore.replied_at >= since, ReplyScore.replied_at < until)
        .group_by(ReplyScore.department_id, Department.name)
    )
    if department_ids is not None:
        stmt = stmt.where(ReplyScore.department_id.in_(list(department_ids)))
    rows = [
        DepartmentReplyQuality(
            department_id,
            name or NO_DEPARTMENT,
            count,
            *(round(float(value), 1) for value in values),
        )
        for department_id, name, count, *values in (await session.execute(stmt)).all()
    ]
    return sorted(rows, key=lambda row: (row.total, row.department))
