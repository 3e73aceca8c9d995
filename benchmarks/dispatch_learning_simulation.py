"""Simulation of the staff-label loop: does the category model learn from the manual queue?

Run from the project root::

    .venv/bin/python -m benchmarks.dispatch_learning_simulation [--seed 11] > results/dispatch_learning.md

The training CSV has no time column, so its own row order stands for time. For each of the 5
grouped folds (`crm_backend.dispatch.folds`, near-duplicates in one fold) in turn:

1. that fold is **untouched**: held out from the whole replay, only ever scored on;
2. the other rows, in data order, are split: the first ``--initial`` share is what the first model
   is trained on (the "shipped" data); the rest is the **stream** of new reports;
3. each report of the stream is classified by the model of the moment; one whose confidence is
   below `MANUAL_DISPATCH_THRESHOLD` goes to the manual queue, where staff decide its category
   (the CSV's label): a staff label. Reports dispatched automatically teach nothing;
4. after every ``--every`` staff decisions the model is retrained on the initial rows plus all
   staff labels so far (the recipe of `crm_backend.dispatch.classifier.build_pipeline`), and
   scored on the untouched fold.

The report gives, per number of staff decisions, the accuracy on the untouched folds (mean over
the five folds), and, for reference, a model trained on every non-untouched row with its true
label (what full labelling would give), and a control: at each retraining, as many labels drawn
at random from the reports seen so far (does asking staff about the least sure cases teach more
than labelling any?). Progress goes to stderr; about 5-10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from typing import Any

from crm_backend.dispatch.classifier import (
    MANUAL_DISPATCH_THRESHOLD,
    TRAINING_DATA_PATH,
    CategoryClassifier,
    LabelledMessage,
    read_labelled_csv,
)
from crm_backend.dispatch.folds import FOLDS, GATE_SEED, duplicate_groups, grouped_folds

GOAL = 0.92


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def score(classifier: CategoryClassifier, rows: list[LabelledMessage]) -> float:
    predicted = classifier.predict_many([row.text for row in rows])
    return sum(p.category == row.label for p, row in zip(predicted, rows, strict=True)) / len(rows)


def replay(
    initial: list[LabelledMessage],
    stream: list[LabelledMessage],
    untouched: list[LabelledMessage],
    every: int,
    control: random.Random,
) -> list[dict[str, Any]]:
    """The curve of one fold: staff decisions, reports seen, accuracy on the untouched fold; and the
    control: as many labels drawn at random from the reports seen so far (not the least sure)."""
    labels: list[LabelledMessage] = []
    model = CategoryClassifier.train(initial)
    first = score(model, untouched)
    curve = [{"decisions": 0, "seen": 0, "accuracy": first, "random": first}]
    position = 0
    while position < len(stream):
        # The model of the moment classifies the reports until `every` of them have been queued.
        predictions = model.predict_many([row.text for row in stream[position:]])
        step = 0
        for prediction, row in zip(predictions, stream[position:], strict=True):
            step += 1
            if prediction.confidence < MANUAL_DISPATCH_THRESHOLD:
                labels.append(row)
                if len(labels) % every == 0:
                    break
        position += step
        if len(labels) == curve[-1]["decisions"]:
            break  # the stream ended without a new decision
        model = CategoryClassifier.train([*initial, *labels])
        drawn = control.sample(stream[:position], len(labels))
        chance = score(CategoryClassifier.train([*initial, *drawn]), untouched)
        curve.append(
            {"decisions": len(labels), "seen": position, "accuracy": score(model, untouched), "random": chance}
        )
        log(
            f"  {position} reports seen, {len(labels)} staff decisions, accuracy {curve[-1]['accuracy']:.4f} "
            f"(random labels: {chance:.4f})"
        )
    return curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dispatch_learning_simulation")
    parser.add_argument("--seed", type=int, default=GATE_SEED, help="shuffle seed of the grouped folds")
    parser.add_argument("--initial", type=float, default=0.2, help="share of the replayed rows the first model knows")
    parser.add_argument("--every", type=int, default=200, help="retrain after this many staff decisions")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of Markdown")
    args = parser.parse_args(argv)

    rows = read_labelled_csv(TRAINING_DATA_PATH)
    texts, labels = [row.text for row in rows], [row.label for row in rows]
    folds = grouped_folds(texts, labels, args.seed, groups=duplicate_groups(texts))
    started = time.perf_counter()
    curves: list[list[dict[str, Any]]] = []
    full: list[float] = []
    for number, (train, test) in enumerate(folds):
        replayed = [rows[i] for i in sorted(train)]  # data order stands for time
        untouched = [rows[i] for i in test]
        cut = int(len(replayed) * args.initial)
        log(f"fold {number}: {cut} initial rows, {len(replayed) - cut} in the stream, {len(untouched)} untouched")
        curves.append(replay(replayed[:cut], replayed[cut:], untouched, args.every, random.Random(number)))
        full.append(score(CategoryClassifier.train(replayed), untouched))
        log(f"  every replayed row labelled: {full[-1]:.4f}")
    seconds = time.perf_counter() - started

    steps = sorted({p["decisions"] for curve in curves for p in curve if p["decisions"] % args.every == 0})
    table = []
    for step in steps:
        present = [p for curve in curves for p in curve if p["decisions"] == step]
        table.append(
            {
                "decisions": step,
                "folds": len(present),
                "accuracy": round(statistics.mean(p["accuracy"] for p in present), 4),
                "min": round(min(p["accuracy"] for p in present), 4),
                "max": round(max(p["accuracy"] for p in present), 4),
                "random": round(statistics.mean(p["random"] for p in present), 4),
                "seen": round(statistics.mean(p["seen"] for p in present)),
            }
        )
    ends = [curve[-1] for curve in curves]  # the whole stream replayed (the last retraining)
    table.append(
        {
            "decisions": f"end ({min(p['decisions'] for p in ends)}-{max(p['decisions'] for p in ends)})",
            "folds": len(ends),
            "accuracy": round(statistics.mean(p["accuracy"] for p in ends), 4),
            "min": round(min(p["accuracy"] for p in ends), 4),
            "max": round(max(p["accuracy"] for p in ends), 4),
            "random": round(statistics.mean(p["random"] for p in ends), 4),
            "seen": round(statistics.mean(p["seen"] for p in ends)),
        }
    )
    crossing = next((row["decisions"] for row in table if row["accuracy"] >= GOAL and row["folds"] == FOLDS), None)
    figures = {
        "rows": len(rows),
        "seed": args.seed,
        "initial_share": args.initial,
        "every": args.every,
        "threshold": MANUAL_DISPATCH_THRESHOLD,
        "curve": table,
        "per_fold": curves,
        "every_row_labelled": round(statistics.mean(full), 4),
        "crosses_goal_at": crossing,
        "seconds": round(seconds),
        "load": os.getloadavg(),
    }
    if args.json:
        json.dump(figures, sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"# Staff-label loop, simulated ({len(rows)} messages, data order as time, seed {args.seed})\n")
    print(f"First model on {args.initial:.0%} of the replayed rows; retrained every {args.every} staff decisions;")
    print(f"queued below {MANUAL_DISPATCH_THRESHOLD}. Accuracy on the untouched fold, mean (min-max), {FOLDS} folds.\n")
    print("| staff decisions | reports seen | folds | accuracy | min | max | same number, random reports |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in table:
        print(
            f"| {row['decisions']} | {row['seen']} | {row['folds']} | {row['accuracy']:.4f} | {row['min']:.4f} "
            f"| {row['max']:.4f} | {row['random']:.4f} |"
        )
    print(f"\nEvery replayed row labelled (reference): {figures['every_row_labelled']:.4f}.")
    print(f"Crosses {GOAL}: {'at ' + str(crossing) + ' decisions' if crossing is not None else 'never'}.")
    print(
        f"\n{seconds:.0f} s; load average {figures['load'][0]:.2f} {figures['load'][1]:.2f} {figures['load'][2]:.2f}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
