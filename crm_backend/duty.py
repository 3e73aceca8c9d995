"""When staff are on duty to answer handed-off conversations.

Staff answer on working days (China's official calendar, holidays off and adjusted weekend
days on, as for deadlines) between a start and an end time, Beijing time: 09:00-18:00 unless
the `STAFF_DUTY_HOURS` environment variable says otherwise (`"08:30-17:30"`). A value that is
not two `HH:MM` times, the first earlier than the second, is refused with `InvalidDutyHours`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from crm_backend.dispatch.deadlines import CHINA_TZ, is_working_day

DUTY_HOURS_ENV = "STAFF_DUTY_HOURS"
DEFAULT_DUTY_HOURS = "09:00-18:00"
_HOURS = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")
# Longer than any run of days off the official calendar has (the Spring Festival week plus
# weekends); a safety bound, never reached with a valid calendar.
_MAX_DAYS_AHEAD = 60


class InvalidDutyHours(ValueError):
    """A duty-hours setting that cannot be read."""


@dataclass(frozen=True)
class DutyHours:
    """The daily start and end of staff duty, Beijing time (end excluded)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> DutyHours:
        """Read `"HH:MM-HH:MM"`.

        Raises:
            InvalidDutyHours: not two valid times, or the start not before the end.
        """
        match = _HOURS.fullmatch(text)
        if match is None:
            raise InvalidDutyHours(f"{DUTY_HOURS_ENV} must look like {DEFAULT_DUTY_HOURS!r}, got {text!r}")
        hour1, minute1, hour2, minute2 = (int(part) for part in match.groups())
        try:
            start, end = time(hour1, minute1), time(hour2, minute2)
        except ValueError as error:
            raise InvalidDutyHours(f"{DUTY_HOURS_ENV} has an impossible time in {text!r}: {error}") from None
        if start >= end:
            raise InvalidDutyHours(f"{DUTY_HOURS_ENV} must start before it ends, got {text!r}")
        return cls(start, end)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DutyHours:
        """The hours `STAFF_DUTY_HOURS` sets, or 09:00-18:00 when it is unset or empty.

        Raises:
            InvalidDutyHours: the variable is set to something unreadable.
        """
        value = (os.environ if environ is None else environ).get(DUTY_HOURS_ENV, "").strip()
        return cls.parse(value or DEFAULT_DUTY_HOURS)

    def label(self) -> str:
        """The hours as citizens read them: 9:00-18:00."""
        return f"{_clock(self.start)}-{_clock(self.end)}"


def _clock(moment: time) -> str:
    return f"{moment.hour}:{moment.minute:02d}"


def clock_text(moment: datetime) -> str:
    """A moment's Beijing time of day as citizens read it: 9:00."""
    return _clock(moment.astimezone(CHINA_TZ).time())


def _local(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("duty times need an aware datetime")
    return now.astimezone(CHINA_TZ)


def on_duty(now: datetime, hours: DutyHours | None = None) -> bool:
    """Whether staff are on duty at `now` (an aware datetime).

    Args:
        now: the moment to ask about.
        hours: the daily duty hours; `STAFF_DUTY_HOURS` (or 09:00-18:00) when omitted.
    """
    hours = hours or DutyHours.from_env()
    local = _local(now)
    return is_working_day(local.date()) and hours.start <= local.time() < hours.end


def next_duty_start(now: datetime, hours: DutyHours | None = None) -> datetime:
    """The first start of duty after `now`, as an aware Beijing-time datetime.

    Before the start of a working day that is the same day's start; otherwise the start of
    the next working day (so, while on duty, tomorrow's or the next working day's start).
    """
    hours = hours or DutyHours.from_env()
    local = _local(now)
    for ahead in range(_MAX_DAYS_AHEAD + 1):
        day = local.date() + timedelta(days=ahead)
        start = datetime.combine(day, hours.start, tzinfo=CHINA_TZ)
        if start > local and is_working_day(day):
            return start
    raise RuntimeError(f"no working day within {_MAX_DAYS_AHEAD} days of {local:%Y-%m-%d}")  # pragma: no cover


def day_text(moment: datetime) -> str:
    """A moment's Beijing date as citizens read it: 11月30日."""
    local = moment.astimezone(CHINA_TZ)
    return f"{local.month}月{local.day}日"


def handoff_response(now: datetime, hours: DutyHours) -> tuple[str, dict[str, str]]:
    """What to tell a citizen handed to staff at `now`: a domain.yml response and its slots.

    On duty `utter_handoff_on_duty` (staff answer shortly); off duty `utter_handoff_off_duty`
    with the duty hours and the date and time of the next start of duty.
    """
    if on_duty(now, hours):
        return "utter_handoff_on_duty", {}
    start = next_duty_start(now, hours)
    return "utter_handoff_off_duty", {"date": day_text(start), "start": clock_text(start), "hours": hours.label()}
