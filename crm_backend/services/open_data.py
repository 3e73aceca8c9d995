"""The open dataset a city publishes each month: one row per case filed, no personal data.

A row says what kind of problem was reported (分类, 类型), roughly where (the 区县 only), how
(the channel), and how it went: the China-time day of each stage the life cycle records in the
case's history (`CaseEvent`: 派单, 签收, the first answer to the citizen, 办结, 回访, 归档), the
deadline, the status now with its Open311 open/closed word (`lifecycle.open311_status`), the
working days from 受理 to 办结 (counted as the dashboard counts them,
`crm_backend.analytics.kpi.working_days_between`, holidays and adjusted weekends from
`chinese-calendar`) and whether it was late.

What is left out, and why:

- everything the citizen wrote or is: description, location text, coordinates, phone, names,
  channel ids, notes and replies (they quote the citizen, and name staff);
- times finer than the day (a minute can match a row to a call someone saw being made);
- the department (departments are per district, so it would undo the generalisation below).

Small cells: a row whose (区县, 分类, 类型) combination has fewer than ``min_cell`` cases in the
period (default `MIN_CELL`, 5) is generalised: its 区县 becomes `GENERALISED_DISTRICT` and its
case number is left out, so it can be neither pinned to a small area nor looked up in the
Open311 API (which shows a case's address). Both counts are in the JSON's metadata.

Imported history (`crm_backend.services.history`) is demand too: its channel is the board,
only 受理 and 办结 are known, and it is never said to be late or on time.

Rows come from one query, streamed in batches of `BATCH` (the stage days grouped per case in
the database, for the period's cases only): memory stays flat whatever the period's size.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.analytics.kpi import working_days_between
from crm_backend.analytics.sql import china_day
from crm_backend.dispatch.case_type import UNCLASSIFIED_LABEL
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.errors import InvalidInput
from crm_backend.lifecycle import CLOSED_STATUSES, OPEN_STATUSES, CaseStatus, open311_status
from crm_backend.models import CaseEvent, ChannelIdentity, ServiceCase, utcnow
from crm_backend.services import audit, history

BATCH = 2000
MIN_CELL = 5
GENERALISED_DISTRICT = "其他"
DATASET_TITLE = "12345 市民服务热线工单开放数据"
LICENCE = "［许可协议待定：发布前由数据开放主管部门填写，例如 CC BY 4.0 或本市公共数据开放许可］"
TERMS = (
    "本数据不含任何个人信息（姓名、电话、诉求内容、地址、坐标均不发布）。"
    "同一区县、分类、类型在本期少于 min_cell 件的工单，区县记为「其他」且不公布工单号。"
    "日期均为北京时间（+08:00）。"
)
_MONTH = re.compile(r"(\d{4})-(\d{2})")
_DONE = tuple(sorted(status.value for status in CLOSED_STATUSES))
_OPEN = tuple(sorted(status.value for status in OPEN_STATUSES))


@dataclass(frozen=True)
class Column:
    """One column of the dataset: its key (CSV header, JSON field), Chinese title, type and meaning."""

    name: str
    title: str
    type: str  # string | date (YYYY-MM-DD, China time) | integer | boolean
    description: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "title": self.title, "type": self.type, "description": self.description}


COLUMNS: tuple[Column, ...] = (
    Column(
        "case_number",
        "工单号",
        "string",
        "公开的工单编号（受理日期-当日序号），可在 Open311 接口查询；小样本合并的行不公布，为空。",
    ),
    Column("filed_date", "受理日期", "date", "工单受理（登记）的日期。"),
    Column("channel", "渠道", "string", "反映渠道代码：web 网页，telegram，rest 接口，board 留言板（历史导入）。"),
    Column(
        "case_type",
        "类型",
        "string",
        f"12345 工单类型：咨询、求助、投诉、举报、建议、表扬；{UNCLASSIFIED_LABEL}为早期工单。",
    ),
    Column("category", "分类", "string", "诉求分类（如城乡建设、环境保护）；待人工派单时可能为空。"),
    Column(
        "district",
        "区县",
        "string",
        f"问题所在区县，不发布更细的位置；为空表示未能识别；小样本合并的行为「{GENERALISED_DISTRICT}」。",
    ),
    Column("dispatched_date", "派单日期", "date", "第一次派单给承办部门的日期；历史导入工单不详，为空。"),
    Column("accepted_date", "签收日期", "date", "承办部门第一次签收的日期；历史导入工单不详，为空。"),
    Column("first_answer_date", "首次答复日期", "date", "第一次答复市民的日期（工作人员的答复或办结结果，取较早者）。"),
    Column("resolved_date", "办结日期", "date", "最后一次办结的日期；目前未办结（含重办中）为空。"),
    Column("reviewed_date", "回访日期", "date", "回访完成的日期。"),
    Column("archived_date", "归档日期", "date", "归档的日期。"),
    Column("due_date", "办理期限", "date", "应办结的日期（按工作日计算，批准延期后为延长后的期限）；未派单为空。"),
    Column(
        "status",
        "状态代码",
        "string",
        "当前状态代码：received dispatched accepted in_progress resolved reviewed archived returned。",
    ),
    Column(
        "status_label", "状态", "string", "当前状态：已受理、已派单、已签收、办理中、已办结、已回访、已归档、退回。"
    ),
    Column(
        "open311_status",
        "Open311 状态",
        "string",
        "open 未办结，closed 已办结（已办结、已回访、已归档）；与 Open311 接口一致。",
    ),
    Column(
        "working_days",
        "办结用时（工作日）",
        "integer",
        "受理日之后到办结日（含）的工作日数，节假日不计、调休上班日计入；未办结为空。",
    ),
    Column(
        "overdue",
        "是否超期",
        "boolean",
        "true：办结晚于办理期限，或至数据生成时仍未办结且已过期限；false：否；历史导入工单为空（不详）。",
    ),
)
COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)


@dataclass(frozen=True)
class Period:
    """A span of China-time calendar days the dataset covers: a month (or a whole year).

    Attributes:
        label: ``YYYY-MM`` (or ``YYYY``), in the files' names.
        start: the first moment, China time.
        end: the first moment after it.
    """

    label: str
    start: datetime
    end: datetime

    @classmethod
    def month(cls, text: str) -> Period:
        """The month ``YYYY-MM`` (China time).

        Raises:
            InvalidInput: anything else (``2026-13``, ``2026-1``, ``November``…).
        """
        found = _MONTH.fullmatch(text.strip())
        if found is None or not 1 <= int(found.group(2)) <= 12 or int(found.group(1)) < 1:
            raise InvalidInput("bad_month", f"month must be YYYY-MM, e.g. 2026-11 (got {text!r})")
        year, month = int(found.group(1)), int(found.group(2))
        start = datetime(year, month, 1, tzinfo=CHINA_TZ)
        following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=CHINA_TZ)
        return cls(f"{year:04d}-{month:02d}", start, following)

    @classmethod
    def year(cls, year: int) -> Period:
        """A whole China-time year (for a back catalogue in one file)."""
        return cls(f"{year:04d}", datetime(year, 1, 1, tzinfo=CHINA_TZ), datetime(year + 1, 1, 1, tzinfo=CHINA_TZ))

    def holds(self) -> ColumnElement[bool]:
        """The cases filed in the period."""
        return and_(ServiceCase.created_at >= self.start, ServiceCase.created_at < self.end)


@dataclass(frozen=True)
class Cells:
    """The period's counts per (区县, 分类, 类型), and what they mean for generalisation."""

    counts: dict[tuple[str | None, str | None, str | None], int]
    min_cell: int

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    @property
    def generalised(self) -> int:
        return sum(n for n in self.counts.values() if n < self.min_cell)

    def small(self, district: str | None, category: str | None, case_type: str | None) -> bool:
        return self.counts.get((district, category, case_type), 0) < self.min_cell


