"""Small helpers shared by the actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from rasa_sdk import Tracker
from rasa_sdk.events import SlotSet
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.lifecycle import CaseStatus
from crm_backend.models import ChannelIdentity, Conversation
from crm_backend.services.conversations import current_conversation, find_identity
from crm_backend.services.lookup import ProofFailure

HANDOFF_MARKER = {"handoff": True}
# What a status means to the citizen (the domain's `utter_status_*`, read by the app).
StatusWords = Callable[[CaseStatus], str]


class ProofWatcher(Protocol):
    """Who hears of a failed proof (the app's `bot.proof_alarm.ProofAlarm`): the citizen of a case
    it locked, supervisors when failures pass the hourly ceiling. `record` writes what is to be
    said in the failure's own transaction; `deliver` sends it after the commit."""

    async def record(self, session: AsyncSession, failure: ProofFailure) -> Any: ...

    def deliver(self, notice: Any) -> None: ...


def latest_text(tracker: Tracker) -> str:
    """The citizen's latest message as typed."""
    return (tracker.latest_message or {}).get("text") or ""


def steered_letter(tracker: Tracker) -> str | None:
    """The intent the app's letter gate steered the latest message to (`bot.letters`), if it was a letter."""
    metadata = (tracker.latest_message or {}).get("metadata") or {}
    letter = metadata.get("letter") if isinstance(metadata, dict) else None
    return str(letter.get("intent")) if isinstance(letter, dict) and letter.get("intent") else None


def entity_value(tracker: Tracker, entity: str) -> str | None:
    """The first value of an entity in the latest message, if any."""
    value = next(tracker.get_latest_entity_values(entity), None)
    return str(value) if value is not None else None


def reset_slots(*names: str) -> list[dict[str, Any]]:
    """Events clearing the named slots."""
    return [SlotSet(name, None) for name in names]


async def identity_and_conversation(
    session: AsyncSession, tracker: Tracker
) -> tuple[ChannelIdentity | None, Conversation | None]:
    """The channel identity behind the tracker and its current conversation."""
    identity = await find_identity(session, tracker.sender_id)
    if identity is None:
        return None, None
    return identity, await current_conversation(session, identity)
