"""Reading a tracker's events: the citizen's previous turn and what the bot said in it."""

from __future__ import annotations

from typing import Any

from rasa_sdk import Tracker

from actions.common import HANDOFF_MARKER

Event = dict[str, Any]


def previous_turn(events: list[Event]) -> tuple[Event, list[Event]] | None:
    """The citizen's previous message and the events after it, up to the latest message.

    None when there is no earlier message in this session.
    """
    user_indexes = [index for index, event in enumerate(events) if event.get("event") == "user"]
    if len(user_indexes) < 2:
        return None
    previous, latest = user_indexes[-2], user_indexes[-1]
    between = events[previous + 1 : latest]
    if any(event.get("event") == "session_started" for event in between):
        return None
    return events[previous], between


def bot_responses(events: list[Event]) -> list[str | None]:
    """The domain responses the bot uttered in these events (None for a message without one)."""
    return [(event.get("metadata") or {}).get("utter_action") for event in events if event.get("event") == "bot"]


def handed_off(events: list[Event]) -> bool:
    """Whether the bot handed the conversation to staff in these events."""
    return any(
        event.get("event") == "bot" and (event.get("data") or {}).get("custom") == HANDOFF_MARKER for event in events
    )


def intent_of(user_event: Event) -> str | None:
    return ((user_event.get("parse_data") or {}).get("intent") or {}).get("name")


def follows_a_fallback(tracker: Tracker) -> bool:
    """Whether the citizen's previous message was not understood either.

    That is: it fell back, the bot asked to rephrase (`utter_default`) and did not hand off.
    A message a form took as an answer does not count, nor one in an earlier session.
    """
    turn = previous_turn(tracker.events)
    if turn is None:
        return False
    message, after = turn
    return intent_of(message) == "nlu_fallback" and "utter_default" in bot_responses(after) and not handed_off(after)


def last_bot_response(tracker: Tracker) -> str | None:
    """The last response the bot gave before the citizen's latest message, if any this session."""
    turn = previous_turn(tracker.events)
    if turn is None:
        return None
    responses = [response for response in bot_responses(turn[1]) if response]
    return responses[-1] if responses else None
