"""Phone numbers, case numbers and phone digits as citizens type them into the chat."""

from __future__ import annotations

import pytest

from crm_backend.errors import InvalidInput
from crm_backend.validation import (
    clean_text,
    mask_numbers,
    mask_phone,
    mask_phones,
    normalise_mobile,
    parse_case_number,
    parse_phone_last4,
)


def rejection_reason(text: str) -> str:
    """The `InvalidInput.reason` normalise_mobile gives for `text` (fails the test if it accepts it)."""
    with pytest.raises(InvalidInput) as caught:
        normalise_mobile(text)
    return caught.value.reason


@pytest.mark.parametrize(
    ("typed", "number"),
    [
        ("13812345678", "13812345678"),
        ("138 1234 5678", "13812345678"),
        ("138-1234-5678", "13812345678"),
        ("(138)1234-5678", "13812345678"),
        ("+86 138 1234 5678", "13812345678"),
        ("+8613812345678", "13812345678"),
        ("86 13812345678", "13812345678"),
        ("8613812345678", "13812345678"),
        ("１３８１２３４５６７８", "13812345678"),
        ("８６１３８１２３４５６７８", "13812345678"),
        ("＋86 138 1234 5678", "13812345678"),
        ("我的电话是19912345678，谢谢", "19912345678"),
        ("  15000000000  ", "15000000000"),
    ],
)
def test_mobile_numbers_are_normalised_to_eleven_digits(typed: str, number: str) -> None:
    assert normalise_mobile(typed) == number


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("", "phone_missing"),
        ("不知道", "phone_missing"),
        ("--", "phone_missing"),
        ("1381234567", "phone_length"),
        ("138 1234 567", "phone_length"),
        ("+86 1381234567", "phone_length"),
        ("0086 13812345678", "phone_length"),
        ("12345678901", "phone_prefix"),
        ("10012345678", "phone_prefix"),
        ("23812345678", "phone_prefix"),
        ("86 12345678901", "phone_prefix"),
    ],
)
def test_invalid_numbers_are_refused_with_the_rule_they_broke(typed: str, reason: str) -> None:
    assert rejection_reason(typed) == reason


@pytest.mark.parametrize("typed", ["138123456789", "1381234567890", "138 1234 56789", "+86 138123456789"])
def test_too_many_digits_is_a_length_error_not_a_shorter_number(typed: str) -> None:
    assert rejection_reason(typed) == "phone_length"


@pytest.mark.parametrize("typed", ["138", "1381"])
def test_a_few_digits_are_a_length_error_as_documented(typed: str) -> None:
    assert rejection_reason(typed) == "phone_length"


def test_invalid_input_carries_reason_and_code() -> None:
    with pytest.raises(InvalidInput) as caught:
        normalise_mobile("12345678901")
    assert caught.value.reason == "phone_prefix"
    assert caught.value.code == "invalid_input"


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("13812345678", "138****5678"),
        ("19900001111", "199****1111"),
        (None, ""),
        ("", ""),
        ("1", "*"),
        ("123456", "******"),
    ],
)
def test_mask_phone_hides_the_middle_and_never_shows_a_short_number(phone: str | None, masked: str) -> None:
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    ("text", "case_number"),
    [
        ("20261123-0007", "20261123-0007"),
        ("202611230007", "20261123-0007"),
        ("20261123 0007", "20261123-0007"),
        ("20261123 - 0007", "20261123-0007"),
        ("  20261123-0007  ", "20261123-0007"),
        ("20261123－0007", "20261123-0007"),
        ("20261123—0007", "20261123-0007"),
        ("２０２６１１２３－０００７", "20261123-0007"),
        ("２０２６１１２３０００７", "20261123-0007"),
        ("我的工单号是20261123-0007，请帮我查一下", "20261123-0007"),
        ("工单20270101-1234进度如何", "20270101-1234"),
    ],
)
def test_case_numbers_are_found_and_normalised(text: str, case_number: str) -> None:
    assert parse_case_number(text) == case_number


@pytest.mark.parametrize(
    "text",
    [
        "",
        "我想查工单",
        "2026112-0007",  # seven-digit date
        "2026112-000",
        "20261123-007",  # three-digit sequence
        "2026112300071",  # thirteen-digit run
        "20261123-00071",
        "120261123-0007",  # digits glued before the date
        "19991123-0007",  # not a 20xx date
        "13812345678",
    ],
)
def test_text_without_a_case_number_gives_none(text: str) -> None:
    assert parse_case_number(text) is None


@pytest.mark.parametrize(
    ("text", "digits"),
    [
        ("5678", "5678"),
        (" 5678 ", "5678"),
        ("56 78", "5678"),
        ("56-78", "5678"),
        ("５６７８", "5678"),
        ("0000", "0000"),
    ],
)
def test_phone_last4_accepts_exactly_four_digits(text: str, digits: str) -> None:
    assert parse_phone_last4(text) == digits


@pytest.mark.parametrize("text", ["", "567", "56789", "后四位5678", "abcd", "13812345678"])
def test_phone_last4_refuses_anything_else(text: str) -> None:
    assert parse_phone_last4(text) is None


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("我的电话13812345678，身份证丢了", "我的电话138****5678，身份证丢了"),
        ("身份证号 11010519491231002X 怎么补", "身份证号 110****002X 怎么补"),
        ("打 138 1234 5678 找我", "打 138****5678 找我"),
        ("居住证要住满半年吗", "居住证要住满半年吗"),
        ("12345热线几点上班", "12345热线几点上班"),
    ],
)
def test_numbers_in_free_text_are_masked(text: str, masked: str) -> None:
    assert mask_numbers(text) == masked


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("好的，您的联系电话是 13912345678，对吗？", "好的，您的联系电话是 139****5678，对吗？"),
        ("打 +86 139-1234-5678 找我", "打 139****5678 找我"),
        ("１３９１２３４５６７８", "139****5678"),
        ("您的工单号是 20261204-0001", "您的工单号是 20261204-0001"),
        ("身份证号 110101199003071234", "身份证号 110101199003071234"),
        ("12345热线几点上班", "12345热线几点上班"),
    ],
)
def test_mobile_numbers_in_a_transcript_are_masked_and_case_numbers_kept(text: str, masked: str) -> None:
    assert mask_phones(text) == masked


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("\u0000\u200b", ""),
        ("路灯\x00坏了", "路灯坏了"),
        ("\x1b[31m红色\x1b[0m", "[31m红色[0m"),
        ("响铃\x07\x7f\x85", "响铃"),
        ("\ufeff你好\u2060", "你好"),
        ("第一行\r\n第二行\t完", "第一行\r\n第二行\t完"),
        ("👨\u200d👩\u200d👧 一家人", "👨\u200d👩\u200d👧 一家人"),
        ("谢谢\ud83d", "谢谢?"),
    ],
)
def test_clean_text_drops_control_characters_and_keeps_what_people_write(raw: str, cleaned: str) -> None:
    assert clean_text(raw) == cleaned