async def count_cells(session: AsyncSession, period: Period, min_cell: int = MIN_CELL) -> Cells:
    """How many of the period's cases fall in each (区县, 分类, 类型) cell."""
    stmt = (
        select(ServiceCase.district, ServiceCase.category, ServiceCase.case_type, func.count())
        .where(period.holds())
        .group_by(ServiceCase.district, ServiceCase.category, ServiceCase.case_type)
    )
    rows = (await session.execute(stmt)).all()
    return Cells({(district, category, kind): n for district, category, kind, n in rows}, min_cell)


def _stages_statement(period: Period, now: datetime) -> Any:
    """The period's cases with the China-time day of each stage, oldest first."""
    event = CaseEvent
    is_status = event.kind == "status"

    def moment(status: str, kind: Any = func.min) -> Any:
        return kind(case((and_(is_status, event.to_status == status), event.created_at)))

    answer = or_(event.kind == "reply", and_(is_status, event.to_status == CaseStatus.RESOLVED.value))
    stages = (
        select(
            event.case_id.label("case_id"),
            moment("dispatched").label("dispatched_at"),
            moment("accepted").label("accepted_at"),
            func.min(case((answer, event.created_at))).label("answered_at"),
            moment("resolved", func.max).label("resolved_at"),
            moment("reviewed").label("reviewed_at"),
            moment("archived").label("archived_at"),
        )
        .where(event.kind.in_(("status", "reply")), event.case_id.in_(select(ServiceCase.id).where(period.holds())))
        .group_by(event.case_id)
        .subquery()
    )
    resolved_at = case((ServiceCase.status.in_(_DONE), stages.c.resolved_at))
    return (
        select(
            ServiceCase.case_number,
            china_day(ServiceCase.created_at),
            ChannelIdentity.channel,
            ServiceCase.case_type,
            ServiceCase.category,
            ServiceCase.district,
            china_day(stages.c.dispatched_at),
            china_day(stages.c.accepted_at),
            china_day(stages.c.answered_at),
            china_day(resolved_at),
            china_day(stages.c.reviewed_at),
            china_day(stages.c.archived_at),
            china_day(ServiceCase.due_at),
            ServiceCase.status,
            case(
                (and_(resolved_at.is_not(None), ServiceCase.due_at.is_not(None)), resolved_at > ServiceCase.due_at),
                else_=literal(None),
            ),
            and_(ServiceCase.status.in_(_OPEN), ServiceCase.due_at < now),
            history.imported(),
        )
        .join(ChannelIdentity, ChannelIdentity.id == ServiceCase.identity_id)
        .outerjoin(stages, stages.c.case_id == ServiceCase.id)
        .where(period.holds())
        .order_by(ServiceCase.created_at, ServiceCase.id)
        .execution_options(yield_per=BATCH)
    )


