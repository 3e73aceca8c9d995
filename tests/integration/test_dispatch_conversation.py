"""A real citizen message, filed through the chat, is categorised, located and routed."""

from __future__ import annotations

import re
from datetime import datetime

from crm_backend.dispatch.deadlines import CHINA_TZ, due_at
from tests.integration.test_rest_channel import response_text
from tests.support.stack import Stack

# From ../shared/data/citizen_messages_train.csv (label 城乡建设).
REAL_MESSAGE = (
    "A2区山水嘉园1栋三单元群租房扰民 A市A2区黄谷路368号山水嘉园1栋三单元706房被改建成6户，分别出租给不同人员，"
    "存在严重的消防、治安等隐患，投诉给物业公司，未见处理，给居民的生活带来很大负面影响，恳请相关部门处理此类现象，"
    "给居民一个良好的生活环境。"
)


def case_number_in(text: str) -> str:
    match = re.search(r"\d{8}-\d{4,6}", text)
    assert match, text
    return match.group(0)


def answer_until_readback(stack: Stack, sender: str, first: str, location: str, phone: str) -> list[dict]:
    """Answer whatever the report form asks until it reads the report back."""
    replies = stack.rest(sender, first)
    for _ in range(6):
        last = replies[-1]
        if any(b.get("payload") == "/affirm" for b in last.get("buttons", [])):
            return replies
        if last["text"] == response_text("utter_ask_location"):
            replies = stack.rest(sender, location)
        elif last["text"] == response_text("utter_ask_contact_phone"):
            replies = stack.rest(sender, phone)
        elif last["text"] == response_text("utter_choose_district"):
            replies = stack.rest(sender, last["buttons"][0]["payload"])
        else:
            raise AssertionError(f"unexpected question: {last}")
    raise AssertionError("the form never read the report back")


def test_a_real_message_is_routed_to_the_district_department_with_a_working_day_deadline(
    stack: Stack, sender: str
) -> None:
    replies = answer_until_readback(stack, sender, REAL_MESSAGE, "A2区黄谷路368号山水嘉园", "13812345678")
    preview = replies[-1]["text"]
    assert "「城乡建设」" in preview and "「A2区住建局」" in preview and "月" in preview
    assert [b["title"] for b in replies[-1]["buttons"]] == ["确认提交", "更正类别", "更正类型", "更正地点", "取消"]

    created = stack.rest(sender, "/affirm")[0]["text"]
    assert "A2区住建局" in created
    case = stack.api("GET", f"/cases/{case_number_in(created)}").json()
    assert (case["category"], case["department"], case["district"], case["status"]) == (
        "城乡建设",
        "A2区住建局",
        "A2区",
        "dispatched",
    )
    filed = datetime.fromisoformat(case["created_at"])
    assert datetime.fromisoformat(case["due_at"]) == due_at(filed, 10)
    assert [event["to"] for event in case["events"]] == ["received", "dispatched"]
    [decision] = case["routing"]
    assert decision["rule"] == "rule: 城乡建设 × A2区" and not decision["queued"]
    assert decision["model_version"].startswith("category-")
    assert abs(sum(decision["probabilities"].values()) - 1) < 1e-6
    assert decision["probabilities"]["城乡建设"] == max(decision["probabilities"].values())
    assert datetime.fromisoformat(decision["due_at"]).astimezone(CHINA_TZ).hour == 18


def test_the_citizen_can_correct_the_category_with_buttons(stack: Stack, sender: str) -> None:
    answer_until_readback(stack, sender, "K8县丁字街的商户把货摆到马路中间，车都过不去", "K8县丁字街", "13912345678")
    choices = stack.rest(sender, "/correct_category")
    assert choices[-1]["text"] == response_text("utter_choose_category")
    assert len(choices[-1]["buttons"]) == 7
    transport = next(b for b in choices[-1]["buttons"] if b["title"] == "交通运输")
    preview = stack.rest(sender, transport["payload"])[-1]["text"]
    assert "「交通运输」" in preview and "「A市交通运输局」" in preview
    created = stack.rest(sender, "/affirm")[0]["text"]
    case = stack.api("GET", f"/cases/{case_number_in(created)}").json()
    assert case["category"] == "交通运输"
    assert "chosen by citizen" in case["routing"][0]["rule"]


def file_beside_an_open_case(stack: Stack, sender: str, place: str) -> tuple[str, str]:
    """One citizen files a report; a neighbour reports the same and files anyway after the warning.

    「仍然提交」 is not the confirmation: the full read-back (category, department, deadline) comes
    first and nothing is filed until the neighbour confirms it. Returns (open case, new case).
    """
    answer_until_readback(stack, sender, f"{place}门口的下水道堵了，污水流得满地都是，臭得不行", place, "13712345678")
    original = case_number_in(stack.rest(sender, "/affirm")[0]["text"])

    again = f"{sender}-neighbour"
    replies = answer_until_readback(
        stack, again, f"{place}门口下水道堵了，污水流得满地都是，太臭了", place, "13612345678"
    )
    assert original in replies[-1]["text"]
    assert [b["title"] for b in replies[-1]["buttons"]] == ["仍然提交", "不用了"]

    summary, preview = stack.rest(again, "/affirm")  # 仍然提交
    assert summary["text"].startswith("请核对您反映的内容")
    assert preview["text"].endswith("确认提交吗？") and original not in preview["text"]
    assert [b["title"] for b in preview["buttons"]] == ["确认提交", "更正类别", "更正类型", "更正地点", "取消"]
    assert stack.api("GET", f"/cases/{original}").json()["status"] in ("received", "dispatched")

    created = stack.rest(again, "/affirm")[0]["text"]  # 确认提交
    return original, case_number_in(created)


def test_a_repeated_report_points_to_the_open_case_and_can_still_be_filed(stack: Stack, sender: str) -> None:
    original, number = file_beside_an_open_case(stack, sender, "A5区桂花路菜市场")
    linked = stack.api("GET", f"/cases/{number}").json()
    assert linked["duplicate_of"] == original
