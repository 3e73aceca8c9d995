"""A case filed through the real app and engine leaves no phone, address or sentence of the
citizen's in the database files (the CRM's and the engine's tracker store, WAL included).

The PostgreSQL counterpart reads the raw tables as text: `tests/integration/test_postgres.py`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support.stack import Stack

SENTENCE = "路灯坏了整整三个星期，晚上一片漆黑很危险"
ADDRESS = "A3区五一大道188号幸福小区东门"
PHONE = "13987654321"


def file_known_case(stack: Stack, sender: str) -> str:
    """The citizen reports `SENTENCE` at `ADDRESS` with `PHONE` over the REST channel; the case number."""
    stack.rest(sender, SENTENCE)
    stack.rest(sender, ADDRESS)
    replies = stack.rest(sender, PHONE)
    for _ in range(3):  # 仍然提交 beside an earlier case, then the read-back's 确认
        created = re.search(r"\d{8}-\d{4,6}", " ".join(reply.get("text", "") for reply in replies))
        if created:
            return created.group(0)
        replies = stack.rest(sender, "/affirm")
    raise AssertionError(replies)


def forms(secret: str) -> list[bytes]:
    """The ways a value can sit in a file: UTF-8, and as JSON escapes it (Rasa's events)."""
    return [secret.encode(), json.dumps(secret)[1:-1].encode()]


def test_a_filed_case_leaves_no_phone_address_or_sentence_in_the_sqlite_files(stack: Stack, sender: str) -> None:
    case_number = file_known_case(stack, sender)
    case = stack.api("GET", f"/cases/{case_number}").json()
    assert (case["description"], case["location"]) == (SENTENCE, ADDRESS)  # the app reads them whole
    files = [
        path
        for name in ("crm.db", "tracker.db")
        for path in (Path(stack.workdir) / name, Path(stack.workdir) / f"{name}-wal")
        if path.exists()
    ]
    assert {path.name for path in files} >= {"crm.db", "tracker.db"}
    for path in files:
        raw = path.read_bytes()
        for secret in (PHONE, ADDRESS, SENTENCE, "五一大道188号", "漆黑"):
            for form in forms(secret):
                assert form not in raw, f"{secret} in {path.name}"
