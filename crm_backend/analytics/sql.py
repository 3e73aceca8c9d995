"""Small SQL expressions the dashboard needs that SQLite and PostgreSQL spell differently.

Timestamps are stored in UTC; the centre counts its days in China time (UTC+8, no daylight
saving), so a day or a week is taken after shifting by eight hours. Each construct compiles
to the dialect's own functions and is compared or grouped on as text (``YYYY-MM-DD``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement


class china_day(FunctionElement[str]):
    """The China-time calendar day of a timestamp, as ``YYYY-MM-DD`` text."""

    type = String()
    inherit_cache = True


class china_week(FunctionElement[str]):
    """The Monday (``YYYY-MM-DD``) of the China-time week a timestamp falls in."""

    type = String()
    inherit_cache = True


class days_between(FunctionElement[float]):
    """``end - start`` in (fractional) calendar days; NULL if either is NULL."""

    type = Float()
    inherit_cache = True


def _args(element: FunctionElement[Any], compiler: Any, **kw: Any) -> list[str]:
    return [compiler.process(clause, **kw) for clause in element.clauses]


@compiles(china_day, "sqlite")
def _day_sqlite(element: china_day, compiler: Any, **kw: Any) -> str:
    (ts,) = _args(element, compiler, **kw)
    return f"strftime('%Y-%m-%d', {ts}, '+8 hours')"


@compiles(china_day, "postgresql")
def _day_postgresql(element: china_day, compiler: Any, **kw: Any) -> str:
    (ts,) = _args(element, compiler, **kw)
    return f"to_char(({ts}) AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD')"


@compiles(china_week, "sqlite")
def _week_sqlite(element: china_week, compiler: Any, **kw: Any) -> str:
    (ts,) = _args(element, compiler, **kw)
    # 'weekday 0' moves forward to the Sunday ending the week (or stays on it); six days back is its Monday.
    return f"strftime('%Y-%m-%d', {ts}, '+8 hours', 'weekday 0', '-6 days')"


@compiles(china_week, "postgresql")
def _week_postgresql(element: china_week, compiler: Any, **kw: Any) -> str:
    (ts,) = _args(element, compiler, **kw)
    return f"to_char(date_trunc('week', ({ts}) AT TIME ZONE 'Asia/Shanghai'), 'YYYY-MM-DD')"


@compiles(days_between, "sqlite")
def _between_sqlite(element: days_between, compiler: Any, **kw: Any) -> str:
    start, end = _args(element, compiler, **kw)
    return f"(julianday({end}) - julianday({start}))"


@compiles(days_between, "postgresql")
def _between_postgresql(element: days_between, compiler: Any, **kw: Any) -> str:
    start, end = _args(element, compiler, **kw)
    return f"(extract(epoch from ({end}) - ({start})) / 86400.0)"
