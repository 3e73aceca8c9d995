"""The Telegram channel end to end: the real engine and app, a fake Bot API server on loopback.

A second app process (on the session's engine and database) runs with Telegram enabled and
``TELEGRAM_API_BASE_URL`` pointing at `FakeTelegram`, which posts updates to the app's
webhook with the secret header and records what the app sends back.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bot.channels.telegram_format import MAX_MESSAGE_UNITS, utf16_units
from tests.integration.test_dispatch_conversation import case_number_in
from tests.integration.test_followup import file_case
from tests.integration.test_webchat import open_chat
from tests.support.console import ConsoleClient, create_staff
from tests.support.domain_text import privacy_notice, utter, utter_buttons
from tests.support.encrypted import plain
from tests.support.fake_telegram import FakeTelegram, keyboard_buttons
from tests.support.naming import unique_number
from tests.support.stack import Stack

TOKEN = "123456789:TEST-token-of-the-fake-bot-api"
SECRET = "test-telegram-webhook-secret-0123456789"
REGISTERED_WEBHOOK = "https://bot.example.org/webhooks/telegram"


@pytest.fixture(scope="module")
def fake_telegram() -> Iterator[FakeTelegram]:
    with FakeTelegram.running(TOKEN) as fake:
        yield fake


@contextmanager
def telegram_app_beside(stack: Stack, fake: FakeTelegram) -> Iterator[Stack]:
    """An app with Telegram (webhook mode, talking to `fake`) beside `stack`, sharing its engine,
    database and settings; stopped on leaving."""
    app = stack.sibling("telegram-app")
    app.start_app(
        extra_env={
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_WEBHOOK_SECRET": SECRET,
            "TELEGRAM_API_BASE_URL": fake.base_url,
            "TELEGRAM_WEBHOOK_URL": REGISTERED_WEBHOOK,
        }
    )
    try:
        fake.wait_for_call("setWebhook", timeout=20)
        yield app
    finally:
        app.stop_app()


@pytest.fixture(scope="module")
def telegram_app(stack: Stack, fake_telegram: FakeTelegram) -> Iterator[Stack]:
    """An app with Telegram enabled, sharing the session's engine and database (the engine calls
    its actions on the session's app, which writes the same database)."""
    with telegram_app_beside(stack, fake_telegram) as app:
        try:
            yield app
        finally:
            log = app.workdir / "app.log"
            if log.exists():
                print("--- tail of telegram app.log ---")
                print("\n".join(log.read_text(errors="replace").splitlines()[-25:]))


class TelegramCitizen:
    """One citizen's private chat with the bot, driven through the fake Bot API."""

    def __init__(self, fake: FakeTelegram, app: Stack) -> None:
        self.fake = fake
        self.app = app
        self.chat_id = unique_number(10**9)
        self.webhook = f"{app.app_url}/webhooks/telegram"

    def post(self, update: dict[str, Any]) -> None:
        resp = self.fake.post_update(self.webhook, update, SECRET)
        assert resp.status_code == 200, resp.text

    def send(self, **content: Any) -> list[dict[str, Any]]:
        """Send a message (``text=``, ``location=``, ...) and return the bot's answer (every message until quiet)."""
        before = len(self.fake.sent_to(self.chat_id))
        self.post(self.fake.message_update(self.chat_id, **content))
        return self.answer_after(before)

    def say(self, text: str) -> list[dict[str, Any]]:
        return self.send(text=text)

    def press(self, message: dict[str, Any], title: str) -> list[dict[str, Any]]:
        """Press the button with this title on a message the bot sent."""
        button = next(b for b in keyboard_buttons(message) if b["text"] == title)
        before = len(self.fake.sent_to(self.chat_id))
        self.post(self.fake.callback_update(self.chat_id, button, message))
        return self.answer_after(before)

    def answer_after(self, before: int, quiet: float = 0.6) -> list[dict[str, Any]]:
        sent = self.fake.wait_for_messages(self.chat_id, before + 1)
        while True:  # the replies to one message leave together; wait until no more arrive
            time.sleep(quiet)
            now = self.fake.sent_to(self.chat_id)
            if len(now) == len(sent):
                return now[before:]
            sent = now


@pytest.fixture
def citizen(fake_telegram: FakeTelegram, telegram_app: Stack) -> TelegramCitizen:
    return TelegramCitizen(fake_telegram, telegram_app)


