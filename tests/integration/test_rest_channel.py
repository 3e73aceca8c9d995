"""Chinese conversations through the REST channel against the real engine and the real app."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
import requests

from tests.support.domain_text import utter
from tests.support.encrypted import plain
from tests.support.moves import send_to_department_via_api
from tests.support.stack import Stack


def response_text(name: str) -> str:
    return utter(name)


def texts(replies: list[dict]) -> list[str]:
    return [reply.get("text", "") for reply in replies]


def file_report(stack: Stack, sender: str, phone: str = "13912345678") -> str:
    """Report a problem end to end; returns the case number the bot gave."""
    assert texts(stack.rest(sender, "路边的井盖丢了好几天了，晚上走路很危险")) == [response_text("utter_ask_location")]
    assert texts(stack.rest(sender, "A3区五一大道和芙蓉路交叉口")) == [response_text("utter_ask_contact_phone")]
    summary, preview = stack.rest(sender, phone)
    assert "井盖丢了" in summary["text"] and phone in summary["text"]
    # Several tests file this report in one engine session: later ones meet the earlier case as
    # a duplicate (buttons 仍然提交 / 不用了), and 仍然提交 leads to the full read-back first.
    if [b["payload"] for b in preview["buttons"]] == ["/affirm", "/deny"]:
        _summary, preview = stack.rest(sender, "/affirm")
    assert [b["payload"] for b in preview["buttons"]] == [
        "/affirm",
        "/correct_category",
        "/correct_case_type",
        "/correct_location",
        "/deny",
    ]
    created = stack.rest(sender, "/affirm")[0]["text"]
    match = re.search(r"\d{8}-\d{4,6}", created)
    assert match, created
    return match.group(0)


def test_rasa_sdk_actions_run_for_the_36_engine_and_file_a_case(stack: Stack, sender: str) -> None:
    case_number = file_report(stack, sender)
    case = stack.api("GET", f"/cases/{case_number}").json()
    assert case["description"] == "路边的井盖丢了好几天了，晚上走路很危险"
    assert case["location"] == "A3区五一大道和芙蓉路交叉口"
    assert case["contact_phone"] == "139****5678"
    routed = not case["routing"][0]["queued"]
    assert case["status"] == ("dispatched" if routed else "received")
    assert [event["to"] for event in case["events"]] == (["received", "dispatched"] if routed else ["received"])


def test_a_place_in_the_opening_message_is_not_asked_again(stack: Stack, sender: str) -> None:
    replies = stack.rest(sender, "A3区五一大道那个井盖丢了好几天了，晚上很危险")
    assert texts(replies) == [response_text("utter_ask_contact_phone")]
    summary = stack.rest(sender, "13912345678")[0]["text"]
    assert "A3区五一大道" in summary


def test_wrong_phone_is_asked_again_with_the_reason(stack: Stack, sender: str) -> None:
    stack.rest(sender, "我要反映一个问题")
    stack.rest(sender, "楼下烧烤店天天营业到凌晨三点，油烟和噪音太大了")
    stack.rest(sender, "K8县丁字街12号")
    assert texts(stack.rest(sender, "1381234567"))[0] == response_text("utter_phone_length")
    assert texts(stack.rest(sender, "12812345678"))[0] == response_text("utter_phone_prefix")
    assert "13812345678" in stack.rest(sender, "138 1234 5678")[0]["text"]


def test_filler_only_opening_asks_for_the_description(stack: Stack, sender: str) -> None:
    assert texts(stack.rest(sender, "我要投诉")) == [response_text("utter_ask_description")]


def test_cancel_during_the_form_files_nothing(stack: Stack, sender: str) -> None:
    before = stack.api("GET", "/stats").json()["cases"]
    stack.rest(sender, "我们村的路被挖断了半个月没人修")
    assert texts(stack.rest(sender, "算了不报了")) == [response_text("utter_report_cancelled")]
    assert stack.api("GET", "/stats").json()["cases"] == before


def test_owner_sees_progress_without_digits(stack: Stack, sender: str) -> None:
    case_number = file_report(stack, sender)
    code = stack.api("GET", f"/cases/{case_number}").json()["status"]
    status = response_text(f"utter_status_{code}")  # the status in the citizen's words
    reply = stack.rest(sender, f"帮我查一下工单{case_number}")
    assert status in reply[0]["text"] and case_number in reply[0]["text"]


def test_stranger_needs_the_phone_digits_and_wrong_digits_get_the_neutral_answer(stack: Stack, sender: str) -> None:
    case_number = file_report(stack, sender, phone="13700001234")
    stranger, other = f"{sender}-x", f"{sender}-y"
    assert texts(stack.rest(stranger, f"查询工单进度 {case_number}")) == [response_text("utter_ask_phone_last4")]
    assert texts(stack.rest(stranger, "9999")) == [response_text("utter_case_lookup_failed")]
    stack.rest(stranger, f"查询工单进度 {case_number}")
    assert case_number in stack.rest(stranger, "1234")[0]["text"]
    # An unknown case number gets exactly the same treatment as wrong digits.
    assert texts(stack.rest(other, "查询工单进度 20200101-9999")) == [response_text("utter_ask_phone_last4")]
    assert texts(stack.rest(other, "1234")) == [response_text("utter_case_lookup_failed")]


def test_repeated_failures_are_throttled(stack: Stack, sender: str) -> None:
    for _ in range(5):
        stack.rest(sender, "我的工单20200101-0001到哪了")
        stack.rest(sender, "0000")
    stack.rest(sender, "我的工单20200101-0001到哪了")
    assert texts(stack.rest(sender, "0000")) == [response_text("utter_lookup_throttled")]


def test_progress_shows_where_the_case_went_in_the_citizens_words(stack: Stack, sender: str) -> None:
    case_number = file_report(stack, sender)
    moved = send_to_department_via_api(stack, case_number, "A3-commerce", "已转区商务局")
    assert moved.status_code == 200, moved.text
    reply = stack.rest(sender, f"{case_number}处理得怎么样了")[0]["text"]
    assert "已转交负责部门" in reply and "A3区商务局" in reply
    assert "已派单" not in reply and "已转区商务局" not in reply  # staff's label and the dispatcher's note


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("", "utter_empty_message"),
        ("   \n\t ", "utter_empty_message"),
        ("x" * 20000, "utter_message_truncated"),
    ],
)
def test_empty_and_huge_messages_get_a_clear_reply_and_are_logged(
    stack: Stack, sender: str, message: str, expected: str
) -> None:
    replies = stack.rest(sender, message)
    assert replies[0]["text"] == response_text(expected)
    with sqlite3.connect(stack.workdir / "crm.db") as db:
        row = db.execute(
            "SELECT m.text, m.original_length, m.truncated FROM message m "
            "JOIN conversation c ON c.id = m.conversation_id JOIN channel_identity i ON i.id = c.identity_id "
            "WHERE i.channel = 'rest' AND i.external_id = ? AND m.direction = 'in'",
            (sender,),
        ).fetchone()
    assert row[1] == len(message)
    assert bool(row[2]) == (len(message) > 10000)
    assert len(plain(row[0], "message.text") or "") == min(len(message), 10000)


def post_with_id(stack: Stack, sender: str, message: str, message_id: object) -> requests.Response:
    """A message with the integrator's own id, as one posts it again when no answer came."""
    return requests.post(
        f"{stack.app_url}/webhooks/rest/webhook",
        json={"sender": sender, "message": message, "message_id": message_id},
        headers={"Authorization": f"Bearer {stack.secrets['REST_CHANNEL_TOKEN']}"},
        timeout=30,
    )