def _row(raw: Sequence[Any], cells: Cells) -> tuple[Any, ...]:
    """One dataset row (in `COLUMNS` order) from one row of `_stages_statement`."""
    (number, filed, channel, kind, category, district, dispatched, accepted, answered, resolved) = raw[:10]
    reviewed, archived, due, status, resolved_late, open_late, imported = raw[10:]
    if imported:  # the board shows when a message was posted and answered, nothing between
        dispatched = accepted = None
    if cells.small(district, category, kind):
        number, district = "", GENERALISED_DISTRICT
    overdue = None if imported else bool(open_late) or bool(resolved_late)
    return (
        number,
        filed,
        channel,
        kind or UNCLASSIFIED_LABEL,
        category or None,
        district or None,
        dispatched,
        accepted,
        answered,
        resolved,
        reviewed,
        archived,
        due,
        status,
        CaseStatus(status).label,
        open311_status(status),
        working_days_between(filed, resolved) if resolved else None,
        overdue,
    )


async def dataset_rows(
    session: AsyncSession, period: Period, cells: Cells, *, now: datetime | None = None
) -> AsyncIterator[tuple[Any, ...]]:
    """The period's rows in `COLUMNS` order, oldest first, streamed from the database in batches.

    Args:
        session: a session (read only).
        period: the month (or year).
        cells: the period's cell counts (`count_cells`), which decide generalisation.
        now: what "late" is judged against for open cases (default: the clock).
    """
    result = await session.stream(_stages_statement(period, now or utcnow()))
    async for partition in result.partitions(BATCH):
        for raw in partition:
            yield _row(raw, cells)


