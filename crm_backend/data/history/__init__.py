"""Real message-board history shipped with the project, for ``python -m crm_backend import-messages``.

`history_file` is the one place code (the importer's tests, benchmarks, hot issues, reply
quality) finds these files; see PROVENANCE.md beside it for where they come from.
"""

from __future__ import annotations

from pathlib import Path

HISTORY_DIR = Path(__file__).resolve().parent
HOT_ISSUES_FILE = "citizen_messages_hot_issues.csv"
WITH_REPLIES_FILE = "citizen_messages_with_replies.csv"


def history_file(name: str) -> Path:
    """The path of one shipped history file, e.g. ``history_file(HOT_ISSUES_FILE)``.

    Raises:
        FileNotFoundError: no such file in `HISTORY_DIR`.
    """
    path = HISTORY_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"no history file {name!r} in {HISTORY_DIR}")
    return path
