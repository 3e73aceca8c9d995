"""Benchmark of the 12345 case-type recogniser: held-out letters, cross-validation, speed, chat.

Run from the project root::

    .venv/bin/python -m benchmarks.case_type_benchmark > results/case_type_benchmark.md

It prints a Markdown report on stdout (progress on stderr). About a minute on 2 cores.

1. **Held-out test.** The shipped model (``crm_backend.dispatch.case_type``, trained on the
   209 development letters and the seed sentences) scores the 163 hand-labelled test letters
   (``data/case_types/test.csv``), which nothing was tuned on: accuracy, macro F1 over the
   types that occur in the test set, per-type precision / recall / F1, the confusion matrix,
   and how often a type that does not occur (表扬) was predicted. The majority-type baseline
   (always 投诉) is printed beside it.
2. **Cross-validation on dev.** ``StratifiedKFold`` (5 folds, shuffle seed 7, not a seed used
   while choosing the model): the seed sentences are in every training fold, scores are on
   development letters only.
3. **Speed.** ``CaseTypeRecogniser.predict`` per text, one call per test letter after a warm-up
   call: p50 / p95 / max in milliseconds.
4. **Short chat reports.** What a few short reports as citizens type them in the chat get.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections import Counter

from crm_backend.dispatch.case_type import (
    CASE_TYPES,
    DEV_DATA_PATH,
    SEED_DATA_PATH,
    TEST_DATA_PATH,
    CaseTypeRecogniser,
    LabelledLetter,
    read_case_type_csv,
)

CV_FOLDS = 5
CV_SEED = 7
CHAT_REPORTS = (
    "路灯坏了",
    "小区门口垃圾没人清运",
    "人民路上有个井盖丢了",
    "楼下烧烤店油烟太大，天天扰民",
    "物业乱收费",
    "有人在河边违章搭建",
    "请问居住证怎么办理",
    "建议在学校门口装个红绿灯",
    "感谢环卫工人把我们小区打扫得这么干净",
    "我要投诉公交司机态度恶劣",
)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def scores(truth: list[str], predicted: list[str]) -> dict[str, object]:
    """Accuracy, macro F1 over the types in `truth`, per-type figures and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    present = [name for name in CASE_TYPES if name in set(truth)]
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=present, zero_division=0)
    return {
        "n": len(truth),
        "accuracy": accuracy_score(truth, predicted),
        "macro_f1": f1_score(truth, predicted, labels=present, average="macro", zero_division=0),
        "per_type": {
            name: (float(p), float(r), float(f), int(s))
            for name, p, r, f, s in zip(present, precision, recall, f1, support, strict=True)
        },
        "confusion": confusion_matrix(truth, predicted, labels=list(CASE_TYPES)).tolist(),
        "absent_predicted": {
            name: count for name, count in Counter(predicted).items() if name not in present and count
        },
    }


def cross_validate(dev: list[LabelledLetter], seeds: list[LabelledLetter]) -> dict[str, object]:
    """Pooled held-out predictions of a 5-fold split of the development letters."""
    from sklearn.model_selection import StratifiedKFold

    truth = [row.case_type for row in dev]
    predicted = [""] * len(dev)
    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=CV_SEED)
    fold_accuracy = []
    for number, (train, held) in enumerate(folds.split(dev, truth), start=1):
        _progress(f"cross-validation fold {number}/{CV_FOLDS}")
        model = CaseTypeRecogniser.train([dev[i] for i in train] + seeds)
        answers = model.predict_many([dev[i].text for i in held])
        for i, answer in zip(held, answers, strict=True):
            predicted[i] = answer.case_type
        fold_accuracy.append(sum(predicted[i] == truth[i] for i in held) / len(held))
    result = scores(truth, predicted)
    result["fold_accuracy"] = (statistics.mean(fold_accuracy), statistics.stdev(fold_accuracy))
    return result


def _table(result: dict[str, object]) -> list[str]:
    lines = ["| type | precision | recall | F1 | letters |", "| --- | ---: | ---: | ---: | ---: |"]
    per_type = result["per_type"]
    assert isinstance(per_type, dict)
    for name, (p, r, f, s) in per_type.items():
        lines.append(f"| {name} | {p:.2f} | {r:.2f} | {f:.2f} | {s} |")
    lines += ["", "confusion (rows: label, columns: predicted)", ""]
    lines.append("| | " + " | ".join(CASE_TYPES) + " |")
    lines.append("| --- |" + " ---: |" * len(CASE_TYPES))
    confusion = result["confusion"]
    assert isinstance(confusion, list)
    for name, row in zip(CASE_TYPES, confusion, strict=True):
        if any(row):
            lines.append(f"| {name} | " + " | ".join(str(value) for value in row) + " |")
    return lines


def main() -> int:
    """Run every measurement and print the report."""
    dev, seeds, test = (read_case_type_csv(path) for path in (DEV_DATA_PATH, SEED_DATA_PATH, TEST_DATA_PATH))
    _progress("training the shipped model")
    started = time.perf_counter()
    model = CaseTypeRecogniser.train(dev + seeds)
    training_seconds = time.perf_counter() - started

    truth = [row.case_type for row in test]
    predicted = [answer.case_type for answer in model.predict_many([row.text for row in test])]
    held_out = scores(truth, predicted)
    majority = Counter(row.case_type for row in dev).most_common(1)[0][0]
    baseline = scores(truth, [majority] * len(truth))

    model.predict(test[0].text)
    latencies = []
    for row in test:
        started = time.perf_counter()
        model.predict(row.text)
        latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    p95 = latencies[int(0.95 * (len(latencies) - 1))]

    cv = cross_validate(dev, seeds)

    out = ["# Case-type recogniser", ""]
    out.append(
        f"Model {model.model_version}: {len(dev)} development letters + {len(seeds)} seed sentences, "
        f"trained in {training_seconds:.1f} s."
    )
    out += ["", f"## Held-out test letters ({held_out['n']}, labelled before the model was built)", ""]
    out.append(
        f"accuracy **{held_out['accuracy']:.3f}**, macro F1 **{held_out['macro_f1']:.3f}** "
        f"(majority baseline «{majority}»: accuracy {baseline['accuracy']:.3f}, macro F1 {baseline['macro_f1']:.3f}); "
        f"types absent from the test set but predicted: {held_out['absent_predicted'] or 'none'}"
    )
    out += ["", *_table(held_out)]
    mean, spread = cv["fold_accuracy"]  # type: ignore[misc]
    out += ["", f"## Cross-validation on the development letters ({CV_FOLDS} folds, seed {CV_SEED})", ""]
    out.append(
        f"pooled accuracy **{cv['accuracy']:.3f}** (per fold {mean:.3f} ± {spread:.3f}), "
        f"macro F1 **{cv['macro_f1']:.3f}**; absent types predicted: {cv['absent_predicted'] or 'none'}"
    )
    out += ["", *_table(cv)]
    load = os.getloadavg()[0]
    out += ["", "## Speed", ""]
    out.append(
        f"`predict` on one letter: p50 {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms, "
        f"max {latencies[-1]:.1f} ms ({len(latencies)} letters, load average {load:.2f})"
    )
    out += ["", "## Short chat reports", "", "| report | type | confidence |", "| --- | --- | ---: |"]
    for text, answer in zip(CHAT_REPORTS, model.predict_many(list(CHAT_REPORTS)), strict=True):
        out.append(f"| {text} | {answer.case_type} | {answer.confidence:.2f} |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
