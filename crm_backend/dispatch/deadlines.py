"""Working-day deadlines, counted with China's public holidays and adjusted working days.

`chinese-calendar` knows the State Council's holiday schedule year by year (including the
weekend days that become working days). A year it does not know yet falls back to plain
Monday–Friday, with a warning, so a deadline is never refused; update the package when
the next year's schedule is published.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import lru_cache

import chinese_calendar

logger = logging.getLogger(__name__)

CHINA_TZ = timezone(timedelta(hours=8))
# Replies are due by the end of the office day.
END_OF_OFFICE_DAY = time(18, 0)


@lru_cache(maxsize=4096)
def is_working_day(day: date) -> bool:
    """Whether government offices work on `day` (holidays off, adjusted weekends on)."""
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:
        _warn_unknown_year(day.year)
        return day.weekday() < 5


@lru_cache(maxsize=16)
def _warn_unknown_year(year: int) -> None:
    logger.warning("chinese-calendar has no holiday data for %s; counting Monday-Friday only", year)


def add_working_days(start: date, working_days: int) -> date:
    """The date `working_days` working days after `start` (the start day itself not counted)."""
    day = start
    remaining = working_days
    while remaining > 0:
        day += timedelta(days=1)
        if is_working_day(day):
            remaining -= 1
    return day


def due_at(filed_at: datetime, working_days: int, *, urgent: bool = False) -> datetime:
    """When a reply is due: end of the office day, `working_days` working days after filing.

    Urgent reports (gas leaks, outages, safety hazards) are due the same day, whatever day
    it is. Returned as an aware UTC datetime.
    """
    local = filed_at.astimezone(CHINA_TZ)
    day = local.date() if urgent else add_working_days(local.date(), working_days)
    end = datetime.combine(day, END_OF_OFFICE_DAY, tzinfo=CHINA_TZ)
    if urgent and end <= local:
        end = datetime.combine(day, time(23, 59), tzinfo=CHINA_TZ)
    return end.astimezone(UTC)
