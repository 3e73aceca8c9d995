"""What the web chat page shows while staff hold a conversation: on duty or not, and when.

The page cannot know the duty hours or the official calendar, so the server tells it, in
the hand-off frame and in the welcome, with the same sentence the bot says on handing off
(`utter_handoff_on_duty`, or `utter_handoff_off_duty` with the next start of duty).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from bot.responses import Responses
from crm_backend.duty import DutyHours, handoff_response, next_duty_start
from crm_backend.models import utcnow


class HandoffBanner:
    """Builds the hand-off state the page shows in its banner."""

    def __init__(self, responses: Responses, hours: DutyHours, clock: Callable[[], datetime] | None = None) -> None:
        """Args:
        responses: the domain's response texts.
        hours: staff duty hours (`STAFF_DUTY_HOURS`).
        clock: the current time; `crm_backend.models.utcnow` when omitted (tests fix it).
        """
        self._responses = responses
        self._hours = hours
        self._clock = clock or utcnow

    def state(self) -> dict[str, Any]:
        """`on_duty`, `next_duty_start` (ISO, off duty only) and the banner's `text`, now."""
        now = self._clock()
        response, slots = handoff_response(now, self._hours)
        on_duty = response == "utter_handoff_on_duty"
        return {
            "on_duty": on_duty,
            "next_duty_start": None if on_duty else next_duty_start(now, self._hours).isoformat(),
            "text": self._responses.text(response).format(**slots),
        }

    def frame(self) -> dict[str, Any]:
        """The websocket frame that tells an open page staff now hold its conversation."""
        return {"type": "handoff", "active": True, **self.state()}