def logged_ids(stack: Stack, sender: str) -> list[str | None]:
    """The client ids of a REST sender's logged messages, in order."""
    with sqlite3.connect(stack.workdir / "crm.db") as db:
        rows = db.execute(
            "SELECT m.client_msg_id FROM message m "
            "JOIN conversation c ON c.id = m.conversation_id JOIN channel_identity i ON i.id = c.identity_id "
            "WHERE i.channel = 'rest' AND i.external_id = ? AND m.direction = 'in' ORDER BY m.id",
            (sender,),
        ).fetchall()
    return [row[0] for row in rows]


def test_a_message_posted_again_with_its_id_is_logged_once_and_given_the_same_answer(stack: Stack, sender: str) -> None:
    first = post_with_id(stack, sender, "你好", "msg-0001")
    again = post_with_id(stack, sender, "你好", "msg-0001")
    assert first.status_code == again.status_code == 200
    assert texts(first.json()) == [response_text("utter_greet")]
    assert again.json() == first.json()
    assert logged_ids(stack, sender) == ["msg-0001"]


@pytest.mark.parametrize("message_id", ["has spaces", "x" * 65, 12, ""])
def test_a_malformed_message_id_is_refused(stack: Stack, sender: str, message_id: object) -> None:
    refused = post_with_id(stack, sender, "你好", message_id)
    assert (refused.status_code, refused.json()["error"]) == (422, "invalid_input")
    assert logged_ids(stack, sender) == []


