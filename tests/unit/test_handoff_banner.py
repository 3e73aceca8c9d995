"""The web chat's hand-off banner: on duty or not, and the bot's own sentence for it."""

from __future__ import annotations

from datetime import datetime

import pytest

from bot.handoff_banner import HandoffBanner
from bot.responses import Responses
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.duty import DutyHours
from crm_backend.settings import PROJECT_ROOT
from tests.support.domain_text import utter

RESPONSES = Responses.load(PROJECT_ROOT / "domain.yml")


def banner_at(moment: datetime, hours: str = "09:00-18:00") -> HandoffBanner:
    return HandoffBanner(RESPONSES, DutyHours.parse(hours), clock=lambda: moment)


def test_on_duty_the_banner_says_staff_answer_shortly() -> None:
    tuesday_morning = datetime(2026, 11, 24, 10, 0, tzinfo=CHINA_TZ)
    assert banner_at(tuesday_morning).frame() == {
        "type": "handoff",
        "active": True,
        "on_duty": True,
        "next_duty_start": None,
        "text": utter("utter_handoff_on_duty"),
    }


@pytest.mark.parametrize(
    ("moment", "start"),
    [
        (datetime(2026, 11, 27, 20, 0, tzinfo=CHINA_TZ), datetime(2026, 11, 30, 8, 30, tzinfo=CHINA_TZ)),
        (datetime(2026, 11, 24, 7, 0, tzinfo=CHINA_TZ), datetime(2026, 11, 24, 8, 30, tzinfo=CHINA_TZ)),
    ],
    ids=["friday evening", "early morning"],
)
def test_off_duty_the_banner_says_when_staff_next_answer(moment: datetime, start: datetime) -> None:
    state = banner_at(moment, "08:30-17:30").state()
    assert state == {
        "on_duty": False,
        "next_duty_start": start.isoformat(),
        "text": utter("utter_handoff_off_duty", hours="8:30-17:30", date=f"{start.month}月{start.day}日", start="8:30"),
    }