# --- the two formats -------------------------------------------------------------------------


def metadata(period: Period, cells: Cells, generated_at: datetime) -> dict[str, Any]:
    """The JSON file's fields before its rows."""
    return {
        "title": DATASET_TITLE,
        "month": period.label,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat()},
        "generated_at": generated_at.astimezone(CHINA_TZ).isoformat(timespec="seconds"),
        "timezone": "+08:00",
        "licence": LICENCE,
        "terms": TERMS,
        "row_count": cells.rows,
        "min_cell": cells.min_cell,
        "generalised_rows": cells.generalised,
        "columns": [column.as_json() for column in COLUMNS],
    }


class Format(Protocol):
    """A file format written in three parts, so rows can stream: a head, batches of rows, a tail."""

    suffix: str

    def head(self, meta: dict[str, Any]) -> str: ...

    def rows(self, rows: Iterable[tuple[Any, ...]]) -> str: ...

    def tail(self) -> str: ...


class CsvFormat:
    """UTF-8 with a byte-order mark (so Excel reads the Chinese right), RFC 4180 quoting, CRLF lines.

    Empty cells are unknown or not yet happened; booleans are ``true``/``false``.
    """

    suffix = "csv"

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer)

    def head(self, meta: dict[str, Any]) -> str:
        self._writer.writerow(COLUMN_NAMES)
        return "\ufeff" + self._take()

    def rows(self, rows: Iterable[tuple[Any, ...]]) -> str:
        self._writer.writerows(tuple(_csv_value(value) for value in row) for row in rows)
        return self._take()

    def tail(self) -> str:
        return ""

    def _take(self) -> str:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    return value


class JsonFormat:
    """One UTF-8 JSON object (no BOM): the metadata, then ``rows``, a list of objects keyed by column."""

    suffix = "json"

    def __init__(self) -> None:
        self._first = True

    def head(self, meta: dict[str, Any]) -> str:
        opening = json.dumps(meta, ensure_ascii=False, indent=1)
        return opening[:-2] + ',\n "rows": ['  # the object stays open for the rows

    def rows(self, rows: Iterable[tuple[Any, ...]]) -> str:
        parts = []
        for row in rows:
            parts.append(
                ("\n  " if self._first else ",\n  ")
                + json.dumps(dict(zip(COLUMN_NAMES, row, strict=True)), ensure_ascii=False)
            )
            self._first = False
        return "".join(parts)

    def tail(self) -> str:
        return "\n ]\n}\n"


async def stream_dataset(
    session: AsyncSession, period: Period, form: Format, *, min_cell: int = MIN_CELL, now: datetime | None = None
) -> AsyncIterator[str]:
    """One file of the period as text pieces (head, a piece per batch of rows, tail), for a download.

    Raises:
        InvalidInput: ``min_cell`` below 1.
    """
    if min_cell < 1:
        raise InvalidInput("bad_min_cell", "min_cell must be at least 1")
    now = now or utcnow()
    cells = await count_cells(session, period, min_cell)
    yield form.head(metadata(period, cells, now))
    batch: list[tuple[Any, ...]] = []
    async for row in dataset_rows(session, period, cells, now=now):
        batch.append(row)
        if len(batch) >= BATCH:
            yield form.rows(batch)
            batch = []
    yield form.rows(batch) + form.tail()


FORMATS: dict[str, type[CsvFormat] | type[JsonFormat]] = {"csv": CsvFormat, "json": JsonFormat}


