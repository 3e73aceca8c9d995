"""「我的个人信息」 in the chat against the real engine: what is held, a copy, an erasure confirmed first."""

from __future__ import annotations

import sqlite3

from tests.integration.test_rest_channel import file_report, texts
from tests.support.domain_text import utter, utter_buttons
from tests.support.stack import Stack


def requests_of(stack: Stack, sender: str) -> list[tuple[str, str]]:
    """The privacy requests filed for the citizen behind a REST sender: (kind, status)."""
    with sqlite3.connect(f"file:{stack.workdir / 'crm.db'}?mode=ro", uri=True, timeout=15) as db:
        return db.execute(
            "SELECT r.kind, r.status FROM privacy_request r JOIN channel_identity i ON i.citizen_id = r.citizen_id "
            "WHERE i.channel = 'rest' AND i.external_id = ? ORDER BY r.id",
            (sender,),
        ).fetchall()


def test_a_citizen_sees_what_is_held_masked_and_asks_for_erasure_once(stack: Stack, sender: str) -> None:
    case_number = file_report(stack, sender, phone="13912345678")
    [held] = stack.rest(sender, "你们到底保存了我哪些个人信息？")
    assert held["text"].startswith("我们目前保存的您的个人信息")
    assert "139****5678" in held["text"] and "13912345678" not in held["text"]
    assert case_number in held["text"] and "对话记录保存180天" in held["text"]
    assert held["buttons"] == utter_buttons("utter_my_data")

    # Erasure is explained and confirmed before it is filed.
    assert texts(stack.rest(sender, "/erase_my_data")) == [utter("utter_confirm_erasure")]
    assert texts(stack.rest(sender, "/affirm")) == [utter("utter_erasure_requested")]
    assert requests_of(stack, sender) == [("erasure", "pending")]
    # Asked again in other words: the same request, still being handled.
    assert texts(stack.rest(sender, "请把我的资料全都删除掉")) == [utter("utter_confirm_erasure")]
    assert texts(stack.rest(sender, "确认")) == [utter("utter_erasure_already_requested")]
    assert requests_of(stack, sender) == [("erasure", "pending")]


def test_a_citizen_who_thinks_again_keeps_their_data_and_can_ask_for_a_copy(stack: Stack, sender: str) -> None:
    file_report(stack, sender, phone="13812340000")
    assert texts(stack.rest(sender, "删除我在你们这里的所有数据")) == [utter("utter_confirm_erasure")]
    assert texts(stack.rest(sender, "不用了")) == [utter("utter_erasure_cancelled")]
    assert requests_of(stack, sender) == []
    assert texts(stack.rest(sender, "我想导出一份我的个人资料")) == [utter("utter_copy_requested")]
    assert requests_of(stack, sender) == [("copy", "pending")]
