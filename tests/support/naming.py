"""Names that differ between tests but not between runs.

Tests share one app and database per session, so what each creates must not collide. A
counter gives distinct names in a fixed order, where uuid4 gave new ones on every run (and
now and then a hex string with seven digits in a row, which the masking rightly masked).
The suffix is letters only, so no name is ever read as a phone, case or link-code number.
"""

from __future__ import annotations

import itertools

_counter = itertools.count()
SUFFIX_LETTERS = 4


def suffix() -> str:
    """The next four-letter suffix: aaaa, aaab, …"""
    n = next(_counter)
    letters = []
    for _ in range(SUFFIX_LETTERS):
        n, digit = divmod(n, 26)
        letters.append(chr(ord("a") + digit))
    return "".join(reversed(letters))


def unique(prefix: str, separator: str = "-") -> str:
    """``prefix`` with the next suffix: ``unique("test")`` is ``test-aaaa``, then ``test-aaab``."""
    return f"{prefix}{separator}{suffix()}"


def unique_number(base: int) -> int:
    """A distinct integer above ``base`` (a Telegram chat id), in the same fixed order."""
    return base + next(_counter)