# --- writing the files -----------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    """What an export wrote."""

    period: Period
    paths: tuple[Path, ...]
    rows: int
    generalised: int
    min_cell: int


async def write_dataset(
    sessions: async_sessionmaker[AsyncSession],
    period: Period,
    out_dir: Path,
    *,
    exported_by: str,
    min_cell: int = MIN_CELL,
    now: datetime | None = None,
) -> Written:
    """Write ``cases-PERIOD.csv`` and ``cases-PERIOD.json`` into `out_dir` in one pass, and audit it.

    Each file is written under a temporary name and renamed when complete, so a publishing job
    never picks up half a file. The audit row (``open_data.export``, by the command line) names
    the period, the counts, the directory and who ran it.

    Args:
        sessions: the CRM's session factory.
        period: the month (or year).
        out_dir: the directory (created if missing).
        exported_by: who asked (the operating-system user, for the audit row).
        min_cell: cells with fewer cases are generalised (1: none is).
        now: the generation time (default: the clock): ``generated_at`` and open cases' lateness.

    Raises:
        InvalidInput: ``min_cell`` below 1.
        OSError: the directory or a file cannot be written.
    """
    if min_cell < 1:
        raise InvalidInput("bad_min_cell", "min_cell must be at least 1")
    now = now or utcnow()
    out_dir = await asyncio.to_thread(_directory, out_dir)
    formats: tuple[Format, ...] = (CsvFormat(), JsonFormat())
    paths = tuple(out_dir / f"cases-{period.label}.{form.suffix}" for form in formats)
    partial = tuple(path.with_name(f".{path.name}.partial") for path in paths)
    async with sessions() as session:
        cells = await count_cells(session, period, min_cell)
        meta = metadata(period, cells, now)
        files = await asyncio.to_thread(_open, partial)
        try:
            await asyncio.to_thread(_write, files, [form.head(meta) for form in formats])
            batch: list[tuple[Any, ...]] = []
            async for row in dataset_rows(session, period, cells, now=now):
                batch.append(row)
                if len(batch) >= BATCH:
                    await asyncio.to_thread(_write, files, [form.rows(batch) for form in formats])
                    batch = []
            await asyncio.to_thread(_write, files, [form.rows(batch) + form.tail() for form in formats])
        except BaseException:
            await asyncio.to_thread(_discard, files, partial)
            raise
        await asyncio.to_thread(_close, files)
    await asyncio.to_thread(_rename, partial, paths)
    async with sessions.begin() as session:
        audit.record(
            session,
            None,
            "open_data.export",
            period.label,
            f"{cells.rows} rows ({cells.generalised} generalised, min_cell {min_cell}) to {out_dir} by {exported_by}",
            actor_name="cli",
        )
    return Written(period, paths, cells.rows, cells.generalised, min_cell)


def _directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _open(paths: Sequence[Path]) -> list[io.TextIOWrapper]:
    files: list[io.TextIOWrapper] = []
    try:
        for path in paths:
            files.append(path.open("w", encoding="utf-8", newline=""))
    except OSError:
        _close(files)
        raise
    return files


def _write(files: Sequence[io.TextIOWrapper], texts: Sequence[str]) -> None:
    for handle, text in zip(files, texts, strict=True):
        handle.write(text)


def _close(files: Sequence[io.TextIOWrapper]) -> None:
    for handle in files:
        handle.close()


def _discard(files: Sequence[io.TextIOWrapper], partial: Sequence[Path]) -> None:
    _close(files)
    for path in partial:
        path.unlink(missing_ok=True)


def _rename(partial: Sequence[Path], paths: Sequence[Path]) -> None:
    for temporary, path in zip(partial, paths, strict=True):
        temporary.replace(path)


def last_month(now: datetime | None = None) -> Period:
    """The month before this one (China time): what a monthly job publishes on the 1st."""
    today = (now or utcnow()).astimezone(CHINA_TZ)
    last = today.replace(day=1) - timedelta(days=1)
    return Period.month(f"{last:%Y-%m}")