def db(stack: Stack) -> sqlite3.Connection:
    assert stack.database_url and stack.database_url.startswith("sqlite:///")
    return sqlite3.connect(stack.database_url.removeprefix("sqlite:///"))


def conversation_of(stack: Stack, chat_id: int) -> int:
    with db(stack) as conn:
        row = conn.execute(
            "SELECT conversation.id FROM conversation JOIN channel_identity ON channel_identity.id = identity_id"
            " WHERE channel_identity.channel = 'telegram' AND external_id = ? ORDER BY conversation.id DESC",
            (str(chat_id),),
        ).fetchone()
    assert row, f"no conversation for chat {chat_id}"
    return int(row[0])


def logged_in(stack: Stack, chat_id: int) -> list[tuple[str, str | None]]:
    """The citizen's messages of the chat's conversation: (text, attachment JSON)."""
    with db(stack) as conn:
        rows = conn.execute(
            "SELECT text, attachment FROM message WHERE conversation_id = ? AND direction = 'in' ORDER BY id",
            (conversation_of(stack, chat_id),),
        ).fetchall()
    # Encrypted at rest; the attachment back to the JSON text it was stored as.
    return [(plain(text, "message.text") or "", plain(attachment, "message.attachment")) for text, attachment in rows]


def texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["text"] for m in messages]


def answer_form_until_readback(citizen: TelegramCitizen, replies: list[dict[str, Any]], **answers: Any) -> dict:  # type: ignore[type-arg]
    """Answer whatever the report form asks (location and phone from ``answers``) until it reads the report back."""
    for _ in range(6):
        last = replies[-1]
        titles = [b["text"] for b in keyboard_buttons(last)]
        if "确认提交" in titles:
            return last
        if "仍然提交" in titles:  # beside an open case: the full read-back follows
            replies = citizen.press(last, "仍然提交")
        elif last["text"] == utter("utter_ask_location"):
            replies = citizen.send(**answers["location"])
        elif last["text"] == utter("utter_ask_contact_phone"):
            replies = citizen.say(answers["phone"])
        elif last["text"] == utter("utter_choose_district"):
            replies = citizen.press(last, titles[0])
        else:
            raise AssertionError(f"unexpected question: {last}")
    raise AssertionError("the form never read the report back")


# --- the webhook ------------------------------------------------------------------------------


def test_the_app_registers_its_webhook_with_the_secret(fake_telegram: FakeTelegram, telegram_app: Stack) -> None:
    assert fake_telegram.calls_of("getMe")
    call = fake_telegram.wait_for_call("setWebhook")
    assert call.params["url"] == REGISTERED_WEBHOOK
    assert call.params["secret_token"] == SECRET
    assert call.params["allowed_updates"] == ["message", "callback_query"]


@pytest.mark.parametrize("secret", [None, "", "wrong-secret-of-someone-else", SECRET + "x"])
def test_a_webhook_call_without_the_right_secret_is_refused(
    fake_telegram: FakeTelegram, citizen: TelegramCitizen, secret: str | None
) -> None:
    update = fake_telegram.message_update(citizen.chat_id, text="你好")
    resp = fake_telegram.post_update(citizen.webhook, update, secret)
    assert resp.status_code == 403
    assert resp.json()["error"] == "forbidden"
    # Not even a garbage body is read when the secret is wrong.
    garbage = citizen.app.app_url + "/webhooks/telegram"
    assert fake_telegram.post_update(garbage, {"no": "update"}, "nope-nope-nope-nope").status_code == 403
    time.sleep(1)
    assert fake_telegram.sent_to(citizen.chat_id) == []


def test_a_malformed_update_with_the_right_secret_is_a_400(citizen: TelegramCitizen) -> None:
    resp = citizen.fake.post_update(citizen.webhook, {"update_id": "not a number", "message": 5}, SECRET)
    assert resp.status_code == 400


# --- conversations --------------------------------------------------------------------------


