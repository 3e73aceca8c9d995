"""Hot issues in the CRM: supervisors' decisions, the cached ranking, and the job that fills it.

The ranking of 100,000 cases takes tens of seconds of CPU, so it is never computed on a
request: `HotIssueJob` (or ``python -m crm_backend hot-issues``) computes it off the event
loop and stores a `HotIssueSnapshot`; pages read the newest snapshot of their window with
`top_issues`, which applies the decisions made since, so a merge shows at once. Each
snapshot's cases are also stored as `HotIssueMember` rows (the 热点问题相关 segment and the
citizen page join on them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import date, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend import periodic
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.errors import InvalidInput
from crm_backend.hotissues.core import Decisions, HotIssue, HotRecord, Locate, hot_issues, rerank
from crm_backend.hotissues.sources import records_from_cases
from crm_backend.models import HotIssueDecision, HotIssueMember, HotIssueSnapshot, StaffUser, utcnow
from crm_backend.services import audit
from crm_backend.shared import Leases

logger = logging.getLogger(__name__)

CACHED_ISSUES = 100  # issues kept per snapshot, each with every message behind it
MERGE = "merge"
UNRELATED = "unrelated"
MAX_KEY_CHARS = 64


async def load_decisions(session: AsyncSession) -> Decisions:
    """Every decision supervisors made, oldest first."""
    rows = (await session.scalars(select(HotIssueDecision).order_by(HotIssueDecision.id))).all()
    return Decisions(
        unrelated=frozenset(row.message_key for row in rows if row.kind == UNRELATED),
        merges=tuple((row.message_key, row.other_key) for row in rows if row.kind == MERGE and row.other_key),
    )


def _key(raw: str) -> str:
    key = raw.strip()
    if not key or len(key) > MAX_KEY_CHARS:
        raise InvalidInput("bad_message_key", "请指明消息（工单编号或留言编号）")
    return key


async def merge_issues(
    session: AsyncSession, actor: StaffUser | None, first_key: str, second_key: str, *, address: str = ""
) -> HotIssueDecision:
    """Record that the issue holding message `first_key` and the one holding `second_key` are one.

    Raises:
        InvalidInput: a key is empty or too long, or both are the same message.
    """
    first, second = _key(first_key), _key(second_key)
    if first == second:
        raise InvalidInput("same_issue", "请选择另一个问题合并")
    decision = HotIssueDecision(kind=MERGE, message_key=first, other_key=second, actor_id=actor.id if actor else None)
    session.add(decision)
    audit.record(session, actor, "hot_issue.merge", first, f"into {second}", address=address)
    return decision


async def mark_unrelated(
    session: AsyncSession, actor: StaffUser | None, message_key: str, *, address: str = ""
) -> HotIssueDecision:
    """Record that message `message_key` belongs to no hot issue.

    Raises:
        InvalidInput: the key is empty or too long.
    """
    key = _key(message_key)
    decision = HotIssueDecision(kind=UNRELATED, message_key=key, actor_id=actor.id if actor else None)
    session.add(decision)
    audit.record(session, actor, "hot_issue.unrelated", key, address=address)
    return decision


def rank_records(
    records: list[HotRecord], decisions: Decisions, *, until: date, locate: Locate | None, limit: int = CACHED_ISSUES
) -> list[HotIssue]:
    """The ranking of `records` with the decisions applied (CPU work: call it in a thread)."""
    return hot_issues(records, until=until, decisions=decisions, limit=limit, locate=locate)


async def refresh_snapshot(
    sessions: async_sessionmaker[AsyncSession], since: date, until: date, *, locate: Locate | None = None
) -> HotIssueSnapshot:
    """Rank the cases filed in the window and store the ranking, replacing older ones of that window."""
    async with sessions() as session:
        records = await records_from_cases(session, since, until)
        decisions = await load_decisions(session)
    started = time.perf_counter()
    issues = await asyncio.to_thread(rank_records, records, decisions, until=until, locate=locate)
    seconds = time.perf_counter() - started
    snapshot = HotIssueSnapshot(
        since=since,
        until=until,
        message_count=len(records),
        seconds=round(seconds, 3),
        issues=[issue.to_json() for issue in issues],
        computed_at=utcnow(),
    )
    async with sessions.begin() as session:
        replaced = select(HotIssueSnapshot.id).where(HotIssueSnapshot.since == since, HotIssueSnapshot.until == until)
        await session.execute(delete(HotIssueMember).where(HotIssueMember.snapshot_id.in_(replaced)))
        await session.execute(
            delete(HotIssueSnapshot).where(HotIssueSnapshot.since == since, HotIssueSnapshot.until == until)
        )
        session.add(snapshot)
        await session.flush()
        session.add_all(members_of(snapshot.id, issues))
    logger.info("hot issues of %s..%s: %s cases ranked in %.1fs", since, until, len(records), seconds)
    return snapshot


def members_of(snapshot_id: int, issues: list[HotIssue]) -> list[HotIssueMember]:
    """The membership rows of a snapshot's issues: one per message (a case number for cases)."""
    return [
        HotIssueMember(snapshot_id=snapshot_id, case_number=member.key, issue_id=issue.issue_id)
        for issue in issues
        for member in issue.members
    ]


async def cached_snapshot(
    session: AsyncSession, *, since: date | None = None, until: date | None = None
) -> HotIssueSnapshot | None:
    """The newest snapshot of the window (any window when both are None)."""
    query = select(HotIssueSnapshot).order_by(HotIssueSnapshot.id.desc()).limit(1)
    if since is not None and until is not None:
        query = query.where(HotIssueSnapshot.since == since, HotIssueSnapshot.until == until)
    return (await session.scalars(query)).first()


async def snapshot_issues(session: AsyncSession, snapshot: HotIssueSnapshot, *, limit: int = 10) -> list[HotIssue]:
    """A snapshot's issues with the decisions made since applied, hottest first."""
    issues = [HotIssue.from_json(data) for data in snapshot.issues]
    return rerank(issues, await load_decisions(session), until=snapshot.until)[:limit]


async def top_issues(session: AsyncSession, *, since: date, until: date, limit: int = 10) -> list[HotIssue]:
    """The cached top issues of a window, for the dashboard (no computation: [] until the job has run)."""
    snapshot = await cached_snapshot(session, since=since, until=until)
    if snapshot is None:
        return []
    return await snapshot_issues(session, snapshot, limit=limit)


def default_window(days: int, today: date | None = None) -> tuple[date, date]:
    """The last `days` China dates up to today, both included."""
    today = today or utcnow().astimezone(CHINA_TZ).date()
    return today - timedelta(days=days - 1), today


class HotIssueJob:
    """Recomputes the ranking of the last `window_days` every `interval_seconds` (0: off).

    Given `leases`, only the app process holding the job's lease computes it (tens of seconds of CPU).
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        window_days: int,
        interval_seconds: float,
        locate: Locate | None = None,
        leases: Leases | None = None,
    ) -> None:
        self._sessions = sessions
        self._leases = leases
        self._window_days = window_days
        self._interval = interval_seconds
        self._locate = locate
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> HotIssueSnapshot:
        since, until = default_window(self._window_days)
        return await refresh_snapshot(self._sessions, since, until, locate=self._locate)

    def start(self) -> None:
        if self._interval > 0:
            self._task = asyncio.create_task(
                periodic.every(
                    self._interval, self.run_once, "hot-issue ranking", leases=self._leases, lease="hot-issues"
                ),
                name="hot-issues",
            )

    async def stop(self) -> None:
        await periodic.cancel(self._task)
