"""What the bot should say, read from domain.yml, for tests that compare replies."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import yaml

from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.duty import DutyHours, clock_text, next_duty_start, on_duty
from tests.support.stack import ROOT


@cache
def _responses() -> dict[str, Any]:
    domain = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    return domain["responses"]  # type: ignore[no-any-return]


def utter(name: str, **slots: str) -> str:
    """The first variant of a response in domain.yml, with its {slots} filled in."""
    text: str = _responses()[name][0]["text"]
    return text.format(**slots) if slots else text


def privacy_notice() -> str:
    """The notice a new conversation opens with, with the default retention periods (the stacks set none)."""
    return utter("utter_privacy_notice", conversation_days="180", case_years="3年")


def utter_buttons(name: str) -> list[dict[str, str]]:
    """The buttons a response in domain.yml carries."""
    return [{"title": b["title"], "payload": b["payload"]} for b in _responses()[name][0].get("buttons", [])]


def day_text(iso: str) -> str:
    """A deadline from the API as the bot writes it to citizens: 12月8日 (Beijing time)."""
    local = datetime.fromisoformat(iso).astimezone(CHINA_TZ)
    return f"{local.month}月{local.day}日"


def expected_preview(case: dict[str, Any]) -> str:
    """The dispatch preview the citizen should have been shown, from the routing the API records."""
    [decision] = case["routing"]
    if decision["queued"]:
        return utter(
            "utter_dispatch_preview_manual", case_type=case["case_type"], suggestions="、".join(decision["suggestions"])
        )
    if decision["urgent"]:
        return utter(
            "utter_dispatch_preview_urgent",
            case_type=case["case_type"],
            category=case["category"],
            department=case["department"],
        )
    return utter(
        "utter_dispatch_preview",
        case_type=case["case_type"],
        category=case["category"],
        department=case["department"],
        due=day_text(case["due_at"]),
    )


def handoff_texts(before: datetime, after: datetime) -> list[str]:
    """What the bot may say on handing off between two moments (staff on duty or not then).

    The hours are the ones the app reads (`STAFF_DUTY_HOURS`, or 09:00-18:00).
    """
    hours = DutyHours.from_env()

    def at(moment: datetime) -> str:
        if on_duty(moment, hours):
            return utter("utter_handoff_on_duty")
        start = next_duty_start(moment, hours)
        local = start.astimezone(CHINA_TZ)
        return utter(
            "utter_handoff_off_duty", hours=hours.label(), date=f"{local.month}月{local.day}日", start=clock_text(start)
        )

    return sorted({at(before), at(after)})
