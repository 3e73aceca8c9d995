"""Staff duty hours: working days of the official calendar, 09:00-18:00 Beijing time by default."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from crm_backend.dispatch.deadlines import CHINA_TZ, is_working_day
from crm_backend.duty import DUTY_HOURS_ENV, DutyHours, InvalidDutyHours, clock_text, next_duty_start, on_duty

DEFAULT = DutyHours(time(9, 0), time(18, 0))


def beijing(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=CHINA_TZ)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (beijing(2026, 11, 24, 10), True),  # a Tuesday morning
        (beijing(2026, 11, 24, 20), False),  # the same evening
        (beijing(2026, 11, 24, 9), True),  # duty starts at 9:00 sharp
        (beijing(2026, 11, 24, 8, 59), False),
        (beijing(2026, 11, 24, 17, 59), True),
        (beijing(2026, 11, 24, 18), False),  # and is over at 18:00
        (beijing(2026, 11, 21, 10), False),  # an ordinary Saturday
        (beijing(2026, 10, 1, 10), False),  # National Day, a Thursday
        (beijing(2026, 10, 10, 10), True),  # a Saturday worked in exchange for the Golden Week
        (beijing(2026, 1, 4, 10), True),  # a Sunday worked in exchange for New Year
    ],
    ids=[
        "weekday 10:00",
        "weekday 20:00",
        "weekday 9:00",
        "weekday 8:59",
        "weekday 17:59",
        "weekday 18:00",
        "saturday",
        "national day",
        "adjusted saturday",
        "adjusted sunday",
    ],
)
def test_staff_are_on_duty_on_working_days_between_nine_and_six(moment: datetime, expected: bool) -> None:
    assert on_duty(moment, DEFAULT) is expected


def test_the_adjusted_days_are_what_the_calendar_says() -> None:
    """The adjusted days above are real: chinese-calendar knows them for 2026."""
    assert beijing(2026, 10, 10, 10).weekday() == 5 and is_working_day(beijing(2026, 10, 10, 10).date())
    assert beijing(2026, 1, 4, 10).weekday() == 6 and is_working_day(beijing(2026, 1, 4, 10).date())


def test_duty_is_judged_in_beijing_time_whatever_the_zone_of_the_moment() -> None:
    assert on_duty(datetime(2026, 11, 24, 2, 0, tzinfo=UTC), DEFAULT)  # 10:00 in Beijing
    assert not on_duty(datetime(2026, 11, 24, 12, 0, tzinfo=UTC), DEFAULT)  # 20:00 in Beijing


def test_a_moment_without_a_time_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        on_duty(datetime(2026, 11, 24, 10, 0), DEFAULT)


@pytest.mark.parametrize(
    ("moment", "start"),
    [
        (beijing(2026, 11, 24, 20), beijing(2026, 11, 25, 9)),  # Tuesday evening: Wednesday morning
        (beijing(2026, 11, 24, 7), beijing(2026, 11, 24, 9)),  # before nine: the same morning
        (beijing(2026, 11, 24, 10), beijing(2026, 11, 25, 9)),  # on duty: the next start
        (beijing(2026, 11, 27, 19), beijing(2026, 11, 30, 9)),  # Friday evening: Monday
        (beijing(2026, 11, 28, 10), beijing(2026, 11, 30, 9)),  # Saturday: Monday
        (beijing(2026, 9, 30, 20), beijing(2026, 10, 8, 9)),  # the eve of the Golden Week
        (beijing(2026, 10, 9, 19), beijing(2026, 10, 10, 9)),  # Friday before an adjusted Saturday
    ],
    ids=["evening", "early morning", "on duty", "friday evening", "saturday", "golden week", "adjusted saturday"],
)
def test_next_duty_start_is_the_next_working_days_start(moment: datetime, start: datetime) -> None:
    assert next_duty_start(moment, DEFAULT) == start


def test_a_year_the_calendar_does_not_know_counts_monday_to_friday() -> None:
    assert on_duty(beijing(2027, 3, 1, 10), DEFAULT)  # a Monday
    assert not on_duty(beijing(2027, 3, 6, 10), DEFAULT)  # a Saturday
    assert next_duty_start(beijing(2027, 3, 5, 19), DEFAULT) == beijing(2027, 3, 8, 9)


def test_other_hours_move_both_the_duty_and_the_next_start() -> None:
    mornings = DutyHours.parse("08:30-12:00")
    assert on_duty(beijing(2026, 11, 24, 8, 30), mornings)
    assert not on_duty(beijing(2026, 11, 24, 13), mornings)
    assert next_duty_start(beijing(2026, 11, 24, 13), mornings) == beijing(2026, 11, 25, 8, 30)
    assert mornings.label() == "8:30-12:00"
    assert clock_text(next_duty_start(beijing(2026, 11, 24, 13), mornings)) == "8:30"


@pytest.mark.parametrize(
    ("text", "hours"),
    [
        ("09:00-18:00", DEFAULT),
        ("9:00-18:00", DEFAULT),
        (" 08:30 - 17:30 ", DutyHours(time(8, 30), time(17, 30))),
        ("00:00-23:59", DutyHours(time(0, 0), time(23, 59))),
    ],
)
def test_duty_hours_are_read_as_two_clock_times(text: str, hours: DutyHours) -> None:
    assert DutyHours.parse(text) == hours


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must look like"),
        ("9-18", "must look like"),
        ("nine to six", "must look like"),
        ("09:00~18:00", "must look like"),
        ("25:00-26:00", "impossible time"),
        ("09:60-18:00", "impossible time"),
        ("18:00-09:00", "start before it ends"),
        ("09:00-09:00", "start before it ends"),
    ],
)
def test_unreadable_duty_hours_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidDutyHours, match=reason) as refused:
        DutyHours.parse(text)
    assert DUTY_HOURS_ENV in str(refused.value)


def test_duty_hours_come_from_the_environment_with_a_default() -> None:
    assert DutyHours.from_env({}) == DEFAULT
    assert DutyHours.from_env({DUTY_HOURS_ENV: ""}) == DEFAULT
    assert DutyHours.from_env({DUTY_HOURS_ENV: "08:00-17:00"}) == DutyHours(time(8, 0), time(17, 0))
    with pytest.raises(InvalidDutyHours):
        DutyHours.from_env({DUTY_HOURS_ENV: "always"})


def test_without_explicit_hours_the_environment_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DUTY_HOURS_ENV, "19:00-22:00")
    assert on_duty(beijing(2026, 11, 24, 20))
    assert next_duty_start(beijing(2026, 11, 24, 10)) == beijing(2026, 11, 24, 19)
    monkeypatch.delenv(DUTY_HOURS_ENV)
    assert not on_duty(beijing(2026, 11, 24, 20))
