"""Builds the two letter files from the real message board data: ``.venv/bin/python -m benchmarks.letters_data``.

Reads ``../shared/data/citizen_messages_with_replies.csv`` and ``citizen_messages_hot_issues.csv``
(real letters to the government, never used to train the NLU or the category classifier) and
writes, by fixed rules on ``msg_id`` and the title:

* ``benchmarks/data/letters_heldout.csv``: the benchmark set, every letter whose ``msg_id`` is a
  multiple of `HELDOUT_MODULUS` (64 letters). No model learns from these.
* ``bot/data/letter_kinds.csv``: the letter-kind model's training rows, every other letter of the
  two files that the title rule labels (`bot.letters.kind_by_title`), except any whose body also
  occurs in the benchmark set; each letter cut to `TRAINING_CHARS` characters.

Re-running it reproduces both files byte for byte.
"""

from __future__ import annotations

import csv
from pathlib import Path

from bot.letters import LETTER_KIND_DATA, kind_by_title, letter_text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent.parent / "shared" / "data"
SOURCES = ("citizen_messages_with_replies.csv", "citizen_messages_hot_issues.csv")
HELDOUT_PATH = ROOT / "benchmarks" / "data" / "letters_heldout.csv"
HELDOUT_MODULUS = 100
TRAINING_CHARS = 200


def read_letters(shared: Path = SHARED) -> list[tuple[str, str, str, str]]:
    """(source file, msg_id, title, detail) of every letter of the two files, in file order."""
    letters = []
    for name in SOURCES:
        with open(shared / name, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                letters.append((name, row["msg_id"], row["title"].strip(), " ".join(row["detail"].split())))
    return letters


def main() -> None:
    letters = read_letters()
    heldout = [letter for letter in letters if int(letter[1]) % HELDOUT_MODULUS == 0]
    heldout_bodies = {detail for *_, detail in heldout}
    with open(HELDOUT_PATH, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "msg_id", "kind", "text"])
        for source, msg_id, title, detail in heldout:
            writer.writerow([source, msg_id, kind_by_title(title) or "report", letter_text(title, detail)])
    rows = 0
    LETTER_KIND_DATA.parent.mkdir(parents=True, exist_ok=True)
    with open(LETTER_KIND_DATA, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "msg_id", "kind", "text"])
        for source, msg_id, title, detail in letters:
            kind = kind_by_title(title)
            if int(msg_id) % HELDOUT_MODULUS == 0 or detail in heldout_bodies or kind is None:
                continue
            writer.writerow([source, msg_id, kind, letter_text(title, detail)[:TRAINING_CHARS]])
            rows += 1
    print(f"{len(heldout)} held-out letters -> {HELDOUT_PATH}; {rows} training rows -> {LETTER_KIND_DATA}")


if __name__ == "__main__":
    main()
