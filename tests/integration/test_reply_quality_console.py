"""答复质量 through the real app: a staff reply and a 办结 result written in the console are
scored as they are recorded, and the case page shows each score beside its text."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.integration.test_console import file_case_for, signed_in, visible_text
from tests.support.console import create_staff
from tests.support.stack import Stack

MESSAGE = "A1区解放路路灯坏了一个多月，晚上漆黑一片，老人小孩出行很危险。请问什么时候能修好？"
REPLY = (
    "您好！经核实，A1区解放路共有3盏路灯因地下线路老化损坏。根据《城市照明管理规定》第十条，路灯由区城管局负责维护。"
    "我局已安排维修班组更换解放路路灯线路，如仍有路灯不亮，请拨打A1区城管局路灯所电话0731-88888888。"
)
RESULT = "解放路路灯线路已更换，路灯已恢复照明。"
SCORE = re.compile(r"答复质量 (\d{1,3}) 相关 (\d{1,3}) · 完整 (\d{1,3}) · 可解释 (\d{1,3}) · 及时 (\d{1,3})")


@pytest.fixture(scope="module")
def housing_agent(stack: Stack) -> str:
    return create_staff(stack, "agent", "A-housing", "住建李")


async def test_a_console_reply_and_resolve_are_scored_and_shown_on_the_case_page(
    stack: Stack, housing_agent: str
) -> None:
    number, _ = await file_case_for(stack, "A-housing", MESSAGE)
    client = await asyncio.to_thread(signed_in, stack, housing_agent)
    replied = await asyncio.to_thread(client.post, f"/cases/{number}/reply", {"text": REPLY})
    assert replied.status_code == 200, replied.text[:300]
    for action in ("accept", "start", "resolve"):
        moved = await asyncio.to_thread(client.post, f"/cases/{number}/action", {"action": action, "note": RESULT})
        assert moved.status_code == 200, (action, moved.text[:300])
    page = visible_text((await asyncio.to_thread(client.get, f"/cases/{number}")).text)
    scores = [tuple(int(part) for part in found) for found in SCORE.findall(page)]
    assert len(scores) == 2, page[:2000]  # the reply and the 办结 result; no other event is scored
    reply_score, result_score = scores
    assert reply_score[0] > result_score[0]  # the reply cites its basis and gives a phone; the result does neither
    assert "引用《城市照明管理规定》" in page and "留了联系方式" in page
