"""The dashboard's figures: what a 12345 centre is judged on, for a period and a scope.

Every figure is a `Table` (title, columns, rows of `Cell`s); a cell may carry a link to the
case list showing the cases behind it. The figures:

- **Headline** (概览): 工单量, 按时签收率, 按时办结率, 当前超期, 回访率, 满意率, 机器人独立解决率,
  each the total of the table that details it (computed once per request, `Context.once`).
- **Volume**: cases per day by channel, category and district; conversations and messages.
- **Timeliness**, per department (the department a case is with now; 未派单 for none):
  - 按时签收率: of the dispatched cases whose outcome is known, the share signed for (签收) by
    their sign-for deadline. The sign-for deadline is the end of the next working day after
    the first 派单 (the day of the 派单 for urgent cases). A case not signed for by then counts
    as late; one still within its deadline is left out. Counted per China-time day.
  - 按时办结率: of the cases whose outcome is known (办结, or still open past ``due_at``), the
    share 办结 by ``due_at``. An approved 延期 moves ``due_at``, so it is judged against the
    extended deadline. 办结 is the latest 办结 event of a case that is 办结 or later now.
  - 当前超期: open cases (已派单, 已签收, 办理中) past ``due_at`` now, whatever the period, and
    how late in calendar days (mean and worst); never imported history.
  - 延期批准: approved extension requests of the period's cases.
- **Handling time per stage** from the status events: 受理→派单 (filing to the first 派单),
  派单→签收 (to the first 签收), 签收→办结 (to the last 办结), 办结→回访 (to the first 回访) and
  受理→办结; median and 90th percentile (nearest rank) in calendar days (exact) and in working
  days (the working days after the start day up to and including the end day, holidays and
  adjusted weekends as `crm_backend.dispatch.deadlines` counts them).
- **Satisfaction**, per department: 回访率 (cases ever 办结 that have a rating), 满意率 (ratings
  4–5 of all ratings), 不满意重办率 (cases rated 1–2 that were 重办: the 回访 reopens them itself).
- **Repeat demand**, per department: 重复投诉率 (cases with an earlier case within 30 days from the
  same citizen, or at the same place in the same category) and linked duplicates.
- **The bot**: conversations the bot settled alone (a helpful answer marked, no hand-off, no
  case), hand-off rate and reasons, unanswered questions, and per category the share of cases
  dispatched by a person and the 改派 rate.
- **Where resources fall short**: district × category volume, late share and median handling
  time; the worst cells flagged.
- **Hot issues** (supervisors and admins): the top 10 of the ranking stored for exactly the
  period's dates (the background job's last 30 days is the "近 30 天" period), 预警 marked;
  never computed on the request.
- **Reply quality**, per department: the average 答复质量 scores of the period's replies.
- **Segments**: how many of the period's citizens are 企业, 居民, 重复反映, 不满意, 热点问题相关.

Imported history (`crm_backend.services.history`) counts as demand; of its stages only 受理 and
办结 are known, it is never overdue and never asked for a 回访.

The period picks the cases filed in it (China-time days, both ends included). Counts, rates
and sums are SQL aggregates; durations come from one query returning, for the period's cases
only, each case's stage durations (bounded by the period), summarised here because medians
and working days are not portable SQL.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache, partial
from operator import is_not
from typing import Any, TypeVar
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, case, distinct, exists, false, func, literal, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_backend.analytics.sql import china_day, china_week, days_between
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.deadlines import CHINA_TZ, add_working_days, is_working_day
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.hotissues import service as hot_service
from crm_backend.lifecycle import OPEN_STATUSES, CaseStatus, Permission, Role
from crm_backend.models import (
    CHANNEL_LABELS,
    HISTORY_CHANNEL,
    CaseEvent,
    ChannelIdentity,
    Conversation,
    Department,
    ExtensionRequest,
    KnowledgeFeedback,
    KnowledgeMiss,
    Message,
    Satisfaction,
    ServiceCase,
    StaffLabel,
    StaffUser,
    utcnow,
)
from crm_backend.services import history, reply_scores
from crm_backend.services import segments as segment_service

PERIODS = {"week": "本周", "30d": "近 30 天", "custom": "自定义"}
CHANNELS = CHANNEL_LABELS
HANDOFF_REASONS = {"request": "要求人工", "fallback": "多次未理解", "complaint": "投诉", "rejected": "否定回答"}
MAX_RANGE_DAYS = 400
REPEAT_WINDOW_DAYS = 30
SATISFIED_FROM = 4
DISSATISFIED_UP_TO = 2
WORST_CELLS = 5  # district × category cells flagged as falling shortest
WORST_MIN_CASES = 5  # a cell needs this many cases to be judged
TOP_MISSES = 20
NO_DEPARTMENT = "未派单"
DONE_STATUSES = (CaseStatus.RESOLVED.value, CaseStatus.REVIEWED.value, CaseStatus.ARCHIVED.value)
OPEN_VALUES = tuple(sorted(s.value for s in OPEN_STATUSES))
CASE_LIST = "/console/cases"


# --- filters and scope ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What the dashboard is asked about: a period of China-time days (both ends included) and slices."""

    period: str
    since: date
    until: date
    district: str | None = None
    category: str | None = None
    department_id: int | None = None
    channel: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str], today: date) -> Filters:
        """The filters of a dashboard URL; unknown values mean "any", a bad custom range is refused.

        Raises:
            InvalidInput: a custom period without valid dates, reversed, or longer than MAX_RANGE_DAYS.
        """
        period = query.get("period") or "30d"
        if period not in PERIODS:
            period = "30d"
        if period == "week":
            since, until = today - timedelta(days=today.weekday()), today
        elif period == "30d":
            since, until = today - timedelta(days=29), today
        else:
            since, until = _day(query.get("since")), _day(query.get("until"))
            if until < since:
                raise InvalidInput("bad_period", "结束日期早于开始日期")
            if (until - since).days >= MAX_RANGE_DAYS:
                raise InvalidInput("bad_period", f"时间范围最长 {MAX_RANGE_DAYS} 天")
        department = query.get("department") or ""
        return cls(
            period=period,
            since=since,
            until=until,
            district=(query.get("district") or None),
            category=query.get("category") if query.get("category") in CATEGORIES else None,
            department_id=int(department) if department.isdigit() else None,
            channel=query.get("channel") if query.get("channel") in CHANNELS else None,
        )

    @property
    def start(self) -> datetime:
        """The period's first instant, in UTC."""
        return datetime.combine(self.since, time(0), tzinfo=CHINA_TZ).astimezone(UTC)

    @property
    def end(self) -> datetime:
        """The instant after the period's last day, in UTC."""
        return datetime.combine(self.until + timedelta(days=1), time(0), tzinfo=CHINA_TZ).astimezone(UTC)

    def params(self) -> dict[str, str]:
        """The filters as the dashboard's query parameters (for export links)."""
        values = {
            "period": self.period,
            "since": self.since.isoformat() if self.period == "custom" else None,
            "until": self.until.isoformat() if self.period == "custom" else None,
            "district": self.district,
            "category": self.category,
            "department": str(self.department_id) if self.department_id is not None else None,
            "channel": self.channel,
        }
        return {key: value for key, value in values.items() if value}

    def case_link(self, **extra: str | int | None) -> str:
        """The case list showing this period's cases, with these filters and `extra` on top."""
        values: dict[str, str | int | None] = {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "district": self.district,
            "category": self.category,
            "department": self.department_id,
            "channel": self.channel,
        }
        values.update(extra)
        return CASE_LIST + "?" + urlencode({k: str(v) for k, v in values.items() if v is not None and v != ""})


