"""Handing a conversation to staff, end to end over the web chat's websocket.

The real engine and app: a citizen is handed to staff by asking, by two messages the bot
cannot understand, or by rejecting its answers twice; the bot then stays silent while every
message is stored, staff replies reach the citizen live with the staff member's display
name, hand-back restores the bot, and a restart of the app in the middle loses nothing.
What the bot says on handing off depends on the time (staff on duty or not) and is checked
against the duty rule of `crm_backend.duty`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crm_backend.models import utcnow
from tests.integration.test_webchat import ChatClient, api_messages, open_chat, texts
from tests.support.domain_text import handoff_texts, utter, utter_buttons
from tests.support.naming import suffix
from tests.support.stack import Stack

# Candidates for words the model cannot place. The tests use the first two the engine really
# returns as nlu_fallback: a retrained model may place one of them (a fresh training once read
# "xkcd lorem ipsum" as out_of_scope), and these tests are about the hand-off, not about NLU.
GIBBERISH_CANDIDATES = (
    "龘靐齉",
    "xkcd lorem ipsum",
    "犇猋骉麤",
    "qwzx vbnm plk",
    "▲▼◆◇□",
    "ㄅㄆㄇㄈ",
    "zzqq xxjj",
    "嘦嘂囍",
    "ffff gggg hhhh",
    "◎◎ ☆☆",
    "asdf jkl qwer",
    "@@@ ### $$$",
)
FAQ = "请问公积金怎么提取出来"


# --- helpers --------------------------------------------------------------------------------


async def expect_handoff(chat: ChatClient, text: str, payload: str | None = None) -> None:
    """The citizen's message is answered with the hand-off text, then the hand-off frame."""
    before = utcnow()
    answer = await chat.say(text, payload=payload)
    after = utcnow()
    assert len(answer) == 1 and answer[0]["text"] in handoff_texts(before, after)
    assert answer[0]["sender"]["kind"] == "bot"
    frame = await chat.expect("handoff")
    assert frame["active"] is True and frame["text"] in handoff_texts(before, utcnow())


async def send_unanswered(chat: ChatClient, text: str) -> str:
    """A message sent while staff hold the conversation: acknowledged (so stored), not answered."""
    msg_id = await chat.send_message(text)
    await chat.expect_ack(msg_id)
    return msg_id


def engine_intent(stack: Stack, text: str) -> str:
    return str(stack.parse(text)["intent"]["name"])


def not_understood(stack: Stack, text: str) -> bool:
    """The engine cannot place the text, and its best guess is not off-topic or small talk either
    (those get the off-topic reply, not "please rephrase")."""
    parsed = stack.parse(text)
    guesses = [item["name"] for item in parsed.get("intent_ranking", []) if item["name"] != "nlu_fallback"]
    return (
        parsed["intent"]["name"] == "nlu_fallback" and guesses[:1] != ["out_of_scope"] and guesses[:1] != ["chitchat"]
    )


def waiting(stack: Stack) -> dict[int, dict[str, object]]:
    resp = stack.api("GET", "/conversations")
    assert resp.status_code == 200, resp.text
    return {conversation["id"]: conversation for conversation in resp.json()["conversations"]}


def conversation_of(stack: Stack, marker: str) -> int:
    """The id of the waiting conversation whose log has a citizen message with this text."""
    found = [
        cid
        for cid in waiting(stack)
        if any(m["text"] == marker and m["direction"] == "in" for m in api_messages(stack, cid))
    ]
    assert len(found) == 1, f"expected one waiting conversation with {marker!r}, got {found}"
    return found[0]


def staff_reply(stack: Stack, cid: int, text: str, staff_name: str) -> bool:
    resp = stack.api("POST", f"/conversations/{cid}/replies", json={"text": text, "staff_name": staff_name})
    assert resp.status_code == 201, resp.text
    return bool(resp.json()["delivered_live"])


def marker(label: str) -> str:
    return f"{label} {suffix()}"


# --- the triggers ---------------------------------------------------------------------------


async def test_asking_for_a_person_hands_off_and_says_when_staff_answer(stack: Stack, chat: ChatClient) -> None:
    await expect_handoff(chat, "转人工")
    question = marker("请问怎么办理居住证")
    await send_unanswered(chat, question)
    cid = conversation_of(stack, question)
    assert waiting(stack)[cid]["handoff_status"] == "waiting"


