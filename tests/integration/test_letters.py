"""Real letters as a conversation's first message, through the real app and engine (the letter gate)."""

from __future__ import annotations

import csv
from functools import cache

from tests.support.domain_text import utter
from tests.support.stack import ROOT, Stack

HELDOUT = ROOT / "benchmarks" / "data" / "letters_heldout.csv"
DEAD_ENDS = (utter("utter_default"), utter("utter_clarify_details"))


@cache
def heldout_letter(msg_id: str) -> str:
    """A letter of the benchmark set (none of them taught any model)."""
    with open(HELDOUT, encoding="utf-8", newline="") as handle:
        return next(row["text"] for row in csv.DictReader(handle) if row["msg_id"] == msg_id)


def texts(replies: list[dict]) -> list[str]:
    return [reply.get("text", "") for reply in replies]


def test_a_report_letter_starts_the_report_without_asking_its_place(stack: Stack, sender: str) -> None:
    letter = heldout_letter("245200")  # 「A5区曲塘路渣土车噪音扰民 …」
    assert texts(stack.rest(sender, letter)) == [utter("utter_ask_contact_phone")]
    summary = stack.rest(sender, "13912345678")[0]["text"]
    assert "A5区曲塘路" in summary
    # The read-back quotes the start of a long letter; the case keeps all of it.
    quoted = summary.split("问题描述：", 1)[1].split("\n", 1)[0]
    assert quoted.endswith("…") and len(quoted) == 201 and " ".join(letter.split()).startswith(quoted[:-1])


def test_a_report_letter_the_nlu_alone_could_not_place_starts_the_report(stack: Stack, sender: str) -> None:
    letter = heldout_letter("233300")  # 「A2区钱隆学府小区多户房屋墙面出现贯穿裂缝 本人是A2区钱隆学府6栋…」
    assert texts(stack.rest(sender, letter)) == [utter("utter_ask_contact_phone")]


def test_a_complaint_naming_a_policy_is_a_report_not_a_knowledge_answer(stack: Stack, sender: str) -> None:
    letter = (
        "尊敬的市长：您好！我是A3区某国有企业的职工，今年才52岁，单位以政策调整为由强制我提前退休，"
        "不同意就停发工资，这种做法严重损害了我们的合法权益，请求有关部门调查处理，还我们一个公道。"
    )
    replies = texts(stack.rest(sender, letter))
    assert replies and replies[0] in (utter("utter_ask_location"), utter("utter_ask_contact_phone")), replies


def test_a_policy_question_letter_is_answered_or_filed_as_a_consultation(stack: Stack, sender: str) -> None:
    letter = heldout_letter("139400")  # 「咨询M2县儿童入学年龄要求 请问上级领导义务教育法规定…」
    replies = texts(stack.rest(sender, letter))
    assert not any(dead_end in reply for reply in replies for dead_end in DEAD_ENDS), replies
    # No guide: the letter is filed as a consultation at once, asking only for the phone.
    assert "——依据：《" in replies[0] or replies == [
        utter("utter_kb_consultation_started"),
        utter("utter_ask_contact_phone"),
    ], replies


def test_a_long_description_written_into_the_form_is_the_forms_answer(stack: Stack, sender: str) -> None:
    assert texts(stack.rest(sender, "我要投诉")) == [utter("utter_ask_description")]
    # The form goes on to the place (its district, as the NLU read a street), not a fresh report.
    replies = texts(stack.rest(sender, heldout_letter("245200")))
    assert replies in ([utter("utter_ask_location")], [utter("utter_choose_district")]), replies
