"""The letter gate: letters are steered to a report or a question, short messages are left to the NLU."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bot.letters import LetterGate, LetterKindModel, Steering, is_letter, kind_by_title
from crm_backend.dispatch.classifier import ModelLoadError

REPORT_LETTER = (
    "尊敬的书记：您好！我是A4区秀峰街道的居民，我们小区围墙外面每天晚上都有渣土车日夜运渣土填农田，"
    "噪音很大，灰尘满天，老人孩子晚上都睡不好觉，已经持续两个多月了，多次向街道反映都没有结果，"
    "恳请领导督促有关部门尽快处理。"
)
QUESTION_LETTER = (
    "咨询A市公积金贷款的相关政策\n尊敬的领导：您好！我是在A市工作的外地人，已经连续缴存公积金两年，"
    "现在想在A市买首套房，请问公积金贷款需要满足什么条件，最高可以贷多少，需要准备哪些材料？谢谢！"
)
# A complaint that names a policy is still a complaint.
RETIREMENT_COMPLAINT = (
    "尊敬的市长：您好！我是A3区某国有企业的职工，今年才52岁，单位以政策调整为由强制我提前退休，"
    "不同意就停发工资，这种做法严重损害了我们的合法权益，请求有关部门调查处理，还我们一个公道。"
)


@pytest.fixture(scope="module")
def gate() -> LetterGate:
    return LetterGate(LetterKindModel.train())


@pytest.mark.parametrize("letter", [REPORT_LETTER, RETIREMENT_COMPLAINT])
def test_report_letters_are_steered_to_report_issue(gate: LetterGate, letter: str) -> None:
    steering = gate.steer(letter)
    assert steering is not None
    assert steering.intent == "report_issue"
    assert 0.5 <= steering.confidence <= 1.0


def test_policy_question_letter_is_steered_to_ask_faq(gate: LetterGate) -> None:
    steering = gate.steer(QUESTION_LETTER)
    assert steering is not None and steering.intent == "ask_faq"


@pytest.mark.parametrize(
    "text",
    [
        "你好",
        "在吗",
        "转人工",
        "我要查一下工单进度",
        "办理居住证需要什么材料？",
        "帮我写一篇800字的作文 题目是我的梦想",
        "一个人走进饭店为什么要先付钱 这个脑筋急转弯答案是啥",
        "A1区人民路的路灯坏了，晚上很黑",
        '/ask_faq{"kb_entry": "residence-permit-apply"}',
    ],
)
def test_short_messages_are_not_steered(gate: LetterGate, text: str) -> None:
    assert gate.steer(text) is None


def test_long_progress_query_with_a_case_number_is_left_to_the_nlu(gate: LetterGate) -> None:
    text = (
        "您好，我上个月反映的小区噪音问题，工单号是20261123-0007，"
        "到现在已经过去三个多星期了，一直没有人联系我，请问现在处理到哪一步了？"
    )
    assert is_letter(text)
    assert gate.steer(text) is None


@pytest.mark.parametrize("filler", ["啊" * 2000, "哈哈" * 100, "1234567890" * 10, "测试一下" * 30])
def test_long_filler_is_not_a_letter(gate: LetterGate, filler: str) -> None:
    assert not is_letter(filler)
    assert gate.steer(filler) is None


def test_a_short_formal_letter_is_a_letter() -> None:
    assert is_letter("尊敬的书记：您好！我们小区门口的路灯坏了一个多月了，希望尽快修好。")
    assert not is_letter("您好，我们小区门口的路灯坏了一个多月了")


def test_steering_travels_as_metadata() -> None:
    assert Steering("question", 0.91234).as_metadata() == {"letter": {"intent": "ask_faq", "confidence": 0.9123}}


@pytest.mark.parametrize(
    ("title", "kind"),
    [
        ("咨询A市落户需要准备什么证明材料", "question"),
        ("请问A市公积金贷款额度", "question"),
        ("A5区曲塘路渣土车噪音扰民", "report"),
        ("A3区一米阳光婚纱艺术摄影是否合法纳税了？", None),
    ],
)
def test_training_rows_are_labelled_by_their_titles(title: str, kind: str | None) -> None:
    assert kind_by_title(title) == kind


def test_no_off_topic_or_knowledge_question_of_the_benchmarks_passes_the_gate() -> None:
    root = Path(__file__).resolve().parents[2] / "benchmarks" / "data"
    off_topic = [line.split("\t", 1)[1] for line in (root / "off_topic.txt").read_text(encoding="utf-8").splitlines()]
    with open(root / "kb_heldout.csv", encoding="utf-8", newline="") as handle:
        questions = [row["question"] for row in csv.DictReader(handle)]
    assert len(off_topic) == 390 and len(questions) > 100
    assert [text for text in off_topic + questions if is_letter(text)] == []


def test_a_saved_model_loads_and_answers_as_the_trained_one(gate: LetterGate, tmp_path: Path) -> None:
    trained = gate._model
    letters = [
        "尊敬的领导您好：我想咨询一下，外地户口的孩子在本市上小学需要办理哪些手续？谢谢！",
        "尊敬的书记：您好！我们小区楼下的烧烤店每天营业到凌晨两点，油烟和噪音严重影响居民休息，多次投诉无果。",
    ]

    loaded = LetterKindModel.load(trained.save(tmp_path / "letter_kind.joblib"))

    assert [loaded.question_probability(text) for text in letters] == [
        trained.question_probability(text) for text in letters
    ]


def test_a_missing_model_is_refused_with_the_command_that_builds_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"python -m bot\.letters train"):
        LetterKindModel.load(tmp_path / "letter_kind.joblib")