async def test_asking_for_a_person_in_the_middle_of_a_report_hands_off(stack: Stack, chat: ChatClient) -> None:
    problem = marker("小区门口的路灯坏了一个多星期了晚上很黑")
    assert texts(await chat.say(problem)) == [utter("utter_ask_location")]
    await expect_handoff(chat, "转人工")
    cid = conversation_of(stack, problem)
    await send_unanswered(chat, "A3区阳光花园小区东门")
    await chat.assert_silent()

    # Handed back, the bot does not take up the abandoned form again.
    assert stack.api("POST", f"/conversations/{cid}/release").status_code == 200
    assert await chat.expect("handoff") == {"type": "handoff", "active": False}
    assert texts((await chat.expect("reply"))["messages"]) == [utter("utter_handoff_released")]
    assert texts(await chat.say("你好")) == [utter("utter_greet")]


async def test_the_greeting_button_for_a_person_hands_off(stack: Stack, chat: ChatClient) -> None:
    greeting = await chat.say("你好")
    button = next(b for b in greeting[0]["buttons"] if b["payload"] == "/human_handoff")
    await expect_handoff(chat, button["title"], payload=button["payload"])


@pytest.fixture(scope="module")
def gibberish(stack: Stack) -> tuple[str, str]:
    """Two texts the engine cannot place (each comes back as nlu_fallback, no off-topic guess)."""
    falling = [text for text in GIBBERISH_CANDIDATES if not_understood(stack, text)]
    assert len(falling) >= 2, f"fewer than two gibberish candidates fall back: {falling}"
    return falling[0], falling[1]


def test_the_gibberish_really_falls_back(stack: Stack, gibberish: tuple[str, str]) -> None:
    """The fallback tests below rely on these words not being understood."""
    assert [not_understood(stack, text) for text in gibberish] == [True, True]


async def test_two_fallbacks_in_a_row_hand_off(stack: Stack, chat: ChatClient, gibberish: tuple[str, str]) -> None:
    first = await chat.say(gibberish[0])
    assert texts(first) == [utter("utter_default")]
    assert first[0]["buttons"] == utter_buttons("utter_default")
    await expect_handoff(chat, gibberish[1])
    assert conversation_of(stack, gibberish[1]) in waiting(stack)


async def test_a_fallback_after_an_understood_message_only_asks_to_rephrase(
    stack: Stack, chat: ChatClient, gibberish: tuple[str, str]
) -> None:
    assert texts(await chat.say(gibberish[0])) == [utter("utter_default")]
    assert texts(await chat.say("你好")) == [utter("utter_greet")]
    assert texts(await chat.say(gibberish[1])) == [utter("utter_default")]
    await chat.assert_silent(1.0)  # no hand-off frame


async def test_rejecting_the_answer_twice_hands_off(stack: Stack, chat: ChatClient) -> None:
    assert engine_intent(stack, "不对") == "deny"
    assert engine_intent(stack, "还是不对") == "deny"
    answer = texts(await chat.say(FAQ))
    assert "依据：《" in answer[0] and "公积金" in answer[0], answer
    assert answer[-1] in (utter("utter_kb_helpful"), utter("utter_kb_helpful_unclear"))
    assert texts(await chat.say("不对")) == [utter("utter_kb_not_helpful")]
    await expect_handoff(chat, "还是不对")


async def test_no_to_anything_else_is_not_a_rejection(stack: Stack, chat: ChatClient) -> None:
    assert texts(await chat.say("谢谢")) == [utter("utter_you_are_welcome")]
    assert texts(await chat.say("没有了")) == [utter("utter_goodbye")]
    assert texts(await chat.say("不用了")) == [utter("utter_goodbye")]
    await chat.assert_silent(1.0)


# --- while handed off, and back -------------------------------------------------------------


