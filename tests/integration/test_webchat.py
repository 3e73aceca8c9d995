"""The web chat's websocket, end to end: the real app and engine, spoken to as the widget does.

Every test talks JSON frames to ``/ws`` (see ``bot/static/chat.js`` for the protocol) and
checks the replies against the texts in ``domain.yml``, and what was stored through the
CRM API (or, for what the API does not show, the app's SQLite file).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import requests

from app.settings import Settings
from bot.channels.webchat import external_id_for
from crm_backend.models import utcnow
from tests.support.domain_text import day_text, expected_preview, handoff_texts, privacy_notice, utter, utter_buttons
from tests.support.encrypted import plain
from tests.support.naming import suffix, unique
from tests.support.stack import Stack

REPLY_TIMEOUT = 20.0  # the machine may be shared and slow
SILENCE_SECONDS = 2.0
CASE_NUMBER = re.compile(r"\d{8}-\d{4,6}")

PROBLEM = "小区门口的路灯坏了一个多星期了晚上很黑"
LOCATION = "A3区阳光花园小区东门"
PHONE = "13812345678"
SHORT_PHONE = "1381234567"


# --- domain texts ---------------------------------------------------------------------------


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [message["text"] for message in messages]


def expected_created(case: dict[str, Any]) -> str:
    """The bot's answer to the confirmation, from the routing the API records."""
    [decision] = case["routing"]
    if decision["queued"]:
        return utter("utter_case_created_queued", case_number=case["case_number"])
    due = "今天" if decision["urgent"] else day_text(case["due_at"])
    return utter("utter_case_created_routed", case_number=case["case_number"], department=case["department"], due=due)


# --- the client -----------------------------------------------------------------------------


class ChatClient:
    """One browser tab's websocket, with the widget's protocol as methods."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.session: str | None = None

    # raw frames
    async def send(self, frame: Any) -> None:
        await self.ws.send_str(json.dumps(frame, ensure_ascii=False))

    async def frame(self, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The next frame from the server; fails the test if none comes or the socket closes."""
        try:
            msg = await self.ws.receive(timeout=timeout)
        except TimeoutError:
            pytest.fail(f"no frame from the server within {timeout}s")
        if msg.type != aiohttp.WSMsgType.TEXT:
            pytest.fail(f"expected a text frame, got {msg.type!r} ({msg.data!r}, close code {self.ws.close_code})")
        data = json.loads(msg.data)
        assert isinstance(data, dict), data
        return data

    async def expect(self, frame_type: str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """The next frame, which must be of this type."""
        data = await self.frame(timeout)
        assert data.get("type") == frame_type, f"expected a {frame_type!r} frame, got {data}"
        return data

    async def assert_silent(self, seconds: float = SILENCE_SECONDS) -> None:
        """Nothing arrives for a while."""
        try:
            msg = await self.ws.receive(timeout=seconds)
        except TimeoutError:
            return
        pytest.fail(f"expected silence, got {msg.type!r}: {msg.data!r}")

    # the protocol
    async def hello(self, session: Any = None) -> dict[str, Any]:
        await self.send({"type": "hello", "session": session})
        welcome = await self.expect("welcome")
        self.session = welcome["session"]
        return welcome

    async def send_message(self, text: Any, payload: str | None = None, msg_id: str | None = None) -> str:
        msg_id = msg_id or unique("msg")
        frame: dict[str, Any] = {"type": "message", "id": msg_id, "text": text}
        if payload is not None:
            frame["payload"] = payload
        await self.send(frame)
        return msg_id

    async def expect_ack(self, msg_id: str) -> None:
        ack = await self.expect("ack")
        assert ack["id"] == msg_id, ack

    async def say(self, text: str, payload: str | None = None, msg_id: str | None = None) -> list[dict[str, Any]]:
        """Send a message, wait for its ack and then its reply; the reply's messages."""
        msg_id = await self.send_message(text, payload, msg_id)
        await self.expect_ack(msg_id)
        reply = await self.expect("reply")
        assert reply["in_reply_to"] == msg_id, reply
        assert reply["messages"], reply
        return reply["messages"]

    async def click(self, button: dict[str, str]) -> list[dict[str, Any]]:
        """What the widget sends for a button: its title as text, its payload as payload."""
        return await self.say(button["title"], payload=button["payload"])


def ws_url(stack: Stack) -> str:
    return stack.app_url.replace("http", "ws", 1) + "/ws"


@asynccontextmanager
async def open_chat(stack: Stack, **connect_kwargs: Any) -> AsyncIterator[ChatClient]:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(stack), **connect_kwargs) as ws:
        yield ChatClient(ws)


