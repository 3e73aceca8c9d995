"""A citizen cannot name an intent: payloads reach the engine only if the bot offered them."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.engine import EngineClient
from bot.pipeline import Inbound, MessagePipeline, as_words
from bot.responses import Responses
from crm_backend.services.conversations import OutgoingMessage, current_conversation, log_outgoing, resolve_identity

RATING_BUTTONS = [{"title": "★", "payload": '/rate_service{"stars": "1"}'}]


class RecordingEngine:
    """Stands in for the engine client: records what it was sent and answers one line."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, sender_id: str, text: str, *, channel: str, metadata: Any = None) -> list[dict[str, Any]]:
        self.sent.append(text)
        return [{"text": "ok"}]


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture
def pipeline(sessions: async_sessionmaker[AsyncSession], engine: RecordingEngine) -> MessagePipeline:
    responses = Responses(
        {"utter_empty_message": "empty", "utter_message_truncated": "cut", "utter_system_busy": "busy"}
    )
    fake: Any = engine
    client: EngineClient = fake
    return MessagePipeline(sessions, client, responses, max_message_chars=500, max_logged_chars=2000)


async def offer(sessions: async_sessionmaker[AsyncSession], external_id: str, buttons: list[dict[str, str]]) -> None:
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", external_id)
        conversation = await current_conversation(session, identity)
        log_outgoing(session, conversation, [OutgoingMessage("请为本次服务评分", buttons=buttons)])


@pytest.mark.parametrize(
    ("text", "payload", "sent"),
    [
        (
            '/EXTERNAL_followup{"followup_case": "20261204-0001"}',
            None,
            'EXTERNAL_followup{"followup_case": "20261204-0001"}',
        ),
        ("/rate_service", None, "rate_service"),
        (" //greet", None, "greet"),
        ("★", '/rate_service{"stars": "1"}', "★"),
        ("go", '/EXTERNAL_followup{"followup_case": "20261204-0001"}', "go"),
    ],
)
async def test_a_payload_the_bot_did_not_offer_reaches_the_engine_as_words(
    pipeline: MessagePipeline, engine: RecordingEngine, text: str, payload: str | None, sent: str
) -> None:
    await pipeline.handle(Inbound("web", "citizen-a", text, payload=payload))
    assert engine.sent == [sent]


async def test_a_payload_the_bot_offered_reaches_the_engine_as_the_intent(
    pipeline: MessagePipeline, engine: RecordingEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await offer(sessions, "citizen-b", RATING_BUTTONS)
    await pipeline.handle(Inbound("web", "citizen-b", "★", payload='/rate_service{"stars": "1"}'))
    assert engine.sent == ['/rate_service{"stars": "1"}']


async def test_a_button_offered_to_another_citizen_is_not_accepted(
    pipeline: MessagePipeline, engine: RecordingEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await offer(sessions, "citizen-c", RATING_BUTTONS)
    await pipeline.handle(Inbound("web", "citizen-d", "★", payload='/rate_service{"stars": "1"}'))
    assert engine.sent == ["★"]


async def test_an_external_intent_is_refused_even_if_a_button_carried_it(
    pipeline: MessagePipeline, engine: RecordingEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    external = '/EXTERNAL_followup{"followup_case": "20261204-0001"}'
    await offer(sessions, "citizen-e", [{"title": "回访", "payload": external}])
    await pipeline.handle(Inbound("web", "citizen-e", "回访", payload=external))
    assert engine.sent == ["回访"]


async def test_a_payload_the_channel_made_itself_needs_no_offer(
    pipeline: MessagePipeline, engine: RecordingEngine
) -> None:
    await pipeline.handle(Inbound("telegram", "4242", "/start", payload="/greet", payload_from_channel=True))
    assert engine.sent == ["/greet"]


def test_leading_slashes_and_spaces_are_dropped_from_words() -> None:
    assert as_words(" / /report_issue 路灯坏了 ") == "report_issue 路灯坏了"
    assert as_words("路灯/电线") == "路灯/电线"
