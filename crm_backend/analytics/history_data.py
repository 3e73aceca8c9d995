"""Where the real message-board history files are read from (the one place to change it).

The project keeps its copies in ``crm_backend/data/history/`` (with their PROVENANCE.md); a
checkout that does not have them yet reads the shared originals, ``../shared/data/`` beside
some parent of the repository.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
HISTORY_DIR = PACKAGE_DIR / "data" / "history"


def history_file(name: str) -> Path:
    """The path of a history file such as ``citizen_messages_with_replies.csv``.

    Raises:
        FileNotFoundError: neither the project's copy nor a shared original exists.
    """
    candidates = [HISTORY_DIR / name] + [parent / "shared" / "data" / name for parent in PACKAGE_DIR.parents]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name}: not in {HISTORY_DIR} nor in any ../shared/data")
