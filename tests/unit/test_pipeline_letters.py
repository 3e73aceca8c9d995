"""The letter gate in the message path: a letter reaches the engine with its steering, a short message without."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.engine import EngineClient, EngineUnavailable
from bot.letters import LetterGate, LetterKindModel
from bot.pipeline import Inbound, MessagePipeline
from bot.responses import Responses
from crm_backend.services.intake import APP_MESSAGE_ID

LETTER = (
    "尊敬的书记：您好！我是A4区秀峰街道的居民，我们小区围墙外面每天晚上都有渣土车日夜运渣土填农田，"
    "噪音很大，灰尘满天，老人孩子晚上都睡不好觉，已经持续两个多月了，恳请领导督促有关部门尽快处理。"
)


class RecordingEngine:
    """Stands in for the engine client: records the text and metadata it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.ids: list[Any] = []  # the app's message id each message carried
        self.form: str | None = None
        self.down = False

    async def active_form(self, sender_id: str) -> str | None:
        return self.form

    async def send(self, sender_id: str, text: str, *, channel: str, metadata: Any = None) -> list[dict[str, Any]]:
        if self.down:
            raise EngineUnavailable("connection refused")
        self.ids.append((metadata or {}).get(APP_MESSAGE_ID))
        steering = {key: value for key, value in (metadata or {}).items() if key != APP_MESSAGE_ID}
        self.sent.append((text, steering or None))  # the letter gate's part of the metadata
        return [{"text": "ok"}]


@pytest.fixture(scope="module")
def gate() -> LetterGate:
    return LetterGate(LetterKindModel.train())


@pytest.fixture
def engine() -> RecordingEngine:
    return RecordingEngine()


@pytest.fixture
def pipeline(sessions: async_sessionmaker[AsyncSession], engine: RecordingEngine, gate: LetterGate) -> MessagePipeline:
    responses = Responses(
        {
            "utter_empty_message": "empty",
            "utter_message_truncated": "cut",
            "utter_system_busy": "busy",
            "utter_replay_intro": "earlier: {text}",
        }
    )
    fake: Any = engine
    client: EngineClient = fake
    return MessagePipeline(sessions, client, responses, max_message_chars=2000, max_logged_chars=10000, letters=gate)


async def test_a_letter_reaches_the_engine_with_its_text_and_its_steering(
    pipeline: MessagePipeline, engine: RecordingEngine
) -> None:
    await pipeline.handle(Inbound("web", "citizen-letter", LETTER))
    [(text, metadata)] = engine.sent
    assert text == LETTER
    assert metadata["letter"]["intent"] == "report_issue"


@pytest.mark.parametrize("text", ["你好", "在吗", "转人工", "我要查工单进度", "居住证怎么办理"])
async def test_a_short_message_reaches_the_engine_unsteered(
    pipeline: MessagePipeline, engine: RecordingEngine, text: str
) -> None:
    await pipeline.handle(Inbound("web", "citizen-short", text))
    assert engine.sent == [(text, None)]


async def test_a_letter_written_into_an_open_form_is_left_to_the_form(
    pipeline: MessagePipeline, engine: RecordingEngine
) -> None:
    engine.form = "report_form"  # e.g. the form asked for the description and the citizen wrote a long one
    await pipeline.handle(Inbound("web", "citizen-in-form", LETTER))
    assert engine.sent == [(LETTER, None)]


async def test_a_letter_the_engine_missed_is_replayed_with_its_steering(
    pipeline: MessagePipeline, engine: RecordingEngine
) -> None:
    engine.down = True
    await pipeline.handle(Inbound("web", "citizen-replayed", LETTER))
    engine.down = False
    await pipeline.handle(Inbound("web", "citizen-replayed", "你好"))
    assert [(text, (metadata or {}).get("letter", {}).get("intent")) for text, metadata in engine.sent] == [
        (LETTER, "report_issue"),
        ("你好", None),
    ]
