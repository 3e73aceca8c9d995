"""Imported history: cases filed from a message board's past messages (`crm_backend.importer`).

They are records of past demand, not anyone's work today. They count where the past matters:
the dashboard's volumes, hot issues, repeat demand, handling time from 受理 to 办结, reply
quality. They stay out of what staff act on now and of what the source cannot tell:

- the manual dispatch queue (待派单) and the overdue lists (当前超期, the case list's 已超期): a
  message that never got a reply on the board is nobody's open case here;
- a stage the source does not show: the board gives a message's time and its reply's time only,
  so 派单, 签收 and 办理 of an imported case are not measured (按时签收 neither), an unanswered
  one is neither on time nor late, and none was ever asked for a 回访 (no 回访率 or 满意率).
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists

from crm_backend.models import ImportedMessage, ServiceCase


def imported() -> ColumnElement[bool]:
    """True for a case imported as history (a probe of `imported_message`'s unique case index)."""
    return exists().where(ImportedMessage.case_id == ServiceCase.id)


def live() -> ColumnElement[bool]:
    """True for a case filed through this system (not imported history)."""
    return ~imported()