def _day(raw: str | None) -> date:
    try:
        return date.fromisoformat((raw or "").strip())
    except ValueError as error:
        raise InvalidInput("bad_period", "自定义时间范围需要开始和结束日期（YYYY-MM-DD）") from error


@dataclass(frozen=True)
class Scope:
    """Whose figures a member of staff may see: everything, or one department's."""

    everything: bool
    department_id: int | None = None

    @classmethod
    def of(cls, user: StaffUser) -> Scope:
        """Supervisors and admins see all departments; an agent only their own (none if they have none)."""
        if Role(user.role).may(Permission.SUPERVISE):
            return cls(everything=True)
        return cls(everything=False, department_id=user.department_id)

    def narrow(self, filters: Filters) -> Filters:
        """The filters this scope allows: an agent's department replaces whatever the URL asked for."""
        return filters if self.everything else replace(filters, department_id=self.department_id)

    def shows(self, table_id: str) -> bool:
        """Whether this scope sees a figure: agents do not see the city-wide `SUPERVISOR_TABLES`."""
        return self.everything or table_id not in SUPERVISOR_TABLES

    def cases(self) -> ColumnElement[bool]:
        if self.everything:
            return true()
        return ServiceCase.department_id == self.department_id if self.department_id is not None else false()

    def conversations(self) -> ColumnElement[bool]:
        if self.everything:
            return true()
        return Conversation.department_id == self.department_id if self.department_id is not None else false()


# --- tables --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, the number behind it (for charts and exports), a link, a flag."""

    text: str
    value: float | int | None = None
    href: str | None = None
    flag: bool = False

    @property
    def export_value(self) -> str | float | int:
        return self.value if self.value is not None else self.text


@dataclass(frozen=True)
class Table:
    """One figure: a titled table, optionally drawn as a chart (``line``, ``bar`` or ``stack``).

    Only tables whose columns after the first share one unit are charted (every such column is a
    series); tables mixing counts, rates and days are tables only.
    """

    id: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    chart: str | None = None
    note: str = ""
    empty: str = "这段时间没有数据"  # shown in place of the rows when there are none


def text(value: str) -> Cell:
    return Cell(value)


def count(value: int, href: str | None = None) -> Cell:
    """A count, linked to the cases behind it when there are any."""
    return Cell(str(value), value, href if value else None)


def rate(numerator: int, denominator: int, href: str | None = None) -> Cell:
    """A percentage; "–" (and no link) when nothing was counted."""
    if not denominator:
        return Cell("–")
    share = round(100.0 * numerator / denominator, 1)
    return Cell(f"{share:.1f}%", share, href)


def days(value: float | None, flag: bool = False) -> Cell:
    if value is None:
        return Cell("–")
    return Cell(f"{value:.1f}", round(value, 2), flag=flag)