def test_start_greets_with_inline_buttons_and_a_pressed_button_is_answered_and_understood(
    citizen: TelegramCitizen,
) -> None:
    notice, greeting = citizen.say("/start")
    assert notice["text"] == privacy_notice() and "reply_markup" not in notice  # what is kept, first
    assert greeting["text"] == utter("utter_greet")
    buttons = keyboard_buttons(greeting)
    assert [(b["text"], b["callback_data"]) for b in buttons] == [
        (b["title"], b["payload"]) for b in utter_buttons("utter_greet")
    ]
    replies = citizen.press(greeting, "反映问题")
    assert texts(replies) == [utter("utter_ask_description")]
    answered = citizen.fake.wait_for_call("answerCallbackQuery")
    assert answered.params["callback_query_id"]
    # The press is logged under the button's title; the engine got its payload.
    assert [text for text, _ in logged_in(citizen.app, citizen.chat_id)] == ["/start", "反映问题"]


def test_a_whole_report_on_telegram_files_a_case(citizen: TelegramCitizen, stack: Stack) -> None:
    replies = citizen.say("K8县丁字街的路灯坏了一个星期了，晚上黑漆漆的很危险")
    readback = answer_form_until_readback(citizen, replies, location={"text": "K8县丁字街中段"}, phone="13812345678")
    [created] = citizen.press(readback, "确认提交")
    number = case_number_in(created["text"])
    case = stack.api("GET", f"/cases/{number}").json()
    assert "路灯" in case["description"] and "K8县" in case["location"]
    with db(stack) as conn:
        channel = conn.execute(
            "SELECT channel_identity.channel, external_id FROM service_case"
            " JOIN channel_identity ON channel_identity.id = service_case.identity_id WHERE case_number = ?",
            (number,),
        ).fetchone()
    assert channel == ("telegram", str(citizen.chat_id))


def test_a_shared_location_fills_the_report_location(citizen: TelegramCitizen) -> None:
    replies = citizen.say("我家楼下的井盖丢了，很危险")
    location = {"location": {"latitude": 31.2304, "longitude": 121.4737}}
    readback = answer_form_until_readback(citizen, replies, location=location, phone="13912345678")
    summary = citizen.fake.sent_to(citizen.chat_id)
    assert any("发生地点：" in m["text"] and "北纬31.2304，东经121.4737" in m["text"] for m in summary), texts(summary)
    assert "确认提交" in [b["text"] for b in keyboard_buttons(readback)]
    stored = [(text, attachment) for text, attachment in logged_in(citizen.app, citizen.chat_id) if attachment]
    assert stored == [
        ("位置：北纬31.2304，东经121.4737", '{"kind": "location", "latitude": 31.2304, "longitude": 121.4737}')
    ]
    assert texts(citizen.press(readback, "取消")) == [utter("utter_report_cancelled")]


def test_a_sticker_gets_the_polite_unsupported_reply_and_a_photo_is_kept(citizen: TelegramCitizen) -> None:
    sticker = {"file_id": "CAACAgIAAxkB-sticker", "file_unique_id": "AgAD1", "type": "regular",
               "width": 512, "height": 512, "is_animated": False, "is_video": False}  # fmt: skip
    assert texts(citizen.send(sticker=sticker)) == [utter("utter_unsupported_content")]
    voice = {"file_id": "AwACAgIAAxkB-voice", "file_unique_id": "AgAD2", "duration": 3}
    assert texts(citizen.send(voice=voice)) == [utter("utter_unsupported_content")]
    photo = [
        {"file_id": "small-photo", "file_unique_id": "p1", "width": 90, "height": 90},
        {"file_id": "large-photo", "file_unique_id": "p2", "width": 1280, "height": 960},
    ]
    assert texts(citizen.send(photo=photo)) == [utter("utter_attachment_received")]
    logged = logged_in(citizen.app, citizen.chat_id)
    assert [text for text, _ in logged] == ["[贴纸]", "[语音]", "[图片]"]
    assert '"file_id": "large-photo"' in str(logged[2][1])


def test_help_and_cancel_commands(citizen: TelegramCitizen) -> None:
    assert texts(citizen.say("/help")) == [utter("utter_telegram_help")]
    assert texts(citizen.say("/cancel")) == [utter("utter_nothing_to_cancel")]


# --- delivery -------------------------------------------------------------------------------


def test_a_429_is_waited_out_and_the_message_then_arrives(citizen: TelegramCitizen) -> None:
    fake = citizen.fake
    fake.throttle("sendMessage", times=1, retry_after=2)
    [reply] = citizen.say("/help")
    assert reply["text"] == utter("utter_telegram_help")
    [refused] = fake.calls_of("sendMessage", answered=429, chat_id=citizen.chat_id)
    [delivered] = fake.calls_of("sendMessage", chat_id=citizen.chat_id)
    assert delivered.at - refused.at >= 2.0


