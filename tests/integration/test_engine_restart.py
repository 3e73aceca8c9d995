"""The engine keeps conversations in its SQL tracker store: a restart mid-form loses nothing."""

from __future__ import annotations

from tests.integration.test_rest_channel import response_text, texts
from tests.support.stack import Stack


def test_engine_restart_in_the_middle_of_a_report_loses_nothing(stack: Stack, sender: str) -> None:
    assert texts(stack.rest(sender, "小区旁边的工地每天晚上十二点还在施工，吵得睡不着")) == [
        response_text("utter_ask_location")
    ]
    stack.stop_engine()
    stack.start_engine()
    assert texts(stack.rest(sender, "A5区桂花路88号")) == [response_text("utter_ask_contact_phone")]
    readback = stack.rest(sender, "15012345678")[0]["text"]
    assert "工地每天晚上十二点还在施工" in readback and "A5区桂花路88号" in readback