def percentile(ordered: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile of sorted values (``share`` 0.5 is the median); None for none."""
    if not ordered:
        return None
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@lru_cache(maxsize=65536)
def working_days_between(start: str, end: str) -> int:
    """Working days after the day `start` up to and including the day `end` (``YYYY-MM-DD``); 0 if not after."""
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    total = 0
    day = first + timedelta(days=1)
    while day <= last:
        total += is_working_day(day)
        day += timedelta(days=1)
    return total


# --- the period's cases, with their stage times --------------------------------------------------


def case_conditions(filters: Filters, scope: Scope) -> list[ColumnElement[bool]]:
    """The WHERE clause of the period's cases under these filters and this scope."""
    return [
        ServiceCase.created_at >= filters.start,
        ServiceCase.created_at < filters.end,
        *slice_conditions(filters, scope),
    ]


def slice_conditions(filters: Filters, scope: Scope) -> list[ColumnElement[bool]]:
    """The WHERE clause of the cases these filters and this scope allow, whenever they were filed."""
    conditions = [scope.cases()]
    if filters.district:
        conditions.append(ServiceCase.district == filters.district)
    if filters.category:
        conditions.append(ServiceCase.category == filters.category)
    if filters.department_id is not None:
        conditions.append(ServiceCase.department_id == filters.department_id)
    if filters.channel:
        conditions.append(
            ServiceCase.identity_id.in_(select(ChannelIdentity.id).where(ChannelIdentity.channel == filters.channel))
        )
    return conditions


def conversation_conditions(filters: Filters, scope: Scope) -> list[ColumnElement[bool]]:
    """The period's conversations (by start) on the filtered channel, in scope."""
    conditions = [
        Conversation.started_at >= filters.start,
        Conversation.started_at < filters.end,
        scope.conversations(),
    ]
    if filters.channel:
        conditions.append(Conversation.channel == filters.channel)
    return conditions


STAGES = (
    ("受理→派单", "created", "dispatched"),
    ("派单→签收", "dispatched", "accepted"),
    ("签收→办结", "accepted", "resolved"),
    ("办结→回访", "resolved", "reviewed"),
    ("受理→办结", "created", "resolved"),
)


MOMENTS = ("created", "dispatched", "accepted", "resolved", "reviewed")
_MOMENT_INDEX = {name: index for index, name in enumerate(MOMENTS)}
_STAGE_SPANS = tuple((_MOMENT_INDEX[start], _MOMENT_INDEX[end]) for _, start, end in STAGES)
assert _STAGE_SPANS == ((0, 1), (1, 2), (2, 3), (3, 4), (0, 3)), "_working is unrolled in this order"
FILING_TO_RESOLUTION = len(STAGES) - 1  # 受理→办结, the "from 10 days to 3" figure
_present_values = partial(is_not, None)


@dataclass(frozen=True, slots=True)
class CaseTimes:
    """One case of the period with the days (China time) and durations of its stages.

    ``days`` follows MOMENTS (``YYYY-MM-DD`` or None); ``calendar`` (calendar days) and
    ``working`` (working days) follow STAGES, None where the stage has not happened.
    """

    case_id: int
    category: str | None
    district: str | None
    department_id: int | None
    status: str
    urgent: bool
    week: str
    days: tuple[str | None, ...]
    calendar: tuple[float | None, ...]
    working: tuple[int | None, ...]
    resolved_in_time: bool | None  # None: no 办结 (or no deadline)
    open_late: bool

    @property
    def late(self) -> bool:
        """办结 after its deadline, or open past it now."""
        return self.open_late or self.resolved_in_time is False


def _working(stamps: Sequence[str | None]) -> tuple[int | None, ...]:
    """Each stage's working days (in STAGES order) from the days of MOMENTS; unrolled, as it runs per case."""
    created, dispatched, accepted, resolved, reviewed = stamps
    between = working_days_between
    return (
        between(created, dispatched) if created and dispatched else None,
        between(dispatched, accepted) if dispatched and accepted else None,
        between(accepted, resolved) if accepted and resolved else None,
        between(resolved, reviewed) if resolved and reviewed else None,
        between(created, resolved) if created and resolved else None,
    )


async def case_times(session: AsyncSession, filters: Filters, scope: Scope, now: datetime) -> list[CaseTimes]:
    """The period's cases and their stage times: one row per case, bounded by the period."""
    event = CaseEvent
    done = ServiceCase.status.in_(DONE_STATUSES)

    def first(status: str, kind: Callable[..., Any] = func.min) -> Any:
        return kind(case((event.to_status == status, event.created_at)))

    cohort = select(ServiceCase.id).where(*case_conditions(filters, scope))
    stages = (
        select(
            event.case_id.label("case_id"),
            first("dispatched").label("dispatched_at"),
            first("accepted").label("accepted_at"),
            first("resolved", func.max).label("resolved_at"),
            first("reviewed").label("reviewed_at"),
        )
        .where(event.kind == "status", event.case_id.in_(cohort))
        .group_by(event.case_id)
        .subquery()
    )
    resolved_at = case((done, stages.c.resolved_at))
    moments = {
        "created": ServiceCase.created_at,
        "dispatched": stages.c.dispatched_at,
        "accepted": stages.c.accepted_at,
        "resolved": resolved_at,
        "reviewed": stages.c.reviewed_at,
    }
    stmt = (
        select(
            # The fixed columns, in `_case_times`'s order, then a day per moment and a span per stage.
            ServiceCase.id,
            ServiceCase.category,
            ServiceCase.district,
            ServiceCase.department_id,
            ServiceCase.status,
            ServiceCase.urgent,
            china_week(ServiceCase.created_at),
            case(
                (and_(resolved_at.is_not(None), ServiceCase.due_at.is_not(None)), resolved_at <= ServiceCase.due_at),
                else_=literal(None),
            ),
            and_(ServiceCase.status.in_(OPEN_VALUES), ServiceCase.due_at < now),
            history.imported(),
            *(china_day(moments[name]) for name in MOMENTS),
            *(days_between(moments[start], moments[end]) for _, start, end in STAGES),
        )
        .outerjoin(stages, stages.c.case_id == ServiceCase.id)
        .where(*case_conditions(filters, scope))
    )
    return [_case_times(row) for row in await _rows(session, stmt)]


_FIXED_COLUMNS = 10  # case_times' columns before the days of MOMENTS
_SPANS_START = _FIXED_COLUMNS + len(MOMENTS)


def _case_times(row: Sequence[Any]) -> CaseTimes:
    case_id, category, district, department_id, status, urgent, week, in_time, late, imported = row[:_FIXED_COLUMNS]
    days = tuple(row[_FIXED_COLUMNS:_SPANS_START])
    calendar = tuple(max(0.0, float(span)) if span is not None else None for span in row[_SPANS_START:])
    if imported:  # the source shows 受理 and 办结 only (`crm_backend.services.history`)
        days = (days[0], None, None, days[3], days[4])
        calendar = (None, None, None, *calendar[3:])
    return CaseTimes(
        case_id=case_id,
        category=category,
        district=district,
        department_id=department_id,
        status=status,
        urgent=bool(urgent),
        week=week,
        days=days,
        calendar=calendar,
        working=_working(days),
        resolved_in_time=None if in_time is None else bool(in_time),
        open_late=bool(late) and not imported,
    )


@lru_cache(maxsize=4096)
def sign_for_deadline(dispatched: str, urgent: bool) -> str:
    """The last day (``YYYY-MM-DD``) a case dispatched that day may be signed for on time."""
    day = date.fromisoformat(dispatched)
    return (day if urgent else add_working_days(day, 1)).isoformat()


async def _rows(session: AsyncSession, stmt: Any) -> Sequence[Any]:
    """Every row of a statement, run on the session's connection: Core rows, no ORM bookkeeping."""
    connection = await session.connection()
    return (await connection.execute(stmt)).all()


def signed_in_time(times: CaseTimes, today: str) -> bool | None:
    """Whether a dispatched case was signed for by its sign-for deadline; None while it still may be.

    Days are compared as ``YYYY-MM-DD`` text, which orders as the dates do.
    """
    dispatched = times.days[1]
    if dispatched is None:
        return None
    deadline = sign_for_deadline(dispatched, times.urgent)
    accepted = times.days[2]
    if accepted is not None:
        return accepted <= deadline
    return False if today > deadline else None


# --- building the tables -------------------------------------------------------------------------


T = TypeVar("T")


@dataclass
class Context:
    """What every table of one dashboard request shares: the session, filters, scope, clock and caches."""

    session: AsyncSession
    filters: Filters
    scope: Scope
    now: datetime = field(default_factory=utcnow)
    volume: list[tuple[Any, ...]] | None = None  # see volume_counts
    _times: list[CaseTimes] | None = None
    _departments: dict[int, str] | None = None
    _shared: dict[Callable[..., Any], Any] = field(default_factory=dict)

    @property
    def today(self) -> date:
        return self.now.astimezone(CHINA_TZ).date()

    async def times(self) -> list[CaseTimes]:
        if self._times is None:
            self._times = await case_times(self.session, self.filters, self.scope, self.now)
        return self._times

    async def once(self, compute: Callable[[Context], Awaitable[T]]) -> T:
        """What `compute` gives for this request, computed the first time a table asks for it."""
        if compute not in self._shared:
            self._shared[compute] = await compute(self)
        return self._shared[compute]

    async def departments(self) -> dict[int, str]:
        if self._departments is None:
            rows = await self.session.execute(select(Department.id, Department.name))
            self._departments = {row[0]: row[1] for row in rows.all()}
        return self._departments

    def cases(self) -> list[ColumnElement[bool]]:
        return case_conditions(self.filters, self.scope)

    def department_cell(self, names: Mapping[int, str], department_id: int | None) -> Cell:
        if department_id is None:
            return Cell(NO_DEPARTMENT)
        return Cell(names.get(department_id, str(department_id)), href=self.filters.case_link(department=department_id))

    def period_days(self) -> list[str]:
        return [
            (self.filters.since + timedelta(days=n)).isoformat()
            for n in range((self.filters.until - self.filters.since).days + 1)
        ]


async def _grouped(session: AsyncSession, stmt: Any) -> dict[Any, tuple[Any, ...]]:
    """Rows of an aggregate query keyed by their first column."""
    return {row[0]: tuple(row[1:]) for row in await _rows(session, stmt)}


VOLUME_DAY, VOLUME_CHANNEL, VOLUME_CATEGORY, VOLUME_DISTRICT, VOLUME_COUNT = range(5)


async def volume_counts(ctx: Context) -> list[tuple[Any, ...]]:
    """The period's cases counted per (day, channel, category, district): one query for every volume table.

    At most days × 3 × categories × districts rows, whatever the number of cases.
    """
    if ctx.volume is None:
        day = china_day(ServiceCase.created_at)
        keys = (day, ChannelIdentity.channel, ServiceCase.category, ServiceCase.district)
        stmt = (
            select(*keys, func.count())
            .select_from(ServiceCase)
            .join(ChannelIdentity, ChannelIdentity.id == ServiceCase.identity_id)
            .where(*ctx.cases())
            .group_by(*keys)
        )
        ctx.volume = [tuple(row) for row in await _rows(ctx.session, stmt)]
    return ctx.volume


async def volume_day(ctx: Context) -> Table:
    cases: Counter[str] = Counter()
    for row in await volume_counts(ctx):
        cases[row[VOLUME_DAY]] += row[VOLUME_COUNT]
    started = china_day(Conversation.started_at)
    conversations = await _grouped(
        ctx.session,
        select(started, func.count()).where(*conversation_conditions(ctx.filters, ctx.scope)).group_by(started),
    )
    sent = china_day(Message.created_at)
    message_stmt = select(sent, func.count()).where(
        Message.created_at >= ctx.filters.start, Message.created_at < ctx.filters.end
    )
    if ctx.filters.channel:
        message_stmt = message_stmt.where(Message.channel == ctx.filters.channel)
    if not ctx.scope.everything:
        message_stmt = message_stmt.where(
            Message.conversation_id.in_(select(Conversation.id).where(ctx.scope.conversations()))
        )
    messages = await _grouped(ctx.session, message_stmt.group_by(sent))
    rows = [
        [
            text(d),
            count(cases[d], ctx.filters.case_link(since=d, until=d)),
            count(conversations.get(d, (0,))[0]),
            count(messages.get(d, (0,))[0]),
        ]
        for d in ctx.period_days()
    ]
    return Table("volume_day", "每日工单、对话与消息量", ["日期", "工单", "对话", "消息"], rows, chart="line")


async def _day_pivot(ctx: Context, index: int, keys: Iterable[str], link_key: str) -> list[list[Cell]]:
    counts: Counter[tuple[str, str]] = Counter()
    for row in await volume_counts(ctx):
        counts[(row[VOLUME_DAY], row[index])] += row[VOLUME_COUNT]
    keys = list(keys)
    return [
        [text(d)]
        + [count(counts[(d, value)], ctx.filters.case_link(since=d, until=d, **{link_key: value})) for value in keys]
        for d in ctx.period_days()
    ]


async def _present(ctx: Context, index: int) -> list[str]:
    return sorted({row[index] for row in await volume_counts(ctx) if row[index] is not None})


async def volume_channel(ctx: Context) -> Table:
    present = set(await _present(ctx, VOLUME_CHANNEL))
    channels = {
        key: label
        for key, label in CHANNELS.items()
        if ctx.filters.channel in (None, key) and (key != HISTORY_CHANNEL or key in present)
    }
    rows = await _day_pivot(ctx, VOLUME_CHANNEL, channels, "channel")
    return Table("volume_channel", "每日工单：按渠道", ["日期", *channels.values()], rows, chart="stack")


async def volume_category(ctx: Context) -> Table:
    categories = await _present(ctx, VOLUME_CATEGORY)
    rows = await _day_pivot(ctx, VOLUME_CATEGORY, categories, "category")
    return Table("volume_category", "每日工单：按分类", ["日期", *categories], rows, chart="stack")


async def volume_district(ctx: Context) -> Table:
    districts = await _present(ctx, VOLUME_DISTRICT)
    rows = await _day_pivot(ctx, VOLUME_DISTRICT, districts, "district")
    return Table("volume_district", "每日工单：按区县", ["日期", *districts], rows, chart="stack")


@dataclass(frozen=True)
class TimelinessCounts:
    """The timeliness figures per department (None: no department): the timeliness table and the headline."""

    signed: Mapping[int | None, tuple[int, int]]  # (signed for in time, judged)
    resolved: Mapping[int | None, tuple[int, int]]  # (办结 in time, judged)
    overdue: Mapping[int | None, tuple[int, float | None, float | None]]  # (open past due now, mean, worst days)
    extended: Mapping[int | None, int]  # approved 延期
    filed: frozenset[int | None]  # departments with cases in the period


def overdue_conditions(ctx: Context) -> list[ColumnElement[bool]]:
    """Open cases past their deadline now, whatever the period (the case list's 已超期); never imported history."""
    conditions = [ctx.scope.cases(), ServiceCase.status.in_(OPEN_VALUES), ServiceCase.due_at < ctx.now]
    for column, value in (
        (ServiceCase.district, ctx.filters.district),
        (ServiceCase.category, ctx.filters.category),
        (ServiceCase.department_id, ctx.filters.department_id),
    ):
        if value is not None:
            conditions.append(column == value)
    if ctx.filters.channel:
        conditions.append(
            ServiceCase.identity_id.in_(
                select(ChannelIdentity.id).where(ChannelIdentity.channel == ctx.filters.channel)
            )
        )
    conditions.append(history.live())
    return conditions


async def timeliness_counts(ctx: Context) -> TimelinessCounts:
    signed: dict[int | None, list[int]] = defaultdict(lambda: [0, 0])
    resolved: dict[int | None, list[int]] = defaultdict(lambda: [0, 0])
    today = ctx.today.isoformat()
    for times in await ctx.times():
        on_time = signed_in_time(times, today)
        if on_time is not None:
            signed[times.department_id][0] += on_time
            signed[times.department_id][1] += 1
        if times.resolved_in_time is not None or times.open_late:
            resolved[times.department_id][0] += bool(times.resolved_in_time)
            resolved[times.department_id][1] += 1
    late = days_between(ServiceCase.due_at, literal(ctx.now, ServiceCase.due_at.type))
    overdue = await _grouped(
        ctx.session,
        select(ServiceCase.department_id, func.count(), func.avg(late), func.max(late))
        .where(*overdue_conditions(ctx))
        .group_by(ServiceCase.department_id),
    )
    extended = await _grouped(
        ctx.session,
        select(ServiceCase.department_id, func.count())
        .join(ExtensionRequest, ExtensionRequest.case_id == ServiceCase.id)
        .where(*ctx.cases(), ExtensionRequest.status == "approved")
        .group_by(ServiceCase.department_id),
    )
    return TimelinessCounts(
        signed={key: (value[0], value[1]) for key, value in signed.items()},
        resolved={key: (value[0], value[1]) for key, value in resolved.items()},
        overdue={key: (value[0], value[1], value[2]) for key, value in overdue.items()},
        extended={key: value[0] for key, value in extended.items()},
        filed=frozenset(times.department_id for times in await ctx.times()),
    )


async def timeliness(ctx: Context) -> Table:
    names = await ctx.departments()
    counts = await ctx.once(timeliness_counts)
    departments = sorted(
        counts.filed | set(counts.overdue) | set(counts.extended), key=lambda d: (d is None, names.get(d or 0, ""))
    )
    rows = []
    for department in departments:
        link = ctx.filters.case_link(department=department) if department is not None else None
        overdue_count, mean_late, worst_late = counts.overdue.get(department, (0, None, None))
        rows.append(
            [
                ctx.department_cell(names, department),
                rate(*counts.signed.get(department, (0, 0)), href=link),
                rate(*counts.resolved.get(department, (0, 0)), href=link),
                count(overdue_count, CASE_LIST + "?" + urlencode(_overdue_params(ctx.filters, department))),
                days(mean_late),
                days(worst_late),
                count(counts.extended.get(department, 0), link),
            ]
        )
    return Table(
        "timeliness",
        "时效：按承办部门",
        ["承办部门", "按时签收率", "按时办结率", "当前超期", "平均超期天数", "最长超期天数", "延期批准"],
        rows,
        note="按时签收：派单后下一个工作日结束前签收（紧急件当天）；按时办结：在办理期限（含批准的延期）前办结；"
        "当前超期不限时间段，不含导入的历史留言。",
    )


def _overdue_params(filters: Filters, department: int | None) -> dict[str, str]:
    params = {"overdue": "1"}
    for key, value in (
        ("district", filters.district),
        ("category", filters.category),
        ("department", department),
        ("channel", filters.channel),
    ):
        if value is not None:
            params[key] = str(value)
    return params


def _sorted_present(values: Iterable[float | int | None]) -> list[float]:
    """The values that are not None, sorted (filtered and sorted in C: this runs over every case)."""
    return sorted(filter(_present_values, values))  # type: ignore[arg-type]


def _stage_rows(group: str, members: Sequence[CaseTimes], link: str | None) -> list[list[Cell]]:
    calendar_columns = list(zip(*(t.calendar for t in members), strict=True)) or [()] * len(STAGES)
    working_columns = list(zip(*(t.working for t in members), strict=True)) or [()] * len(STAGES)
    rows = []
    for (label, _, _), calendar_column, working_column in zip(STAGES, calendar_columns, working_columns, strict=True):
        calendar = _sorted_present(calendar_column)
        working = _sorted_present(working_column)
        rows.append(
            [
                Cell(group, href=link),
                text(label),
                count(len(calendar)),
                days(percentile(calendar, 0.5)),
                days(percentile(calendar, 0.9)),
                days(percentile(working, 0.5)),
                days(percentile(working, 0.9)),
            ]
        )
    return rows


STAGE_COLUMNS = ["分组", "阶段", "件数", "中位数（自然日）", "P90（自然日）", "中位数（工作日）", "P90（工作日）"]


async def stage_overall(ctx: Context) -> Table:
    rows = _stage_rows("全部", await ctx.times(), ctx.filters.case_link())
    return Table("stage_overall", "各环节办理时长", STAGE_COLUMNS, rows)


async def stage_trend(ctx: Context) -> Table:
    weeks: dict[str, list[CaseTimes]] = defaultdict(list)
    for times in await ctx.times():
        weeks[times.week].append(times)
    rows = []
    for week in sorted(weeks):
        calendar = _sorted_present(t.calendar[FILING_TO_RESOLUTION] for t in weeks[week])
        working = _sorted_present(t.working[FILING_TO_RESOLUTION] for t in weeks[week])
        until = min(date.fromisoformat(week) + timedelta(days=6), ctx.filters.until)
        since = max(date.fromisoformat(week), ctx.filters.since)
        rows.append(
            [
                Cell(week, href=ctx.filters.case_link(since=since.isoformat(), until=until.isoformat())),
                days(percentile(calendar, 0.5)),
                days(percentile(calendar, 0.9)),
                days(percentile(working, 0.5)),
                days(percentile(working, 0.9)),
            ]
        )
    return Table(
        "stage_trend",
        "受理→办结时长趋势（按受理周）",
        ["周（周一）", "中位数（自然日）", "P90（自然日）", "中位数（工作日）", "P90（工作日）"],
        rows,
        chart="line",
        note="「从 10 天到 3 天」：每周受理的工单从受理到办结的中位天数。",
    )


async def stage_category(ctx: Context) -> Table:
    groups: dict[str, list[CaseTimes]] = defaultdict(list)
    for times in await ctx.times():
        groups[times.category or "未分类"].append(times)
    rows = [
        row
        for name in sorted(groups)
        for row in _stage_rows(name, groups[name], ctx.filters.case_link(category=name) if name in CATEGORIES else None)
    ]
    return Table("stage_category", "各环节办理时长：按分类", STAGE_COLUMNS, rows)


async def stage_department(ctx: Context) -> Table:
    names = await ctx.departments()
    groups: dict[int | None, list[CaseTimes]] = defaultdict(list)
    for times in await ctx.times():
        groups[times.department_id].append(times)
    rows = []
    for department in sorted(groups, key=lambda d: (d is None, names.get(d or 0, ""))):
        cell = ctx.department_cell(names, department)
        rows.extend(_stage_rows(cell.text, groups[department], cell.href))
    return Table("stage_department", "各环节办理时长：按承办部门", STAGE_COLUMNS, rows)


@dataclass(frozen=True)
class SatisfactionCounts:
    """Per department (None: no department): 办结 cases asked for a 回访, and what their ratings say."""

    done: Mapping[int | None, int]  # cases ever 办结 (重办 ones too), imported history left out (never asked)
    ratings: Mapping[int | None, tuple[int, int, int, int, int]]  # rated cases, ratings, 4–5, 1–2 cases, 重办


async def satisfaction_counts(ctx: Context) -> SatisfactionCounts:
    ever_resolved = exists().where(
        CaseEvent.case_id == ServiceCase.id, CaseEvent.to_status == CaseStatus.RESOLVED.value
    )
    done = await _grouped(
        ctx.session,
        select(ServiceCase.department_id, func.count())
        .where(*ctx.cases(), ever_resolved, history.live())
        .group_by(ServiceCase.department_id),
    )
    reopened = exists().where(
        CaseEvent.case_id == ServiceCase.id,
        CaseEvent.from_status == CaseStatus.RESOLVED.value,
        CaseEvent.to_status == CaseStatus.IN_PROGRESS.value,
    )
    unhappy = Satisfaction.rating <= DISSATISFIED_UP_TO
    ratings = await _grouped(
        ctx.session,
        select(
            ServiceCase.department_id,
            func.count(distinct(ServiceCase.id)),
            func.count(),
            func.sum(case((Satisfaction.rating >= SATISFIED_FROM, 1), else_=0)),
            func.count(distinct(case((unhappy, ServiceCase.id)))),
            func.count(distinct(case((and_(unhappy, reopened), ServiceCase.id)))),
        )
        .join(Satisfaction, Satisfaction.case_id == ServiceCase.id)
        .where(*ctx.cases())
        .group_by(ServiceCase.department_id),
    )
    return SatisfactionCounts(
        done={key: value[0] for key, value in done.items()},
        ratings={key: tuple(int(v or 0) for v in value) for key, value in ratings.items()},  # type: ignore[misc]
    )


async def satisfaction(ctx: Context) -> Table:
    names = await ctx.departments()
    counts = await ctx.once(satisfaction_counts)
    rows = []
    for department in sorted(set(counts.done) | set(counts.ratings), key=lambda d: (d is None, names.get(d or 0, ""))):
        resolved = counts.done.get(department, 0)
        rated_cases, rating_count, satisfied, unhappy_cases, redone = counts.ratings.get(department, (0, 0, 0, 0, 0))
        rows.append(
            [
                ctx.department_cell(names, department),
                count(resolved),
                rate(rated_cases, resolved),
                count(rating_count),
                rate(satisfied, rating_count),
                count(unhappy_cases),
                rate(redone, unhappy_cases),
            ]
        )
    return Table(
        "satisfaction",
        "满意度：按承办部门",
        ["承办部门", "办结件数", "回访率", "评价数", "满意率（4–5 分）", "不满意件数", "不满意重办率"],
        rows,
        note="办结件数含办结后因不满意重办的工单；回访率：其中有回访评价的比例；导入的历史留言没有回访，不计入。",
    )


async def repeats(ctx: Context) -> Table:
    names = await ctx.departments()
    earlier = aliased(ServiceCase)
    window = and_(
        earlier.id != ServiceCase.id,
        earlier.created_at < ServiceCase.created_at,
        days_between(earlier.created_at, ServiceCase.created_at) <= REPEAT_WINDOW_DAYS,
    )
    same_citizen = exists().where(earlier.citizen_id == ServiceCase.citizen_id, window)
    same_place = exists().where(
        earlier.category == ServiceCase.category, earlier.location_index == ServiceCase.location_index, window
    )
    repeated = or_(same_citizen, same_place)
    grouped = await _grouped(
        ctx.session,
        select(
            ServiceCase.department_id,
            func.count(),
            func.sum(case((repeated, 1), else_=0)),
            func.sum(case((ServiceCase.duplicate_of_id.is_not(None), 1), else_=0)),
        )
        .where(*ctx.cases())
        .group_by(ServiceCase.department_id),
    )
    rows = []
    for department in sorted(grouped, key=lambda d: (d is None, names.get(d or 0, ""))):
        total, repeat_count, duplicates = grouped[department]
        rows.append(
            [
                ctx.department_cell(names, department),
                count(total),
                count(int(repeat_count or 0)),
                rate(int(repeat_count or 0), total),
                count(int(duplicates or 0)),
            ]
        )
    return Table(
        "repeats",
        "重复诉求：按承办部门",
        ["承办部门", "工单数", "重复投诉", "重复投诉率", "关联重复件"],
        rows,
        note=f"重复投诉：{REPEAT_WINDOW_DAYS} 天内同一市民，或同一地点同一分类已有工单。",
    )


@dataclass(frozen=True)
class BotCounts:
    conversations: int
    settled: int  # by the bot alone
    handoffs: int
    with_case: int
    misses: int  # questions the knowledge base could not answer


async def bot_counts(ctx: Context) -> BotCounts:
    conditions = conversation_conditions(ctx.filters, ctx.scope)
    helpful = exists().where(KnowledgeFeedback.conversation_id == Conversation.id, KnowledgeFeedback.helpful.is_(True))
    filed = exists().where(ServiceCase.conversation_id == Conversation.id)
    handed = Conversation.handoff_requested_at.is_not(None)
    alone = and_(helpful, ~handed, ~filed)
    row = (
        await ctx.session.execute(
            select(
                func.count(),
                func.sum(case((alone, 1), else_=0)),
                func.sum(case((handed, 1), else_=0)),
                func.sum(case((filed, 1), else_=0)),
            ).where(*conditions)
        )
    ).one()
    total, settled, handoffs, with_case = (int(value or 0) for value in row)
    miss_stmt = select(func.count()).where(
        KnowledgeMiss.created_at >= ctx.filters.start, KnowledgeMiss.created_at < ctx.filters.end
    )
    if not ctx.scope.everything or ctx.filters.channel:
        miss_stmt = miss_stmt.where(KnowledgeMiss.conversation_id.in_(select(Conversation.id).where(*conditions)))
    return BotCounts(total, settled, handoffs, with_case, int(await ctx.session.scalar(miss_stmt) or 0))


async def bot_overview(ctx: Context) -> Table:
    counted = await ctx.once(bot_counts)
    total, settled, handoffs, with_case, misses = (
        counted.conversations,
        counted.settled,
        counted.handoffs,
        counted.with_case,
        counted.misses,
    )
    rows = [
        [text("对话数"), count(total)],
        [text("机器人独立解决"), count(settled)],
        [text("机器人独立解决率"), rate(settled, total)],
        [text("转人工"), count(handoffs)],
        [text("转人工率"), rate(handoffs, total)],
        [text("生成工单的对话"), count(with_case)],
        [text("未能回答的问题"), count(misses)],
    ]
    return Table(
        "bot_overview",
        "机器人",
        ["指标", "数值"],
        rows,
        note="独立解决：对话中有回答被标记为「有帮助」，且没有转人工、没有生成工单。",
    )


async def bot_handoffs(ctx: Context) -> Table:
    grouped = await _grouped(
        ctx.session,
        select(Conversation.handoff_reason, func.count())
        .where(*conversation_conditions(ctx.filters, ctx.scope), Conversation.handoff_requested_at.is_not(None))
        .group_by(Conversation.handoff_reason),
    )
    rows = [
        [text(HANDOFF_REASONS.get(key, key or "未注明")), count(value[0])]
        for key, value in sorted(grouped.items(), key=lambda item: -item[1][0])
    ]
    return Table("bot_handoffs", "转人工原因", ["原因", "次数"], rows, chart="bar")


async def bot_misses(ctx: Context) -> Table:
    # The questions are encrypted at rest: the period's are read and counted here, not grouped in SQL.
    stmt = select(KnowledgeMiss.question).where(
        KnowledgeMiss.created_at >= ctx.filters.start, KnowledgeMiss.created_at < ctx.filters.end
    )
    if not ctx.scope.everything or ctx.filters.channel:
        stmt = stmt.where(
            KnowledgeMiss.conversation_id.in_(
                select(Conversation.id).where(*conversation_conditions(ctx.filters, ctx.scope))
            )
        )
    times = Counter(question for (question,) in await _rows(ctx.session, stmt))
    top = sorted(times.items(), key=lambda item: (-item[1], item[0]))[:TOP_MISSES]
    rows = [[text(question), count(asked)] for question, asked in top]
    return Table("bot_misses", "未能回答的问题（前 20）", ["问题", "次数"], rows)


async def routing(ctx: Context) -> Table:
    dispatched = exists().where(CaseEvent.case_id == ServiceCase.id, CaseEvent.to_status == CaseStatus.DISPATCHED.value)
    by_person = exists().where(
        CaseEvent.case_id == ServiceCase.id,
        CaseEvent.to_status == CaseStatus.DISPATCHED.value,
        CaseEvent.from_status.in_([CaseStatus.RECEIVED.value, CaseStatus.RETURNED.value]),
        CaseEvent.actor_id.is_not(None),
    )
    reassigned = exists().where(
        CaseEvent.case_id == ServiceCase.id,
        CaseEvent.from_status == CaseStatus.DISPATCHED.value,
        CaseEvent.to_status == CaseStatus.DISPATCHED.value,
    )
    # Grouped on the bare column: PostgreSQL will not match a GROUP BY expression whose literal is a
    # separate bind parameter from the SELECT's.
    category = ServiceCase.category
    grouped = await _grouped(
        ctx.session,
        select(
            category,
            func.sum(case((dispatched, 1), else_=0)),
            func.sum(case((by_person, 1), else_=0)),
            func.sum(case((reassigned, 1), else_=0)),
        )
        .where(*ctx.cases())
        .group_by(category),
    )
    rows = []
    for name in sorted(grouped, key=lambda value: value or ""):
        total, manual, moved = (int(v or 0) for v in grouped[name])
        link = ctx.filters.case_link(category=name) if name in CATEGORIES else None
        rows.append([Cell(name or "未分类", href=link), count(total), rate(manual, total), rate(moved, total)])
    return Table(
        "routing",
        "派单：按分类",
        ["分类", "已派单", "人工派单占比", "改派率"],
        rows,
        note="人工派单：由值班长从待派单队列派出；改派率高说明自动分派在这类问题上常出错。",
    )


async def model_accuracy(ctx: Context) -> Table:
    """Each category model version against the people's decisions made in the period (staff labels)."""
    agreed = case((StaffLabel.model_category == StaffLabel.staff_category, 1), else_=0)
    rows = await _rows(
        ctx.session,
        select(StaffLabel.model_version, func.count(), func.sum(agreed), func.min(StaffLabel.created_at))
        .join(ServiceCase, ServiceCase.id == StaffLabel.case_id)
        .where(
            StaffLabel.created_at >= ctx.filters.start,
            StaffLabel.created_at < ctx.filters.end,
            StaffLabel.model_version.is_not(None),
            *slice_conditions(ctx.filters, ctx.scope),
        )
        .group_by(StaffLabel.model_version),
    )
    ordered = sorted(rows, key=lambda row: row[3])
    return Table(
        "model_accuracy",
        "分类模型：与人工判定一致率（按模型版本）",
        ["模型版本", "人工判定", "与模型首选一致", "一致率"],
        [
            [text(version), count(total), count(int(same or 0)), rate(int(same or 0), total)]
            for version, total, same, _ in ordered
        ],
        note="人工判定：派单、改派、更正分类或登记时由人选定的分类；一致率低说明该版本在实际工单上常分错。"
        "各版本的详细数字与回滚见 管理 → 分类模型。",
    )


async def shortfalls(ctx: Context) -> Table:
    cells: dict[tuple[str, str], list[CaseTimes]] = defaultdict(list)
    for times in await ctx.times():
        cells[(times.district or "未知", times.category or "未分类")].append(times)
    judged = []
    for key, members in cells.items():
        with_deadline = [t for t in members if t.late or t.resolved_in_time is not None]
        late = sum(t.late for t in with_deadline)
        share = late / len(with_deadline) if with_deadline else 0.0
        if len(members) >= WORST_MIN_CASES:
            judged.append((share, len(members), key))
    worst = {key for share, _, key in sorted(judged, reverse=True)[:WORST_CELLS] if share > 0}
    rows = []
    for (district, category), members in sorted(cells.items(), key=lambda item: (-len(item[1]), item[0])):
        with_deadline = [t for t in members if t.late or t.resolved_in_time is not None]
        handling = _sorted_present(t.calendar[FILING_TO_RESOLUTION] for t in members)
        flagged = (district, category) in worst
        link = ctx.filters.case_link(
            district=district if district != "未知" else None, category=category if category in CATEGORIES else None
        )
        rows.append(
            [
                text(district),
                text(category),
                count(len(members), link),
                replace(rate(sum(t.late for t in with_deadline), len(with_deadline)), flag=flagged),
                days(percentile(handling, 0.5)),
                Cell("短板" if flagged else "", 1 if flagged else 0, flag=flagged),
            ]
        )
    return Table(
        "shortfalls",
        "资源短板：区县 × 分类",
        ["区县", "分类", "工单数", "超期占比", "受理→办结中位天数", "标记"],
        rows,
        note=(
            "超期占比：逾期办结或至今超期的工单占有期限工单的比例；"
            f"至少 {WORST_MIN_CASES} 件的格子中超期占比最高的 {WORST_CELLS} 个标为短板。"
        ),
    )


HOT_ISSUES_SHOWN = 10
HOT_ISSUES_PAGE = "/console/hot-issues"


def _china_date(moment: datetime) -> str:
    return moment.astimezone(CHINA_TZ).date().isoformat()


async def hot_issues(ctx: Context) -> Table:
    """The top hot issues of the period, read from the ranking the background job stored (never computed here).

    City-wide: the district, category, department and channel filters do not apply, and only
    supervisors and admins see the table (`SUPERVISOR_TABLES`).
    """
    since, until = ctx.filters.since, ctx.filters.until
    snapshot = await hot_service.cached_snapshot(ctx.session, since=since, until=until)
    issues = await hot_service.snapshot_issues(ctx.session, snapshot, limit=HOT_ISSUES_SHOWN) if snapshot else []
    page = HOT_ISSUES_PAGE + "?" + urlencode({"since": since.isoformat(), "until": until.isoformat()})
    rows = [
        [
            Cell(issue.description, href=f"{page}#issue-{issue.issue_id}"),
            text(issue.place or "、".join(issue.terms) or "—"),
            text(f"{_china_date(issue.first_at)} 至 {_china_date(issue.last_at)}"),
            count(issue.messages, f"{page}#issue-{issue.issue_id}"),
            count(issue.citizens),
            Cell(f"{issue.heat:g}", issue.heat),
            Cell("预警" if issue.alert else "", 1 if issue.alert else 0, flag=issue.alert),
        ]
        for issue in issues
    ]
    if snapshot is None:
        note, empty = (
            "后台任务定时计算最近 30 天；其他时段可运行 python -m crm_backend hot-issues。",
            "热点问题尚未计算",
        )
    else:
        computed = snapshot.computed_at.astimezone(CHINA_TZ)
        note = f"全市范围（不受区县、分类、部门、渠道筛选影响）；计算于 {computed:%Y-%m-%d %H:%M}。"
        empty = "这段时间没有热点问题"
    return Table(
        "hot_issues",
        f"热点问题（前 {HOT_ISSUES_SHOWN}）",
        ["问题", "地点/群体", "时间范围", "件数", "人数", "热度", "预警"],
        rows,
        note=note + " 预警：近 7 天的件数是前 7 天的 2 倍以上。",
        empty=empty,
    )


def _department_ids(ctx: Context) -> list[int] | None:
    """The departments a per-department figure is limited to: the filter (an agent's own), or None for all."""
    if ctx.filters.department_id is not None:
        return [ctx.filters.department_id]
    return None if ctx.scope.everything else []


async def reply_quality(ctx: Context) -> Table:
    averages = await reply_scores.reply_quality_by_department(
        ctx.session, since=ctx.filters.start, until=ctx.filters.end, department_ids=_department_ids(ctx)
    )
    rows = [
        [
            ctx.department_cell({}, None)
            if row.department_id is None
            else Cell(row.department, href=ctx.filters.case_link(department=row.department_id)),
            count(row.replies),
            *(
                Cell(f"{value:.1f}", value)
                for value in (row.total, row.relevance, row.completeness, row.interpretability, row.timeliness)
            ),
        ]
        for row in averages
    ]
    return Table(
        "reply_quality",
        "答复质量：按承办部门",
        ["承办部门", "评分答复数", "平均总分", "相关", "完整", "可解释", "及时"],
        rows,
        note="这段时间写下的答复和办结结果的平均分（0–100），总分最低的部门在前；区县、分类、渠道筛选不适用。",
    )


async def segments(ctx: Context) -> Table:
    departments = _department_ids(ctx)
    counted = await segment_service.segment_counts(
        ctx.session, since=ctx.filters.start, until=ctx.filters.end, department_ids=departments
    )
    params = {"since": ctx.filters.since.isoformat(), "until": ctx.filters.until.isoformat()}
    if ctx.filters.department_id is not None:
        params["department"] = str(ctx.filters.department_id)

    def link(**extra: str) -> str:
        return CASE_LIST + "?" + urlencode({**extra, **params})

    rows = [[text("提交工单的市民"), count(counted.citizens, link())]]
    rows += [
        [text(segment.label), count(number, link(segment=segment.value))]
        for segment, number in counted.by_segment.items()
    ]
    return Table(
        "segments",
        "市民分群",
        ["分群", "市民数"],
        rows,
        note="这段时间提交过工单的市民中各分群的人数（一人可属多个分群）；点击数字列出他们这段时间的工单。"
        "区县、分类、渠道筛选不适用。",
    )


HEADLINE_TABLE = "headline"


async def headline(ctx: Context) -> Table:
    """The figures a 12345 centre is judged on first, each the total of the table that details it."""
    filed = sum(row[VOLUME_COUNT] for row in await volume_counts(ctx))
    imported = sum(row[VOLUME_COUNT] for row in await volume_counts(ctx) if row[VOLUME_CHANNEL] == HISTORY_CHANNEL)
    timely = await ctx.once(timeliness_counts)
    happy = await ctx.once(satisfaction_counts)
    bot = await ctx.once(bot_counts)

    def total(values: Iterable[tuple[Any, ...]], index: int) -> int:
        return sum(value[index] for value in values)

    overdue = total(timely.overdue.values(), 0)
    overdue_link = CASE_LIST + "?" + urlencode(_overdue_params(ctx.filters, ctx.filters.department_id))
    rows = [
        [text("工单量"), count(filed, ctx.filters.case_link())],
        [text("按时签收率"), rate(total(timely.signed.values(), 0), total(timely.signed.values(), 1))],
        [text("按时办结率"), rate(total(timely.resolved.values(), 0), total(timely.resolved.values(), 1))],
        [text("当前超期"), replace(count(overdue, overdue_link), flag=overdue > 0)],
        [text("回访率"), rate(total(happy.ratings.values(), 0), sum(happy.done.values()))],
        [text("满意率"), rate(total(happy.ratings.values(), 2), total(happy.ratings.values(), 1))],
        [text("机器人独立解决率"), rate(bot.settled, bot.conversations)],
    ]
    if imported:
        rows.append([text("其中历史导入"), count(imported, ctx.filters.case_link(channel=HISTORY_CHANNEL))])
    return Table(
        HEADLINE_TABLE,
        "概览",
        ["指标", "数值"],
        rows,
        note="时效、满意度、机器人各节的合计；当前超期不限时间段。导入的历史留言计入工单量，"
        "不计入当前超期、按时签收和回访（来源没有这些记录）。",
    )


TABLES: dict[str, Callable[[Context], Any]] = {
    "headline": headline,
    "volume_day": volume_day,
    "volume_channel": volume_channel,
    "volume_category": volume_category,
    "volume_district": volume_district,
    "timeliness": timeliness,
    "stage_overall": stage_overall,
    "stage_trend": stage_trend,
    "stage_category": stage_category,
    "stage_department": stage_department,
    "satisfaction": satisfaction,
    "repeats": repeats,
    "bot_overview": bot_overview,
    "bot_handoffs": bot_handoffs,
    "bot_misses": bot_misses,
    "routing": routing,
    "model_accuracy": model_accuracy,
    "shortfalls": shortfalls,
    "hot_issues": hot_issues,
    "reply_quality": reply_quality,
    "segments": segments,
}
# City-wide figures an agent does not see (the hot issues span every department).
SUPERVISOR_TABLES = frozenset({"hot_issues", "model_accuracy"})
SECTIONS = (
    ("概览", ("headline",)),
    ("工单量", ("volume_day", "volume_channel", "volume_category", "volume_district")),
    ("热点问题", ("hot_issues",)),
    ("时效", ("timeliness",)),
    ("办理时长", ("stage_trend", "stage_overall", "stage_category", "stage_department")),
    ("满意度", ("satisfaction",)),
    ("答复质量", ("reply_quality",)),
    ("重复诉求", ("repeats",)),
    ("市民分群", ("segments",)),
    ("机器人与派单", ("bot_overview", "bot_handoffs", "bot_misses", "routing", "model_accuracy")),
    ("资源短板", ("shortfalls",)),
)


async def dashboard(
    session: AsyncSession, user: StaffUser, filters: Filters, *, now: datetime | None = None
) -> list[Table]:
    """Every figure of the dashboard this member of staff may see (an agent's filters narrowed to their department)."""
    scope = Scope.of(user)
    ctx = Context(session, scope.narrow(filters), scope, now or utcnow())
    return [await TABLES[table_id](ctx) for _, ids in SECTIONS for table_id in ids if scope.shows(table_id)]


async def one_table(
    session: AsyncSession, user: StaffUser, filters: Filters, table_id: str, *, now: datetime | None = None
) -> Table:
    """One figure by its id (for exports).

    Raises:
        NotFound: no such figure, or one this member of staff does not see.
    """
    scope = Scope.of(user)
    if table_id not in TABLES or not scope.shows(table_id):
        raise NotFound(f"table {table_id}")
    return await TABLES[table_id](Context(session, scope.narrow(filters), scope, now or utcnow()))


# --- the cases behind the figures, row by row (exports) -----------------------------------------

DETAIL_TABLE = "cases"
DETAIL_COLUMNS = ["工单号", "受理日期", "渠道", "类型", "分类", "区县", "承办部门", "状态", "办理期限", "超期"]
DETAIL_BATCH = 2000


async def case_rows(
    session: AsyncSession, user: StaffUser, filters: Filters, *, now: datetime | None = None
) -> AsyncIterator[list[str]]:
    """The period's cases as export rows, oldest first, streamed from the database in batches."""
    scope = Scope.of(user)
    filters = scope.narrow(filters)
    now = now or utcnow()
    stmt = (
        select(
            ServiceCase.case_number,
            china_day(ServiceCase.created_at),
            ChannelIdentity.channel,
            ServiceCase.case_type,
            ServiceCase.category,
            ServiceCase.district,
            ServiceCase.department,
            ServiceCase.status,
            china_day(ServiceCase.due_at),
            and_(ServiceCase.status.in_(OPEN_VALUES), ServiceCase.due_at < now),
        )
        .join(ChannelIdentity, ChannelIdentity.id == ServiceCase.identity_id)
        .where(*case_conditions(filters, scope))
        .order_by(ServiceCase.id)
        .execution_options(yield_per=DETAIL_BATCH)
    )
    result = await session.stream(stmt)
    async for partition in result.partitions(DETAIL_BATCH):
        for row in partition:
            yield [
                row[0],
                row[1] or "",
                CHANNELS.get(row[2], row[2] or ""),
                row[3] or "未分类",
                row[4] or "",
                row[5] or "",
                row[6] or NO_DEPARTMENT,
                _status_label(row[7]),
                row[8] or "",
                "是" if row[9] else "",
            ]


def _status_label(value: str) -> str:
    try:
        return CaseStatus(value).label
    except ValueError:
        return value