# --- looking at what was stored -------------------------------------------------------------


def _db(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{stack.workdir / 'crm.db'}?mode=ro", uri=True, timeout=15)


def logged_row(stack: Stack, client_msg_id: str) -> dict[str, Any]:
    """The stored citizen message with this client id (the API does not show client ids)."""
    with _db(stack) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM message WHERE client_msg_id = ?", (client_msg_id,)).fetchall()
    assert len(rows) == 1, f"{len(rows)} messages logged with id {client_msg_id}"
    row = dict(rows[0])  # the personal columns are encrypted at rest
    return {**row, **{name: plain(row[name], f"message.{name}") for name in ("text", "engine_input", "attachment")}}


def api_messages(stack: Stack, conversation_id: int) -> list[dict[str, Any]]:
    resp = stack.api("GET", f"/conversations/{conversation_id}/messages")
    assert resp.status_code == 200, resp.text
    return resp.json()["messages"]


def waiting_conversation_with(stack: Stack, marker: str) -> int:
    """The id of the conversation waiting for staff whose log contains a message with this text."""
    resp = stack.api("GET", "/conversations")
    assert resp.status_code == 200, resp.text
    waiting = resp.json()["conversations"]
    found = [c["id"] for c in waiting if any(m["text"] == marker for m in api_messages(stack, c["id"]))]
    assert len(found) == 1, f"expected one waiting conversation containing {marker!r}, got {found} of {waiting}"
    return found[0]


async def file_report(chat: ChatClient, problem: str = PROBLEM, location: str = LOCATION) -> str:
    """A citizen reports a problem (the broken street light unless told); the case number.

    Tests sharing the session's database report different problems, so that none is taken
    for a repeat of another test's open case.
    """
    await chat.say(problem)
    await chat.say(location)
    readback = await chat.say(PHONE)
    confirm = next(b for b in readback[-1]["buttons"] if b["payload"] == "/affirm")
    done = await chat.click(confirm)
    if not CASE_NUMBER.search(done[-1]["text"]):  # 仍然提交 beside an earlier test's case: read back again
        done = await chat.click(next(b for b in done[-1]["buttons"] if b["payload"] == "/affirm"))
    match = CASE_NUMBER.search(done[-1]["text"])
    assert match, done
    return match.group(0)


# --- tests ----------------------------------------------------------------------------------


def greeted(welcome: dict[str, Any]) -> bool:
    """Whether a new conversation's history is the privacy notice, then the greeting with its buttons."""
    return [(m["direction"], m["text"], m["buttons"], m["sender"]["kind"]) for m in welcome["history"]] == [
        ("out", privacy_notice(), [], "system"),
        ("out", utter("utter_welcome"), utter_buttons("utter_welcome"), "bot"),
    ]


async def test_hello_without_session_gets_new_session_and_greeting(stack: Stack) -> None:
    async with open_chat(stack) as chat:
        welcome = await chat.hello(None)
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", welcome["session"]), welcome
        assert greeted(welcome)
        assert welcome["handoff"] is False

        messages = await chat.say("你好")
        assert len(messages) == 1
        assert messages[0]["text"] == utter("utter_greet")
        assert messages[0]["buttons"] == utter_buttons("utter_greet")
        assert len(messages[0]["buttons"]) == 4
        assert messages[0]["sender"] == {"kind": "bot", "name": None}

    # A second citizen gets a session of their own, and a malformed token is replaced, not trusted.
    async with open_chat(stack) as other:
        welcome = await other.hello("not-a-valid-token")
        assert welcome["session"] != chat.session
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", welcome["session"])
        assert greeted(welcome)


async def test_the_greeting_is_said_once_and_its_buttons_work(stack: Stack) -> None:
    async with open_chat(stack) as chat:
        first = await chat.hello(None)
    async with open_chat(stack) as again:
        assert (await again.hello(chat.session))["history"] == first["history"]  # not greeted twice
        report = next(b for b in first["history"][-1]["buttons"] if b["title"] == "反映问题")
        assert texts(await again.click(report)) == [utter("utter_ask_description")]


async def test_a_presence_check_gets_a_short_answer(stack: Stack, chat: ChatClient) -> None:
    assert texts(await chat.say("在吗")) == [utter("utter_presence")]
    assert texts(await chat.say("你好，在不在呀")) == [utter("utter_presence")]
    assert texts(await chat.say("你好")) == [utter("utter_greet")]


async def test_report_conversation_files_a_case(stack: Stack, chat: ChatClient) -> None:
    asked = await chat.say(PROBLEM)
    assert texts(asked) == [utter("utter_ask_location")]

    asked = await chat.say(LOCATION)
    assert texts(asked) == [utter("utter_ask_contact_phone")]

    refused = await chat.say(SHORT_PHONE)
    assert texts(refused) == [utter("utter_phone_length"), utter("utter_ask_contact_phone")]

    summary, preview = await chat.say(PHONE)
    text = summary["text"]
    assert f"问题描述：{PROBLEM}" in text
    assert f"发生地点：{LOCATION}" in text
    assert f"联系电话：{PHONE}" in text
    assert text == utter("utter_report_summary", description=PROBLEM, location=LOCATION, contact_phone=PHONE)
    assert summary["buttons"] == []
    assert preview["buttons"] == [
        {"title": "确认提交", "payload": "/affirm"},
        {"title": "更正类别", "payload": "/correct_category"},
        {"title": "更正类型", "payload": "/correct_case_type"},
        {"title": "更正地点", "payload": "/correct_location"},
        {"title": "取消", "payload": "/deny"},
    ]
    assert preview["text"].endswith("确认提交吗？"), preview

    done = await chat.say("确认提交", payload="/affirm")
    assert len(done) == 1
    match = re.search(r"工单号：(\d{8}-\d{4,6})", done[0]["text"])
    assert match, done
    number = match.group(1)

    resp = stack.api("GET", f"/cases/{number}")
    assert resp.status_code == 200, resp.text
    case = resp.json()
    assert preview["text"] == expected_preview(case)
    assert done[0]["text"] == expected_created(case)
    assert case["case_number"] == number
    assert case["description"] == PROBLEM
    assert case["location"] == LOCATION
    assert case["district"] == "A3区"
    assert case["contact_phone"] == "138****5678"
    assert case["duplicate_of"] is None
    routed = not case["routing"][0]["queued"]
    assert (case["status"], case["status_label"]) == (("dispatched", "已派单") if routed else ("received", "已受理"))
    assert [event["to"] for event in case["events"]] == (["received", "dispatched"] if routed else ["received"])
    if routed:
        assert case["department"] and case["due_at"]


def dialogue_state(stack: Stack, session: str) -> tuple[str, str | None]:
    """The intent the engine read in the citizen's latest message, and the form it is in, if any."""
    sender = f"web:{external_id_for(session)}"
    resp = requests.get(
        f"{stack.engine_url}/conversations/{sender}/tracker", headers=stack.engine_api_headers(), timeout=10
    )
    assert resp.status_code == 200, resp.text
    tracker = resp.json()
    latest = [event for event in tracker["events"] if event["event"] == "user"][-1]
    return latest["parse_data"]["intent"]["name"], (tracker.get("active_loop") or {}).get("name")


async def test_an_intent_the_bot_did_not_offer_is_read_as_words(stack: Stack, chat: ChatClient) -> None:
    number = await file_report(chat)
    assert chat.session is not None
    forged = [f'/EXTERNAL_followup{{"followup_case": "{number}"}}', '/rate_service{"stars": "1"}']
    for payload in forged:
        for sent in ({"text": payload, "payload": payload}, {"text": payload}):  # a forged button, typed text
            await chat.say(**sent)
            intent, form = dialogue_state(stack, chat.session)
            assert intent not in ("EXTERNAL_followup", "rate_service"), (sent, intent)
            assert form != "followup_form", sent
            # Read as words, a forged intent may not be understood; two such in a row would
            # rightly hand the conversation to staff, which is not what this test is about.
            await chat.say("你好")
    case = stack.api("GET", f"/cases/{number}").json()
    assert case["status"] in ("received", "dispatched"), case["status"]
    assert [event["to"] for event in case["events"]] in (["received"], ["received", "dispatched"])


async def test_progress_query_offers_own_case_without_phone_digits(stack: Stack, chat: ChatClient) -> None:
    number = await file_report(chat)

    offered = await chat.say("我的工单到哪了")
    assert texts(offered) == [utter("utter_ask_case_number_choices")]
    buttons = offered[0]["buttons"]
    assert [b["title"] for b in buttons] == [number]
    assert number in buttons[0]["payload"]

    code = stack.api("GET", f"/cases/{number}").json()["status"]
    status = utter(f"utter_status_{code}")  # the status in the citizen's words
    answer = await chat.click(buttons[0])
    assert len(answer) == 1, answer
    assert utter("utter_ask_phone_last4") not in texts(answer)
    assert f"工单 {number} 当前状态：{status}。" in answer[0]["text"]

    # Someone else asking about the same number must prove they know the phone.
    async with open_chat(stack) as stranger:
        await stranger.hello()
        asked = await stranger.say("我的工单到哪了")
        assert texts(asked) == [utter("utter_ask_case_number")]
        assert asked[0]["buttons"] == []
        asked = await stranger.say(number)
        assert texts(asked) == [utter("utter_ask_phone_last4")]
        answer = await stranger.say(PHONE[-4:])
        assert f"工单 {number} 当前状态：{status}。" in answer[0]["text"]


async def test_reconnect_with_session_restores_history(stack: Stack, chat: ChatClient) -> None:
    first = unique("msg")
    second = unique("msg")
    greeting = await chat.say("你好", msg_id=first)
    thanks = await chat.say("谢谢", msg_id=second)
    assert texts(thanks) == [utter("utter_you_are_welcome")]
    await chat.ws.close()

    async with open_chat(stack) as again:
        welcome = await again.hello(chat.session)
    assert welcome["session"] == chat.session
    assert welcome["handoff"] is False
    history = [
        (item["direction"], item["id"], item["text"], item["buttons"], item["sender"]["kind"])
        for item in welcome["history"]
    ]
    assert history == [
        ("out", None, privacy_notice(), [], "system"),
        ("out", None, utter("utter_welcome"), utter_buttons("utter_welcome"), "bot"),
        ("in", first, "你好", [], "citizen"),
        ("out", None, greeting[0]["text"], utter_buttons("utter_greet"), "bot"),
        ("in", second, "谢谢", [], "citizen"),
        ("out", None, utter("utter_you_are_welcome"), [], "bot"),
    ]
    assert all(item["at"] for item in welcome["history"])


async def test_a_resent_message_gets_its_first_answer_again_and_is_logged_once(stack: Stack, chat: ChatClient) -> None:
    msg_id = unique("msg")
    answer = await chat.say("你好", msg_id=msg_id)

    # Sent again (no answer reached the page: the socket closed, a push was lost): the server
    # already has it and answers with what it answered then, without asking the engine again.
    await chat.send_message("你好", msg_id=msg_id)
    await chat.expect_ack(msg_id)
    again_reply = await chat.expect("reply")
    assert again_reply["in_reply_to"] == msg_id
    assert texts(again_reply["messages"]) == texts(answer)
    await chat.assert_silent()

    async with open_chat(stack) as again:
        welcome = await again.hello(chat.session)
        assert [item["id"] for item in welcome["history"] if item["direction"] == "in"] == [msg_id]
        assert len(welcome["history"]) == 4  # notice, greeting, the message, its answer: nothing logged twice

        # The same id from a reconnected socket is recognised too.
        await again.send_message("你好", msg_id=msg_id)
        await again.expect_ack(msg_id)
        assert texts((await again.expect("reply"))["messages"]) == texts(answer)
    logged_row(stack, msg_id)  # exactly one row


async def test_bad_input_never_kills_the_connection(stack: Stack) -> None:
    async with open_chat(stack) as chat:
        await chat.ws.send_str("{not json")
        error = await chat.expect("error")
        assert error["code"] == "bad_json"

        await chat.ws.send_str("[1, 2, 3]")
        assert (await chat.expect("error"))["code"] == "bad_frame"

        await chat.send({"type": "message", "id": "early", "text": "你好"})
        assert (await chat.expect("error"))["code"] == "hello_required"

        await chat.ws.send_bytes(b"\x00\x01")
        assert (await chat.expect("error"))["code"] == "hello_required"

        await chat.hello()

        await chat.send({"type": "bogus"})
        assert (await chat.expect("error"))["code"] == "unknown_type"

        await chat.send({"type": "message", "id": "has spaces!", "text": "你好"})
        assert (await chat.expect("error"))["code"] == "bad_id"

        await chat.send({"type": "message", "id": "numeric-text", "text": 12345})
        error = await chat.expect("error")
        assert (error["code"], error["id"]) == ("bad_text", "numeric-text")

        await chat.send({"type": "message", "id": "bad-payload", "text": "x", "payload": "affirm"})
        error = await chat.expect("error")
        assert (error["code"], error["id"]) == ("bad_payload", "bad-payload")

        await chat.ws.send_bytes(b"\x89PNG\r\n\x1a\n")
        reply = await chat.expect("reply")
        assert texts(reply["messages"]) == [utter("utter_unsupported_content")]
        assert reply["messages"][0]["sender"]["kind"] == "system"

        assert texts(await chat.say("")) == [utter("utter_empty_message")]
        assert texts(await chat.say("  \n\t　 ")) == [utter("utter_empty_message")]

        huge = "啊" * 10000 + "哦" * 10000  # filler; two halves to see which is kept
        assert len(huge) == 20000
        huge_id = unique("msg")
        answer = await chat.say(huge, msg_id=huge_id)
        assert answer[0]["text"] == utter("utter_message_truncated")
        assert len(answer) >= 2, "the engine should still answer the first 2000 characters"

        # Understood in between, so two unclear messages in a row cannot hand the chat to staff.
        assert texts(await chat.say("你好")) == [utter("utter_greet")]

        script = "<script>alert(1)</script>"
        script_id = unique("msg")
        answer = await chat.say(script, msg_id=script_id)
        assert answer[0]["sender"]["kind"] == "bot"
        assert answer[0]["text"] not in (utter("utter_system_busy"), utter("utter_empty_message"))

        # Whatever the filler started (a model may read 2,000 characters as a report), end it.
        await chat.say("取消")
        greeting = await chat.say("你好")
        assert texts(greeting) == [utter("utter_greet")]
        assert not chat.ws.closed

    # What was logged: the huge message cut to the logging limit, with its real length kept.
    row = logged_row(stack, huge_id)
    max_logged = next(f.default for f in dataclasses.fields(Settings) if f.name == "max_logged_chars")
    assert row["original_length"] == 20000
    assert row["truncated"] == 1
    assert row["text"] == huge[:max_logged]
    logged = api_messages(stack, row["conversation_id"])
    as_api = next(m for m in logged if m["direction"] == "in" and m["truncated"])
    assert as_api["text"] == huge[:max_logged]
    # The markup is stored as the citizen typed it, not escaped or stripped.
    assert logged_row(stack, script_id)["text"] == script
    assert any(m["text"] == script for m in logged)


async def test_foreign_origin_is_refused(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url(stack), origin="http://evil.example")
        assert refused.value.status == 403

    async with open_chat(stack, origin=stack.app_url) as chat:
        welcome = await chat.hello()
        assert greeted(welcome)
        assert texts(await chat.say("你好")) == [utter("utter_greet")]


async def test_handoff_to_staff_and_back(stack: Stack, chat: ChatClient) -> None:
    before = utcnow()
    answer = await chat.say("转人工")
    assert len(answer) == 1 and answer[0]["text"] in handoff_texts(before, utcnow())
    frame = await chat.expect("handoff")
    assert frame["active"] is True
    # The page's banner: the same sentence as the bot's, and whether staff are on duty.
    assert frame["text"] in handoff_texts(before, utcnow())
    assert frame["on_duty"] is (frame["text"] == utter("utter_handoff_on_duty"))

    marker = f"有人吗？{suffix()}"
    msg_id = await chat.send_message(marker)
    await chat.expect_ack(msg_id)
    await chat.assert_silent()

    cid = waiting_conversation_with(stack, marker)

    async with open_chat(stack) as second_tab:
        welcome = await second_tab.hello(chat.session)
        assert welcome["handoff"] is True
        assert welcome["handoff_state"]["text"] in handoff_texts(before, utcnow())
        assert welcome["history"][-1]["text"] == marker

        resp = stack.api(
            "POST", f"/conversations/{cid}/replies", json={"text": "您好，我是工作人员小王", "staff_name": "小王"}
        )
        assert resp.status_code == 201, resp.text
        assert resp.json() == {"delivered_live": True}
        for tab in (chat, second_tab):
            reply = await tab.expect("reply")
            assert reply["in_reply_to"] is None
            assert reply["messages"] == [
                {"text": "您好，我是工作人员小王", "buttons": [], "sender": {"kind": "staff", "name": "小王"}}
            ]

    resp = stack.api("POST", f"/conversations/{cid}/release")
    assert resp.status_code == 200, resp.text
    assert await chat.expect("handoff") == {"type": "handoff", "active": False}
    assert texts((await chat.expect("reply"))["messages"]) == [utter("utter_handoff_released")]

    assert texts(await chat.say("你好")) == [utter("utter_greet")]
    waiting = [c["id"] for c in stack.api("GET", "/conversations").json()["conversations"]]
    assert cid not in waiting
    kinds = [(m["direction"], m["sender_kind"]) for m in api_messages(stack, cid)]
    assert kinds == [
        ("out", "system"),  # the privacy notice
        ("out", "bot"),  # the greeting
        ("in", "citizen"),
        ("out", "bot"),
        ("in", "citizen"),
        ("out", "staff"),
        ("out", "system"),  # the hand-back notice
        ("in", "citizen"),
        ("out", "bot"),
    ]


async def test_control_characters_in_a_frame_are_dropped_and_answered(chat: ChatClient) -> None:
    await chat.ws.send_str('{"type": "message", "id": "nul-only", "text": "\\u0000\\u200b"}')
    assert (await chat.expect("ack"))["id"] == "nul-only"
    assert texts((await chat.expect("reply"))["messages"]) == [utter("utter_empty_message")]
    await chat.ws.send_str('{"type": "message", "id": "nul-inside", "text": "谢谢\\u0000\\u0007"}')
    assert (await chat.expect("ack"))["id"] == "nul-inside"
    assert texts((await chat.expect("reply"))["messages"]) == [utter("utter_you_are_welcome")]


async def test_lone_surrogate_in_text_is_stored_replaced_and_answered(chat: ChatClient) -> None:
    await chat.ws.send_str('{"type": "message", "id": "lone-surrogate", "text": "谢谢\\ud83d"}')
    first = await chat.frame()
    assert (first["type"], first["id"]) == ("ack", "lone-surrogate"), first
    reply = await chat.expect("reply")
    assert texts(reply["messages"]) == [utter("utter_you_are_welcome")]
    assert texts(await chat.say("你好")) == [utter("utter_greet")]
