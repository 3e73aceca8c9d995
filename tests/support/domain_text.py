"""What the bot should say, read from domain.yml, for tests that compare replies."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

import yaml

from crm_backend.dispatch.deadlines import CHINA_TZ
from tests.support.stack import ROOT


@cache
def _responses() -> dict[str, Any]:
    domain = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
    return domain["responses"]  # type: ignore[no-any-return]


def utter(name: str, **slots: str) -> str:
    """The first variant of a response in domain.yml, with its {slots} filled in."""
    text: str = _responses()[name][0]["text"]
    return text.format(**slots) if slots else text


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
        return utter("utter_dispatch_preview_manual", suggestions="、".join(decision["suggestions"]))
    if decision["urgent"]:
        return utter("utter_dispatch_preview_urgent", category=case["category"], department=case["department"])
    return utter(
        "utter_dispatch_preview", category=case["category"], department=case["department"], due=day_text(case["due_at"])
    )
