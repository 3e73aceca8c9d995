"""Validation and masking of the personal data citizens type into the chat, and the one
cleaning every text from outside goes through where it enters."""

from __future__ import annotations

import re

from crm_backend.errors import InvalidInput

_FULLWIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")
_SEPARATORS = re.compile(r"[\s\-－—()（）]")
_PHONE_CANDIDATE = re.compile(r"(?:\+?86)?1\d{10}(?!\d)|\d+")
_LINK_CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")
# Four digits for the first 9,999 cases of a day, then five or six (never with a leading zero).
_CASE_NUMBER = re.compile(r"(?<!\d)(20\d{6})\s*[-－—]?\s*(\d{4}|[1-9]\d{4,5})(?!\d)")


# Control characters (C0 but tab and line breaks, DEL, C1) and the invisible marks that carry
# nothing in a message (zero-width space, word joiner, byte-order mark). PostgreSQL refuses
# NUL in text; none of them is anything a person means to send. Emoji joiners stay.
_UNWANTED_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")


def clean_text(text: str) -> str:
    """Text from outside as the CRM keeps it: no control characters, no lone surrogates.

    Applied where input enters (the message pipeline, JSON bodies, console forms), so
    every database stores what every other would.
    """
    storable = text.encode("utf-8", "replace").decode("utf-8")  # half an emoji is valid JSON, not UTF-8
    return _UNWANTED_CHARACTERS.sub("", storable)


def _digits_only(text: str) -> str:
    return _SEPARATORS.sub("", text.translate(_FULLWIDTH_DIGITS))


def normalise_mobile(text: str) -> str:
    """Extract and validate a mainland-China mobile number from what a citizen typed.

    Accepts spaces, dashes, full-width digits and a +86 / 86 prefix around the number.

    Returns:
        The 11-digit number.

    Raises:
        InvalidInput: reason ``phone_missing`` (no digits), ``phone_length`` (not 11
            digits) or ``phone_prefix`` (11 digits that are not a mobile number).
    """
    compact = _digits_only(text)
    match = _PHONE_CANDIDATE.search(compact)
    if not match:
        raise InvalidInput("phone_missing", "no phone number found")
    number = match.group(0)
    if number.startswith("+86"):
        number = number[3:]
    elif number.startswith("86") and len(number) == 13:
        number = number[2:]
    if len(number) != 11:
        raise InvalidInput("phone_length", f"expected 11 digits, got {len(number)}")
    if not re.fullmatch(r"1[3-9]\d{9}", number):
        raise InvalidInput("phone_prefix", "not a mainland mobile number")
    return number


def mask_phone(phone: str | None) -> str:
    """Show a phone number as 138****5678, for places that do not need it whole."""
    if not phone:
        return ""
    if len(phone) < 7:
        return "*" * len(phone)
    return f"{phone[:3]}****{phone[-4:]}"


# Runs of 7+ digits, separators allowed (138 1234 5678, 138-1234-5678), an ID number's final X too.
NUMBER_RUN = re.compile(r"[0-9０-９](?:[\s\-－]?[0-9０-９]){6,}[XxＸｘ]?")


def mask_numbers(text: str) -> str:
    """Free text with phone and ID numbers shown as 138****5678 (staff reviewing feedback need the words only)."""
    return NUMBER_RUN.sub(lambda match: mask_phone(re.sub(r"[\s\-－]", "", match.group(0))), text)


# A mainland mobile number in free text: 11 digits from 1[3-9] (spaces, dashes, full-width digits
# and a +86 prefix allowed), not part of a longer number such as a case number or an ID number.
MOBILE_IN_TEXT = re.compile(
    r"(?<![0-9０-９])(?:[+＋]?[8８][6６][\s\-－]?)?[1１][3-9３-９](?:[\s\-－]?[0-9０-９]){9}(?![0-9０-９])"
)


def mask_phones(text: str) -> str:
    """Free text with every mobile number in it shown as 138****5678 (the rest, case numbers too, as it is)."""
    return MOBILE_IN_TEXT.sub(lambda match: mask_phone(_digits_only(match.group(0))[-11:]), text)


def parse_case_number(text: str) -> str | None:
    """Find a case number in free text, normalised.

    ``YYYYMMDD-NNNN``, or five or six digits past a day's 9,999th case; the hyphen is optional.
    """
    match = _CASE_NUMBER.search(text.translate(_FULLWIDTH_DIGITS))
    if not match:
        return None
    return f"{match.group(1)}-{match.group(2)}"


def parse_link_code(text: str) -> str | None:
    """A six-digit channel-linking code in free text (not part of a longer number)."""
    match = _LINK_CODE.search(text.translate(_FULLWIDTH_DIGITS))
    return match.group(1) if match else None


def parse_phone_last4(text: str) -> str | None:
    """Accept exactly four digits (spaces and full-width digits tolerated)."""
    compact = _digits_only(text)
    return compact if re.fullmatch(r"\d{4}", compact) else None