# Text that only some databases refuse (PostgreSQL rejects NUL): test_postgres.py runs these
# bad-input tests again on PostgreSQL.
CONTROL_CHARACTER_MESSAGES = ["路灯\x00坏了好几天了", "\x07\x1b[31m你好", "谢谢\ud83d\x00", "\ufeff你好\x7f\x85"]


def test_a_message_of_nul_and_zero_width_space_gets_the_empty_message_reply(stack: Stack) -> None:
    resp = post_raw(stack, json.dumps({"sender": "bad6", "message": "\u0000\u200b"}).encode())
    assert resp.status_code == 200, resp.text
    assert texts(resp.json()) == [response_text("utter_empty_message")]


@pytest.mark.parametrize(
    "message", CONTROL_CHARACTER_MESSAGES, ids=["nul", "bell-escape", "surrogate-nul", "bom-del-c1"]
)
def test_control_characters_in_a_message_are_dropped_and_it_is_answered(
    stack: Stack, sender: str, message: str
) -> None:
    replies = stack.rest(sender, message)
    assert replies and replies[0]["text"] and replies[0]["text"] != response_text("utter_system_busy")


def test_a_staff_reply_with_control_characters_is_stored_without_them(stack: Stack, sender: str) -> None:
    stack.rest(sender, "转人工")
    question = f"请问居住证怎么办 {sender}"
    assert stack.rest(sender, question) == []  # staff hold the conversation now
    waiting = stack.api("GET", "/conversations").json()["conversations"]
    [cid] = [
        c["id"]
        for c in waiting
        if any(m["text"] == question for m in stack.api("GET", f"/conversations/{c['id']}/messages").json()["messages"])
    ]
    resp = stack.api(
        "POST", f"/conversations/{cid}/replies", json={"text": "您好\u0000，我是小王", "staff_name": "小王\x07"}
    )
    assert resp.status_code == 201, resp.text
    last = stack.api("GET", f"/conversations/{cid}/messages").json()["messages"][-1]
    assert (last["text"], last["sender_name"]) == ("您好，我是小王", "小王")
    assert stack.api("POST", f"/conversations/{cid}/release").status_code == 200


@pytest.mark.parametrize("message", ["😀😀😀", "<script>alert('x')</script>", "👍", "ｈｅｌｌｏ　你好"])
def test_odd_text_gets_an_ordinary_reply(stack: Stack, sender: str, message: str) -> None:
    replies = stack.rest(sender, message)
    assert replies and replies[0]["recipient_id"] == sender and replies[0]["text"]


def post_raw(stack: Stack, body: bytes, token: str | None = None) -> requests.Response:
    token = token if token is not None else stack.secrets["REST_CHANNEL_TOKEN"]
    return requests.post(
        f"{stack.app_url}/webhooks/rest/webhook",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=10,
    )


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "bad_request"),
        (b"\xff\xfe\x00binary", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'{"message": "hi"}', 422, "invalid_input"),
        (b'{"sender": 42, "message": "hi"}', 422, "invalid_input"),
        (b'{"sender": "has space", "message": "hi"}', 422, "invalid_input"),
        (b'{"sender": "abc", "message": 42}', 422, "invalid_input"),
        (b'{"sender": "abc", "message": ["a"]}', 422, "invalid_input"),
        (b'{"sender": "' + b"a" * 101 + b'", "message": "hi"}', 422, "invalid_input"),
    ],
)
def test_malformed_requests_get_a_json_4xx(stack: Stack, body: bytes, status: int, error: str) -> None:
    resp = post_raw(stack, body)
    assert resp.status_code == status
    assert resp.json()["error"] == error


@pytest.mark.parametrize("token", ["", "wrong-token-wrong-token"])
def test_rest_channel_refuses_a_caller_without_the_token(stack: Stack, token: str) -> None:
    resp = post_raw(stack, b'{"sender": "abc", "message": "hi"}', token=token)
    assert resp.status_code == 401
    assert resp.json()["error"] == "unauthorized"


def test_the_engine_channel_refuses_callers_without_the_engine_token(stack: Stack) -> None:
    resp = requests.post(
        f"{stack.engine_url}/webhooks/app/webhook", json={"sender": "intruder", "message": "你好"}, timeout=10
    )
    assert resp.status_code == 401


def test_the_action_endpoint_refuses_callers_without_the_action_token(stack: Stack) -> None:
    resp = requests.post(f"{stack.app_url}/webhook", json={"next_action": "action_handoff"}, timeout=10)
    assert resp.status_code == 401


def test_health_reports_everything_up(stack: Stack) -> None:
    resp = requests.get(f"{stack.app_url}/healthz", timeout=10)
    assert resp.status_code == 200
    assert resp.json()["checks"] == {"app": "ok", "database": "ok", "engine": "ok", "shared_state": "ok"}