def test_staff_replies_and_the_hand_back_reach_telegram_and_a_long_reply_is_split(citizen: TelegramCitizen) -> None:
    citizen.say("我要转人工")
    cid = conversation_of(citizen.app, citizen.chat_id)
    before = len(citizen.fake.sent_to(citizen.chat_id))
    resp = citizen.app.api(
        "POST", f"/conversations/{cid}/replies", json={"text": "您好，请问哪里的路灯？", "staff_name": "王芳"}
    )
    assert resp.status_code == 201 and resp.json()["delivered_live"] is True
    assert texts(citizen.answer_after(before)) == ["王芳：您好，请问哪里的路灯？"]

    # 4,000 characters with emoji: more than Telegram's 4,096 UTF-16 units, so it goes in two.
    sentence = "您反映的问题已转交相关部门处理👍，请耐心等待。"
    long_text = (sentence * 200)[:4000]
    before = len(citizen.fake.sent_to(citizen.chat_id))
    resp = citizen.app.api("POST", f"/conversations/{cid}/replies", json={"text": long_text, "staff_name": "王芳"})
    assert resp.status_code == 201
    pieces = texts(citizen.answer_after(before))
    assert len(pieces) == 2 and "".join(pieces) == "王芳：" + long_text
    assert all(utf16_units(piece) <= MAX_MESSAGE_UNITS for piece in pieces)
    assert pieces[0].endswith("。")

    before = len(citizen.fake.sent_to(citizen.chat_id))
    assert citizen.app.api("POST", f"/conversations/{cid}/release").status_code == 200
    assert texts(citizen.answer_after(before)) == [utter("utter_handoff_released")]


def test_an_undeliverable_message_waits_in_the_outbox_and_goes_when_telegram_recovers(
    citizen: TelegramCitizen,
) -> None:
    fake = citizen.fake
    fake.go_down("sendMessage")
    try:
        citizen.post(fake.message_update(citizen.chat_id, text="/help"))
        deadline = time.monotonic() + 20
        kept: list[tuple[str, int]] = []
        while time.monotonic() < deadline and not kept:
            with db(citizen.app) as conn:
                kept = conn.execute(
                    "SELECT status, attempts FROM telegram_outbox WHERE chat_id = ?", (str(citizen.chat_id),)
                ).fetchall()
            time.sleep(0.2)
        assert kept and kept[0][0] == "pending", kept
        assert len(fake.calls_of("sendMessage", answered=500, chat_id=citizen.chat_id)) >= 3
        assert fake.sent_to(citizen.chat_id) == []
    finally:
        fake.come_back("sendMessage")
    [delivered] = fake.wait_for_messages(citizen.chat_id, 1, timeout=30)
    assert delivered["text"] == utter("utter_telegram_help")
    deadline = time.monotonic() + 10  # the row is marked sent just after Telegram answered
    while True:
        with db(citizen.app) as conn:
            [(status,)] = conn.execute(
                "SELECT status FROM telegram_outbox WHERE chat_id = ?", (str(citizen.chat_id),)
            ).fetchall()
        if status == "sent" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == "sent"


def test_each_chat_gets_its_replies_in_order(citizen: TelegramCitizen) -> None:
    fake = citizen.fake
    before = len(fake.sent_to(citizen.chat_id))
    for text in ("/help", "/cancel", "/help"):
        citizen.post(fake.message_update(citizen.chat_id, text=text))
    sent = fake.wait_for_messages(citizen.chat_id, before + 3)
    assert texts(sent[before:]) == [
        utter("utter_telegram_help"),
        utter("utter_nothing_to_cancel"),
        utter("utter_telegram_help"),
    ]


def test_replies_are_sent_as_plain_text_to_the_chat(citizen: TelegramCitizen) -> None:
    """No parse mode is set: what the bot says is sent as written (nothing is read as markup)."""
    citizen.say("/help")
    [call] = citizen.fake.calls_of("sendMessage", chat_id=citizen.chat_id)
    assert "parse_mode" not in call.params
    assert re.fullmatch(r"-?\d+", str(call.params["chat_id"]))


