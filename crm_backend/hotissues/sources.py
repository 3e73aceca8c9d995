"""Where hot-issue records come from: a message-board CSV, or the CRM's cases.

The real history (`citizen_messages_hot_issues.csv`) is the project's copy, found through
`crm_backend.data.history.history_file`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.hotissues.core import TITLE_CHARS, HotRecord, Locate, window_bounds
from crm_backend.importer import parse_time
from crm_backend.models import ServiceCase

BOARD_COLUMNS = ("msg_id", "user", "title", "time", "detail")


class BoardFileError(ValueError):
    """A message-board CSV cannot be read; the message names the file and the line."""


def parse_board_time(raw: str) -> datetime:
    """A board time as China time, read by the importer's parser (`crm_backend.importer.parse_time`).

    Raises:
        ValueError: not a time of the source's formats.
    """
    moment = parse_time(raw)
    if moment is None:
        raise ValueError(f"unreadable time {raw!r}")
    return moment.astimezone(CHINA_TZ)


def read_board_csv(path: Path | str) -> list[HotRecord]:
    """Every message of a message-board CSV (columns msg_id,user,title,time,detail[,likes]).

    Raises:
        BoardFileError: the file is missing, lacks a column, or a row's time or likes is unreadable.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return list(_board_rows(path, handle))
    except OSError as error:
        raise BoardFileError(f"{path}: {error.strerror or error}") from error


def _board_rows(path: Path, handle: Iterator[str]) -> Iterator[HotRecord]:
    reader = csv.DictReader(handle)
    missing = [column for column in BOARD_COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise BoardFileError(f"{path}: missing column(s) {', '.join(missing)}")
    for row in reader:
        try:
            yield HotRecord(
                key=row["msg_id"].strip(),
                citizen=row["user"].strip(),
                title=row["title"].strip(),
                text=row["detail"] or "",
                time=parse_board_time(row["time"]),
                likes=int(row.get("likes") or 0),
            )
        except ValueError as error:
            raise BoardFileError(f"{path}, line {reader.line_num}: {error}") from error


def in_window(records: list[HotRecord], since: date, until: date) -> list[HotRecord]:
    """The records written between the two China dates, both included."""
    start, end = window_bounds(since, until)
    return [record for record in records if start <= record.time < end]


async def records_from_cases(session: AsyncSession, since: date, until: date) -> list[HotRecord]:
    """The cases filed in the window as records: one query over the indexed ``created_at``.

    A case's title is the first line of its description when that line is short (a board
    letter is imported as title, line break, body), else its first words.
    """
    start, end = window_bounds(since, until)
    rows = await session.execute(
        select(
            ServiceCase.case_number,
            ServiceCase.citizen_id,
            ServiceCase.description,
            ServiceCase.created_at,
            ServiceCase.district,
        )
        .where(ServiceCase.created_at >= start, ServiceCase.created_at < end)
        .order_by(ServiceCase.created_at, ServiceCase.id)
    )
    records = []
    for number, citizen_id, description, created_at, district in rows.tuples():
        first, _, rest = description.strip().partition("\n")
        title = first if rest and len(first) <= TITLE_CHARS else description.strip()[:30]
        records.append(
            HotRecord(
                key=number,
                citizen=str(citizen_id),
                title=title,
                text=rest if rest and len(first) <= TITLE_CHARS else description,
                time=created_at,
                district=district,
            )
        )
    return records


@lru_cache(maxsize=1)
def gazetteer_locate() -> Locate:
    """A `Locate` on the project's gazetteer (built once: jieba's dictionary takes a second or two)."""
    from crm_backend.dispatch.location import Gazetteer, LocationExtractor
    from crm_backend.dispatch.service import GAZETTEER_DIR

    extractor = LocationExtractor(Gazetteer.load(GAZETTEER_DIR))

    def locate(text: str, district: str | None) -> str | None:
        found = extractor.extract(text, hint_district=district)
        return found.address or found.street or found.district

    return locate
