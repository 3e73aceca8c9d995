"""Shaping our replies for Telegram, and Telegram's messages for the pipeline: pure functions.

Telegram limits a message to 4,096 characters (counted in UTF-16 code units) and a button's
``callback_data`` to 64 bytes; Rasa's replies know neither limit.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

MAX_MESSAGE_UNITS = 4096
MAX_CALLBACK_BYTES = 64
SENTENCE_ENDS = frozenset("。！？\n")
# Callback data that names a stored payload; our payloads start with "/", so never with this.
STORED_PAYLOAD_PREFIX = "#"


@dataclass(frozen=True)
class Chunk:
    """One Telegram message: text and, on the last chunk of a reply, its inline keyboard."""

    text: str
    keyboard: list[list[dict[str, str]]] | None = None


def utf16_units(text: str) -> int:
    """How Telegram counts a text's length."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_MESSAGE_UNITS) -> list[str]:
    """Cut a reply into messages of at most ``limit`` UTF-16 units, after a sentence end where one fits.

    A stretch with no sentence end (。！？ or a line break) within the limit is cut at the limit.
    The pieces, joined, give back the text; pieces that would be only whitespace are dropped
    (Telegram refuses empty messages).
    """
    pieces: list[str] = []
    rest = text
    while utf16_units(rest) > limit:
        fit = _chars_within(rest, limit)
        cut = next((i + 1 for i in range(fit - 1, -1, -1) if rest[i] in SENTENCE_ENDS), fit)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    return [piece for piece in pieces if piece.strip()]


def _chars_within(text: str, limit: int) -> int:
    """How many leading characters of ``text`` fit in ``limit`` UTF-16 units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def callback_data_for(payload: str) -> str:
    """The ``callback_data`` that stands for a button payload.

    A payload that fits in 64 bytes is its own callback data; a longer one (or one that could be
    mistaken for a token) is replaced by ``#`` and a digest of it, which the caller stores with
    the payload (`needs_storing`).
    """
    if not needs_storing(payload):
        return payload
    digest = base64.urlsafe_b64encode(hashlib.sha256(payload.encode("utf-8")).digest()).decode("ascii").rstrip("=")
    return STORED_PAYLOAD_PREFIX + digest


def needs_storing(payload: str) -> bool:
    """Whether a payload cannot travel as callback data itself."""
    return len(payload.encode("utf-8")) > MAX_CALLBACK_BYTES or payload.startswith(STORED_PAYLOAD_PREFIX)


def is_stored_token(callback_data: str) -> bool:
    """Whether callback data names a stored payload rather than being one."""
    return callback_data.startswith(STORED_PAYLOAD_PREFIX)


def keyboard_for(buttons: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Rasa buttons as inline keyboard rows, one button a row (Chinese titles are long)."""
    return [[{"text": button["title"], "callback_data": callback_data_for(button["payload"])}] for button in buttons]


def chunks_for(text: str, buttons: list[dict[str, str]] | None) -> Iterator[Chunk]:
    """One reply as Telegram messages: the text split, the keyboard on the last piece."""
    pieces = split_text(text) or ([""] if buttons else [])
    keyboard = keyboard_for(buttons) if buttons else None
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        # A keyboard needs some text to hang on; a reply of buttons alone gets a neutral mark.
        yield Chunk(piece or "👇", keyboard if last else None)


def location_text(latitude: float, longitude: float) -> str:
    """A shared location as the report form can take it: 「位置：北纬31.2304，东经121.4737」."""
    north = "北纬" if latitude >= 0 else "南纬"
    east = "东经" if longitude >= 0 else "西经"
    return f"位置：{north}{abs(latitude):.4f}，{east}{abs(longitude):.4f}"