async def test_while_handed_off_the_bot_is_silent_staff_answer_live_and_hand_back(
    stack: Stack, chat: ChatClient, gibberish: tuple[str, str]
) -> None:
    await chat.say(gibberish[0])
    await expect_handoff(chat, gibberish[1])

    # The bot says nothing, even to what it would answer; every message is stored.
    during = [marker("路灯还是不亮"), "你好", "转人工", gibberish[0]]
    for text in during:
        await send_unanswered(chat, text)
    await chat.assert_silent()
    cid = conversation_of(stack, during[0])
    logged = [m["text"] for m in api_messages(stack, cid) if m["direction"] == "in"]
    assert logged[-len(during) :] == during

    # Staff answer; the citizen sees who is answering.
    assert staff_reply(stack, cid, "您好，我是工作人员，请问是哪个小区？", "李敏")
    reply = await chat.expect("reply")
    assert reply["in_reply_to"] is None
    assert reply["messages"] == [
        {"text": "您好，我是工作人员，请问是哪个小区？", "buttons": [], "sender": {"kind": "staff", "name": "李敏"}}
    ]
    await send_unanswered(chat, "阳光花园东门")
    await chat.assert_silent()

    # Back to the bot: it answers again, and one more unclear message is not a hand-off.
    resp = stack.api("POST", f"/conversations/{cid}/release")
    assert resp.status_code == 200, resp.text
    assert await chat.expect("handoff") == {"type": "handoff", "active": False}
    assert texts((await chat.expect("reply"))["messages"]) == [utter("utter_handoff_released")]
    assert cid not in waiting(stack)
    assert texts(await chat.say("你好")) == [utter("utter_greet")]
    assert texts(await chat.say(gibberish[1])) == [utter("utter_default")]
    await chat.assert_silent(1.0)

    kinds = [(m["direction"], m["sender_kind"]) for m in api_messages(stack, cid)]
    assert kinds == [
        ("out", "system"),  # the privacy notice
        ("out", "bot"),  # the greeting
        ("in", "citizen"),
        ("out", "bot"),
        ("in", "citizen"),
        ("out", "bot"),
        *[("in", "citizen")] * len(during),
        ("out", "staff"),
        ("in", "citizen"),
        ("out", "system"),  # the hand-back notice
        ("in", "citizen"),
        ("out", "bot"),
        ("in", "citizen"),
        ("out", "bot"),
    ]


# --- a restart of the app in the middle -----------------------------------------------------


@pytest.fixture
def own_app(stack: Stack) -> Iterator[Stack]:
    """A second app process of its own, on the shared engine and database, free to restart.

    The engine calls its actions on the session's app, which writes the same database, so
    this app sees every hand-off; restarting it leaves the other tests' app alone.
    """
    app = stack.sibling("restarted-app")
    app.start_app()
    try:
        yield app
    finally:
        app.stop_app()


async def test_an_app_restart_during_a_handoff_loses_nothing(own_app: Stack) -> None:
    async with open_chat(own_app) as chat:
        await chat.hello()
        opening = marker("我家楼下的井盖丢了")
        await chat.say(opening)
        await expect_handoff(chat, "转人工")
        during = [marker("有人吗"), "井盖在A3区阳光花园东门", "很危险，请尽快"]
        for text in during:
            await send_unanswered(chat, text)
        session = chat.session
        cid = conversation_of(own_app, opening)

    own_app.stop_app()
    own_app.start_app()

    # Staff answer after the restart, while the citizen's page is closed.
    assert not staff_reply(own_app, cid, "收到，我们马上通知相关部门。", "王芳")
    assert cid in waiting(own_app)

    async with open_chat(own_app) as chat:
        welcome = await chat.hello(session)
        assert welcome["session"] == session
        assert welcome["handoff"] is True
        history = [(item["direction"], item["text"], item["sender"]) for item in welcome["history"]]
        assert [text for direction, text, _ in history if direction == "in"] == [opening, "转人工", *during]
        assert history[-1] == ("out", "收到，我们马上通知相关部门。", {"kind": "staff", "name": "王芳"})

        # Still handed off after the restart: the bot stays silent, staff still reach the page live.
        await send_unanswered(chat, "好的，谢谢")
        await chat.assert_silent()
        assert staff_reply(own_app, cid, "已派人前往处理。", "王芳")
        reply = await chat.expect("reply")
        assert reply["messages"][0]["sender"] == {"kind": "staff", "name": "王芳"}
