"""Reading personal columns straight from a database file: they are encrypted at rest
(`crm_backend.crypto`), under the tests' fixed keys (`tests.support.stack.TEST_SECRETS`)."""

from __future__ import annotations

import json
from typing import Any

from crm_backend.crypto import active_key_ring


def plain(stored: str | None, place: str) -> str | None:
    """The text a raw value of `place` (``table.column``) holds; empty and None as they are."""
    return active_key_ring().decrypt(stored, place) if stored else stored


def plain_json(stored: str | None, place: str) -> Any:
    """The JSON value a raw encrypted JSON column of `place` holds (None for SQL NULL)."""
    return json.loads(active_key_ring().decrypt(stored, place)) if stored else None


def sealed_json(value: Any, place: str) -> str:
    """A JSON value as the app stores it in the encrypted column `place` (for rows a test writes itself)."""
    return active_key_ring().encrypt(json.dumps(value), place)
