"""Builds the two letter files from the real message board data: ``.venv/bin/python -m benchmarks.letters_data``.

Reads ``../shared/data/citizen_messages_with_replies.csv`` and ``citizen_messages_hot_issues.csv``
(real letters to the government, never used to train the NLU or the category classifier) and
writes, by fixed rules on ``msg_id`` and the title:

* ``benchmarks/data/letters_heldout.csv``: the benchmark set, every letter whose ``msg_id`` is a
  multiple of `HELDOUT_MODULUS` (64 letters). No model learns from these.
* ``bot/data/letter_kinds.csv``: the letter-kind model's training rows, every other letter of the
  two files that the title rule labels (`bot.letters.kind_by_title`), except any whose body also
  occurs in the benchmark set or that is a near-duplicate of a benchmark letter (the same letter
  posted again: character-trigram TF-IDF cosine ≥ `NEAR_DUPLICATE` on the first
  `TRAINING_CHARS` characters); each letter cut to `TRAINING_CHARS` characters.

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
NEAR_DUPLICATE = 0.8


def read_letters(shared: Path = SHARED) -> list[tuple[str, str, str, str]]:
    """(source file, msg_id, title, detail) of every letter of the two files, in file order."""
    letters = []
    for name in SOURCES:
        with open(shared / name, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                letters.append((name, row["msg_id"], row["title"].strip(), " ".join(row["detail"].split())))
    return letters


def near_duplicates(texts: list[str], heldout: list[str]) -> set[int]:
    """Indexes of `texts` whose trigram cosine to any of `heldout` is at least `NEAR_DUPLICATE`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(3, 3)).fit(heldout + texts)
    similarity = cosine_similarity(vectorizer.transform(texts), vectorizer.transform(heldout)).max(axis=1)
    return {index for index, value in enumerate(similarity) if value >= NEAR_DUPLICATE}


def main() -> None:
    letters = read_letters()
    heldout = [letter for letter in letters if int(letter[1]) % HELDOUT_MODULUS == 0]
    heldout_bodies = {detail for *_, detail in heldout}
    with open(HELDOUT_PATH, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "msg_id", "kind", "text"])
        for source, msg_id, title, detail in heldout:
            writer.writerow([source, msg_id, kind_by_title(title) or "report", letter_text(title, detail)])
    candidates = [
        (source, msg_id, kind, letter_text(title, detail)[:TRAINING_CHARS])
        for source, msg_id, title, detail in letters
        if int(msg_id) % HELDOUT_MODULUS != 0
        and detail not in heldout_bodies
        and (kind := kind_by_title(title)) is not None
    ]
    dropped = near_duplicates(
        [text for *_, text in candidates],
        [letter_text(title, detail)[:TRAINING_CHARS] for _, _, title, detail in heldout],
    )
    rows = [row for index, row in enumerate(candidates) if index not in dropped]
    LETTER_KIND_DATA.parent.mkdir(parents=True, exist_ok=True)
    with open(LETTER_KIND_DATA, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "msg_id", "kind", "text"])
        writer.writerows(rows)
    print(
        f"{len(heldout)} held-out letters -> {HELDOUT_PATH}; {len(rows)} training rows -> {LETTER_KIND_DATA} "
        f"({len(dropped)} near-duplicates of held-out letters left out)"
    )


if __name__ == "__main__":
    main()
