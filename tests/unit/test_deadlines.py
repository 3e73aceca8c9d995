"""Working-day deadlines with China's holidays and adjusted working days."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from crm_backend.dispatch.deadlines import CHINA_TZ, add_working_days, due_at, is_working_day


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 10, 1), False),  # National Day
        (date(2026, 10, 7), False),  # still the Golden Week
        (date(2026, 10, 8), True),
        (date(2026, 9, 27), False),  # Sunday
        (date(2026, 9, 28), True),
        (date(2026, 11, 21), False),  # an ordinary Saturday
        (date(2026, 11, 23), True),
    ],
)
def test_working_days_follow_the_official_calendar(day: date, working: bool) -> None:
    assert is_working_day(day) is working


def test_an_adjusted_saturday_is_a_working_day() -> None:
    saturday = date(2026, 10, 10)  # worked in exchange for the National Day holiday
    assert saturday.weekday() == 5
    assert is_working_day(saturday)


def test_a_case_filed_before_national_day_skips_the_whole_holiday() -> None:
    # Filed on Wednesday 30 September: 1-7 October are off, 8 October is the next working day,
    # and the third is the adjusted Saturday 10 October.
    assert add_working_days(date(2026, 9, 30), 1) == date(2026, 10, 8)
    filed = datetime(2026, 9, 30, 10, 0, tzinfo=CHINA_TZ)
    assert due_at(filed, 3).astimezone(CHINA_TZ) == datetime(2026, 10, 10, 18, 0, tzinfo=CHINA_TZ)


def test_a_case_filed_on_an_adjusted_saturday_counts_from_that_working_day() -> None:
    filed = datetime(2026, 10, 10, 9, 0, tzinfo=CHINA_TZ)  # Saturday, but a working day
    assert due_at(filed, 1).astimezone(CHINA_TZ).date() == date(2026, 10, 12)


def test_weekends_are_skipped() -> None:
    filed = datetime(2026, 11, 20, 15, 0, tzinfo=CHINA_TZ)  # Friday
    assert due_at(filed, 1).astimezone(CHINA_TZ).date() == date(2026, 11, 23)


def test_urgent_reports_are_due_the_same_day() -> None:
    filed = datetime(2026, 10, 3, 9, 30, tzinfo=CHINA_TZ)  # even in the holiday
    assert due_at(filed, 10, urgent=True).astimezone(CHINA_TZ) == datetime(2026, 10, 3, 18, 0, tzinfo=CHINA_TZ)
    late = datetime(2026, 11, 24, 20, 0, tzinfo=CHINA_TZ)
    assert due_at(late, 10, urgent=True).astimezone(CHINA_TZ) == datetime(2026, 11, 24, 23, 59, tzinfo=CHINA_TZ)


def test_a_year_without_holiday_data_falls_back_to_weekdays() -> None:
    filed = datetime(2030, 3, 1, 10, 0, tzinfo=CHINA_TZ)  # Friday
    assert due_at(filed, 1).astimezone(CHINA_TZ).date() == date(2030, 3, 4)
