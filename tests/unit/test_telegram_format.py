"""Shaping replies for Telegram: splitting long texts, callback data for button payloads."""

from __future__ import annotations

import pytest

from bot.channels.telegram_format import (
    MAX_CALLBACK_BYTES,
    MAX_MESSAGE_UNITS,
    callback_data_for,
    chunks_for,
    is_stored_token,
    keyboard_for,
    location_text,
    needs_storing,
    split_text,
    utf16_units,
)


def test_a_short_text_is_one_message() -> None:
    assert split_text("您好，请问有什么可以帮您？") == ["您好，请问有什么可以帮您？"]


@pytest.mark.parametrize("end", ["。", "！", "？", "\n"])
def test_a_long_text_is_cut_after_the_last_sentence_end_that_fits(end: str) -> None:
    sentence = "路灯坏了很久" + end  # 7 characters
    text = sentence * 1000
    pieces = split_text(text)
    assert "".join(pieces) == text
    assert all(utf16_units(piece) <= MAX_MESSAGE_UNITS for piece in pieces)
    assert all(piece.endswith(end) for piece in pieces)
    assert len(pieces[0]) == (MAX_MESSAGE_UNITS // 7) * 7


def test_a_text_without_sentence_ends_is_cut_at_the_limit() -> None:
    text = "字" * 10000
    assert [len(piece) for piece in split_text(text)] == [4096, 4096, 1808]


def test_emoji_count_twice_as_telegram_counts_them() -> None:
    text = "😀" * 3000  # 6,000 UTF-16 units
    pieces = split_text(text)
    assert [len(piece) for piece in pieces] == [2048, 952]
    assert "".join(pieces) == text


def test_the_limit_can_be_chosen_and_whitespace_only_pieces_are_dropped() -> None:
    assert split_text("一二三。四五六。", limit=4) == ["一二三。", "四五六。"]
    assert split_text("一二三\n\n\n\n\n\n", limit=4) == ["一二三\n"]


def test_a_payload_that_fits_is_its_own_callback_data() -> None:
    payload = '/give_location{"district": "A1区"}'
    assert not needs_storing(payload)
    assert callback_data_for(payload) == payload
    assert not is_stored_token(payload)


def test_a_payload_over_64_bytes_becomes_a_short_stable_token() -> None:
    payload = '/correct_category{"category": "劳动和社会保障", "note": "市民在对话中更正了类别"}'
    assert len(payload) < MAX_CALLBACK_BYTES < len(payload.encode())  # counted in bytes, not characters
    token = callback_data_for(payload)
    assert needs_storing(payload) and is_stored_token(token)
    assert len(token.encode()) <= MAX_CALLBACK_BYTES
    assert token == callback_data_for(payload)
    assert token != callback_data_for(payload + " ")


def test_a_payload_that_looks_like_a_token_is_stored_too() -> None:
    assert needs_storing("#abc")
    assert callback_data_for("#abc") != "#abc"


def test_buttons_become_one_button_rows_on_the_last_piece() -> None:
    buttons = [{"title": "确认提交", "payload": "/affirm"}, {"title": "取消", "payload": "/cancel"}]
    assert keyboard_for(buttons) == [
        [{"text": "确认提交", "callback_data": "/affirm"}],
        [{"text": "取消", "callback_data": "/cancel"}],
    ]
    chunks = list(chunks_for("好。" * 3000, buttons))
    assert len(chunks) == 2
    assert chunks[0].keyboard is None and chunks[1].keyboard == keyboard_for(buttons)


@pytest.mark.parametrize(
    ("latitude", "longitude", "text"),
    [
        (31.2304, 121.4737, "位置：北纬31.2304，东经121.4737"),
        (-33.86882, 151.20929, "位置：南纬33.8688，东经151.2093"),
        (51.5, -0.12, "位置：北纬51.5000，西经0.1200"),
    ],
)
def test_a_location_is_written_as_the_form_takes_it(latitude: float, longitude: float, text: str) -> None:
    assert location_text(latitude, longitude) == text
