"""Select the letters of the hand-labelled case-type sets (see crm_backend/dispatch/data/case_types/PROVENANCE.md).

``python -m benchmarks.case_type_sample {test,dev} DATA_DIR`` prints the chosen rows (msg_id,
title and the first 400 characters of the detail) for labelling; it never writes labels.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

SOURCES = ("citizen_messages_with_replies.csv", "citizen_messages_hot_issues.csv")
RULES = {"test": (44, 0), "dev": (34, 17)}
SHOWN_CHARS = 400


def select(data_dir: Path, which: str) -> list[dict[str, str]]:
    """The rows of one set: pooled sources sorted by msg_id, every k-th from an offset.

    Args:
        data_dir: The directory holding the two source files.
        which: ``"test"`` or ``"dev"``.

    Returns:
        The selected rows with ``msg_id``, ``title`` and ``detail`` as the source has them.
    """
    rows: list[dict[str, str]] = []
    for name in SOURCES:
        with (data_dir / name).open(encoding="utf-8", newline="") as handle:
            rows.extend(
                {"msg_id": row["msg_id"], "title": row["title"], "detail": row["detail"]}
                for row in csv.DictReader(handle)
            )
    rows.sort(key=lambda row: int(row["msg_id"]))
    step, offset = RULES[which]
    chosen = [row for index, row in enumerate(rows) if index % step == offset]
    if which == "dev":
        # A letter posted again with the same words must not sit on both sides of the split.
        held_out = {_letter(row) for index, row in enumerate(rows) if index % RULES["test"][0] == RULES["test"][1]}
        chosen = [row for row in chosen if _letter(row) not in held_out]
    return chosen


def _letter(row: dict[str, str]) -> str:
    """A letter's words with whitespace removed, to find the same letter posted twice."""
    return "".join((row["title"] + row["detail"]).split())


def main() -> int:
    """Print one set's letters for labelling."""
    which, data_dir = sys.argv[1], Path(sys.argv[2])
    for row in select(data_dir, which):
        detail = " ".join(row["detail"].split())[:SHOWN_CHARS]
        print(f"## {row['msg_id']} | {row['title'].strip()}\n{detail}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
