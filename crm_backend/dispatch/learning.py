"""Retraining the category model on the shipped data plus staff labels, behind a gate.

A candidate is trained on the shipped messages plus every usable staff label outside the held-back
slice. Candidate and current model are then measured the same way:

* on the **held-back slice** of the staff labels: a fixed fifth of the cases, chosen by a hash of
  the case id (`held_back`), never trained on by any version, so every version is scored on the
  same kind of unseen staff decisions;
* on the **shipped grouped folds** (`crm_backend.dispatch.folds`, seed `GATE_SEED`): in each fold a
  model of the same recipe (the shipped training folds plus that version's staff labels) is
  trained and scored on the held-out shipped messages.

The candidate is promoted only if it is not worse on both (`Verdict`). Nothing here touches the
database: `crm_backend.services.model_versions` reads the labels and keeps the versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crm_backend.dispatch.classifier import CATEGORIES, CategoryClassifier, LabelledMessage, build_pipeline
from crm_backend.dispatch.folds import FOLDS, GATE_SEED, duplicate_groups, grouped_folds

HELD_BACK_BUCKETS = 5  # one case in five is held back for judging


def held_back(case_id: int) -> bool:
    """Whether a case's staff labels are held back for judging models (a fixed fifth of the cases)."""
    digest = hashlib.sha256(f"staff-label:{case_id}".encode()).digest()
    return digest[0] % HELD_BACK_BUCKETS == 0


@dataclass(frozen=True)
class StaffExample:
    """A usable staff label: the case, the text the model saw, the staff's category."""

    label_id: int
    case_id: int
    text: str
    category: str

    @property
    def message(self) -> LabelledMessage:
        return LabelledMessage(self.text, self.category)


def latest_per_case(examples: Sequence[StaffExample]) -> list[StaffExample]:
    """One example per case: the latest decision wins (a correction after a 派单 replaces it)."""
    latest: dict[int, StaffExample] = {}
    for example in sorted(examples, key=lambda item: item.label_id):
        latest[example.case_id] = example
    return sorted(latest.values(), key=lambda item: item.label_id)


def split_examples(examples: Sequence[StaffExample]) -> tuple[list[StaffExample], list[StaffExample]]:
    """(for training, held back) after keeping the latest label of each case."""
    kept = latest_per_case(examples)
    return [e for e in kept if not held_back(e.case_id)], [e for e in kept if held_back(e.case_id)]


def accuracy(classifier: CategoryClassifier, rows: Sequence[LabelledMessage]) -> float | None:
    """The share of `rows` the classifier gets right; None for no rows."""
    if not rows:
        return None
    predicted = classifier.predict_many([row.text for row in rows])
    return sum(p.category == row.label for p, row in zip(predicted, rows, strict=True)) / len(rows)


def fold_figures(
    shipped: Sequence[LabelledMessage],
    extra: Sequence[LabelledMessage],
    *,
    seed: int = GATE_SEED,
    n_splits: int = FOLDS,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy and macro-F1 on the shipped grouped folds of a model trained on the other folds plus `extra`.

    Pooled over the folds' held-out predictions (every shipped message scored once).
    """
    from sklearn.metrics import accuracy_score, f1_score

    texts = [row.text for row in shipped]
    labels = [row.label for row in shipped]
    predicted: list[str] = [""] * len(shipped)
    groups = duplicate_groups(texts)
    for train, test in grouped_folds(texts, labels, seed, n_splits=n_splits, groups=groups):
        pipeline = build_pipeline(params)
        pipeline.fit(
            [texts[i] for i in train] + [row.text for row in extra],
            [labels[i] for i in train] + [row.label for row in extra],
        )
        for index, guess in zip(test, pipeline.predict([texts[i] for i in test]), strict=True):
            predicted[index] = str(guess)
    return {
        "accuracy": round(float(accuracy_score(labels, predicted)), 4),
        "macro_f1": round(float(f1_score(labels, predicted, labels=list(CATEGORIES), average="macro")), 4),
        "seed": seed,
        "folds": n_splits,
        "staff_labels": len(extra),
    }


@dataclass(frozen=True)
class Verdict:
    """The gate's decision and why."""

    promote: bool
    reason: str


def judge(candidate: dict[str, Any], current: dict[str, Any]) -> Verdict:
    """Promote only if the candidate is not worse than the current model on both measures.

    Each side is ``{"staff": {"accuracy": float | None, "n": int}, "folds": {"accuracy": float, ...}}``;
    with no held-back staff labels the staff measure is skipped.
    """
    reasons: list[str] = []
    staff_new, staff_old = candidate["staff"]["accuracy"], current["staff"]["accuracy"]
    if staff_new is not None and staff_old is not None and staff_new < staff_old:
        reasons.append(f"held-back staff labels {staff_new:.4f} < {staff_old:.4f}")
    folds_new, folds_old = candidate["folds"]["accuracy"], current["folds"]["accuracy"]
    if folds_new < folds_old:
        reasons.append(f"shipped folds {folds_new:.4f} < {folds_old:.4f}")
    if reasons:
        return Verdict(False, "worse on " + "; ".join(reasons))
    return Verdict(True, "not worse on the held-back staff labels nor on the shipped folds")