# --- polling mode ---------------------------------------------------------------------------


def test_polling_mode_asks_telegram_for_updates_and_answers_them(stack: Stack, fake_telegram: FakeTelegram) -> None:
    """A developer without a public URL: the app polls getUpdates instead of receiving the webhook."""
    app = stack.sibling("telegram-polling-app")
    app.start_app(
        extra_env={
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_MODE": "polling",
            "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
        }
    )
    try:
        fake_telegram.wait_for_call("deleteWebhook", timeout=20)
        chat_id = unique_number(10**9)
        fake_telegram.queue_for_polling(fake_telegram.message_update(chat_id, text="/start"))
        notice, greeting = fake_telegram.wait_for_messages(chat_id, 2)
        assert (notice["text"], greeting["text"]) == (privacy_notice(), utter("utter_greet"))
        # Polling mode has no webhook route to attack.
        update = fake_telegram.message_update(chat_id, text="你好")
        assert fake_telegram.post_update(f"{app.app_url}/webhooks/telegram", update, SECRET).status_code in (404, 405)
    finally:
        app.stop_app()


async def _web_case_and_link_code(stack: Stack) -> tuple[str, str]:
    """A citizen files a case on the web chat and asks there for a link code."""
    async with open_chat(stack) as chat:
        await chat.hello()
        number = await file_case(chat, "河边步道的护栏断了一截，晚上散步很危险", "A7县滨河步道")
        [issued] = await chat.say("绑定账号")
    code = re.search(r"\d{6}", issued["text"])
    assert code, issued
    return number, code.group(0)


def test_linking_web_and_telegram_lists_the_web_case_and_its_notices_reach_telegram(
    citizen: TelegramCitizen, stack: Stack, telegram_app: Stack
) -> None:
    number, code = asyncio.run(_web_case_and_link_code(stack))
    assert texts(citizen.say("我的工单")) == [utter("utter_my_cases_none")]
    assert texts(citizen.say(f"/link {code}")) == [utter("utter_link_done")]
    [listed] = citizen.say("我的工单")
    assert number in listed["text"] and "已转交负责部门" in listed["text"]

    # The case came from the web chat: staff's change is told there, not on Telegram.
    console = ConsoleClient(telegram_app)
    assert console.login(create_staff(telegram_app, "supervisor")).status_code == 200
    before = len(citizen.fake.sent_to(citizen.chat_id))
    response = console.post(f"/cases/{number}/action", {"action": "accept"})
    assert "工单已变为「已签收」" in response.text
    time.sleep(1.5)
    assert len(citizen.fake.sent_to(citizen.chat_id)) == before


def test_a_telegram_case_is_told_its_progress_and_rated_on_telegram(
    citizen: TelegramCitizen, stack: Stack, telegram_app: Stack
) -> None:
    replies = citizen.say("桥洞下面的路面塌陷了一个大坑，车辆经过很危险")
    readback = answer_form_until_readback(citizen, replies, location={"text": "A9市人民路桥洞"}, phone="13512345678")
    done = citizen.press(readback, "确认提交")
    number = re.search(r"\d{8}-\d{4,6}", done[-1]["text"])
    assert number, done
    console = ConsoleClient(telegram_app)
    assert console.login(create_staff(telegram_app, "supervisor")).status_code == 200
    for action, status in (("accept", "负责部门已接单"), ("start", "负责部门正在办理")):
        before = len(citizen.fake.sent_to(citizen.chat_id))
        console.post(f"/cases/{number.group(0)}/action", {"action": action})
        [notice] = citizen.answer_after(before)
        assert notice["text"].startswith(f"您的工单 {number.group(0)} 有新进展：{status}")
    before = len(citizen.fake.sent_to(citizen.chat_id))
    console.post(f"/cases/{number.group(0)}/action", {"action": "resolve", "note": "已修复路面"})
    told = citizen.answer_after(before, quiet=1.5)
    assert "已办结" in told[0]["text"] and "办理结果：已修复路面" in told[0]["text"]
    question = told[-1]
    assert question["text"] == utter("utter_ask_rating", followup_case=number.group(0))
    assert texts(citizen.press(question, "5分 非常满意")) == [utter("utter_rating_thanks", rating="5")]
    assert stack.api("GET", f"/cases/{number.group(0)}").json()["status"] == "reviewed"
