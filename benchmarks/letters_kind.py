"""How well the letter gate tells reports from questions: ``.venv/bin/python -m benchmarks.letters_kind``.

5-fold stratified cross-validation (shuffle seed 13) of `bot.letters.LetterKindModel` on its
training rows (``bot/data/letter_kinds.csv``, labelled by title, `bot.letters.kind_by_title`):
each row is predicted by a model that did not train on it, at the gate's threshold
(`QUESTION_THRESHOLD`). The same folds again with each held-out letter's title removed (the
model still trained on whole letters): a citizen in a chat writes no title, and the labels come
from the titles, so this is the figure that does not lean on them. Then the model trained on
all rows is scored once on the 64 held-out benchmark letters
(``benchmarks/data/letters_heldout.csv``), against the same title rule.
"""

from __future__ import annotations

import csv
from collections import Counter

from benchmarks.letters_benchmark import HELDOUT
from bot.letters import MODEL_CHARS, QUESTION_THRESHOLD, LetterKindModel, build_pipeline, read_letter_kinds


def table(pairs: list[tuple[str, str]], title: str) -> None:
    counts = Counter(pairs)
    total = len(pairs)
    right = sum(n for (truth, guess), n in counts.items() if truth == guess)
    print(f"\n{title}: {right}/{total} = {right / total:.1%} right")
    print("| labelled \\ read as | report | question |")
    print("| --- | --- | --- |")
    for truth in ("report", "question"):
        print(f"| {truth} | {counts[(truth, 'report')]} | {counts[(truth, 'question')]} |")
    for kind in ("report", "question"):
        found = sum(n for (t, g), n in counts.items() if g == kind)
        relevant = sum(n for (t, g), n in counts.items() if t == kind)
        hit = counts[(kind, kind)]
        print(f"{kind}: precision {hit / max(found, 1):.1%}, recall {hit / max(relevant, 1):.1%}")


def main() -> None:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rows = read_letter_kinds()
    texts = [row.text[:MODEL_CHARS] for row in rows]
    labels = [row.kind for row in rows]
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=13)
    probabilities = cross_val_predict(build_pipeline(), texts, labels, cv=folds, method="predict_proba")
    classes = sorted(set(labels))  # the pipeline's classes_ order
    question = classes.index("question")
    guesses = ["question" if p[question] >= QUESTION_THRESHOLD else "report" for p in probabilities]
    print(f"{len(rows)} labelled letters: {Counter(labels)}")
    table(list(zip(labels, guesses, strict=True)), "5-fold cross-validation")
    body_guesses: list[str] = []
    body_labels: list[str] = []
    for train, test in folds.split(texts, labels):
        fold_model = LetterKindModel.train([rows[i] for i in train])
        for i in test:
            body = rows[i].text.split("\n", 1)[-1]
            body_labels.append(labels[i])
            body_guesses.append("question" if fold_model.question_probability(body) >= QUESTION_THRESHOLD else "report")
    table(
        list(zip(body_labels, body_guesses, strict=True)),
        "5-fold cross-validation, titles removed from the held-out fold",
    )
    model = LetterKindModel.train(rows)
    with open(HELDOUT, encoding="utf-8", newline="") as handle:
        heldout = list(csv.DictReader(handle))
    pairs = [
        (row["kind"], "question" if model.question_probability(row["text"]) >= QUESTION_THRESHOLD else "report")
        for row in heldout
    ]
    table(pairs, f"{len(heldout)} held-out benchmark letters")


if __name__ == "__main__":
    main()
