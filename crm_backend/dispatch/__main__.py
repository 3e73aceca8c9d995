"""The dispatch models' commands: ``python -m crm_backend.dispatch {train,evaluate,train-types}``.

``train [--data CSV] [--out PATH]`` trains on the bundled data (or CSV) and writes the model.
``evaluate FILE.csv [--model PATH]`` scores the model on labelled messages it has not seen
and prints one JSON object on stdout. Exit codes: 0 done, 1 the model cannot be used,
2 bad arguments or a CSV that cannot be used (the reason on stderr).
``train-types [--out PATH]`` trains the case-type recogniser on the bundled development letters
and seed sentences (``data/case_types/``) and writes it.
``retrain [--data CSV] [--model PATH]`` trains a candidate on the shipped data plus the staff
labels in the database (``DATABASE_URL``, and the data keys to read their texts), judges it
against the current version and promotes it only if it is not worse
(`crm_backend.services.model_versions.retrain`); prints one JSON object. The model at
``--model`` is registered as the first version when the database has none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from crm_backend.dispatch import case_type
from crm_backend.dispatch.classifier import (
    CATEGORIES,
    DEFAULT_MODEL_PATH,
    TRAINING_DATA_PATH,
    CategoryClassifier,
    DataError,
    LabelledMessage,
    ModelLoadError,
    read_labelled_csv,
)

EXIT_MODEL = 1
EXIT_DATA = 2


def train_and_save(data: Path, out: Path) -> CategoryClassifier:
    """Train on a labelled CSV and write the model.

    Raises:
        DataError: the CSV cannot be used.
    """
    classifier = CategoryClassifier.train(read_labelled_csv(data))
    classifier.save(out)
    return classifier


def scores(classifier: CategoryClassifier, rows: list[LabelledMessage]) -> dict[str, Any]:
    """Accuracy, macro F1 and per-category precision, recall, F1 and support.

    Macro F1 is the mean F1 over the categories present in `rows`; every category of
    `CATEGORIES` is listed in ``per_class`` (support 0 when absent).
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    truth = [row.label for row in rows]
    predicted = [prediction.category for prediction in classifier.predict_many([row.text for row in rows])]
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=list(CATEGORIES), zero_division=0
    )
    present = [i for i, n in enumerate(support) if n > 0]
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(sum(f1[i] for i in present) / len(present)), 4),
        "per_class": {
            name: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, name in enumerate(CATEGORIES)
        },
        "n": len(rows),
        "model_version": classifier.model_version,
    }


def _train(args: argparse.Namespace) -> int:
    try:
        classifier = train_and_save(args.data, args.out)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    print(f"wrote {args.out}")
    print(f"model version {classifier.model_version}")
    print(f"trained on {classifier.trained_rows} messages in {classifier.training_seconds:.1f} s")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    try:
        rows = read_labelled_csv(args.file)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    if not args.model.exists():
        print(
            f"no model at {args.model}: training it first from {TRAINING_DATA_PATH} "
            "(messages in that file are not unseen: do not evaluate on them)",
            file=sys.stderr,
        )
        try:
            train_and_save(TRAINING_DATA_PATH, args.model)
        except DataError as exc:
            print(f"error: cannot train: {exc}", file=sys.stderr)
            return EXIT_MODEL
    try:
        classifier = CategoryClassifier.load(args.model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    json.dump(scores(classifier, rows), sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _train_types(args: argparse.Namespace) -> int:
    try:
        recogniser = case_type.CaseTypeRecogniser.train(case_type.training_rows())
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    recogniser.save(args.out)
    print(f"model version {recogniser.model_version}")
    print(f"trained on {recogniser.trained_rows} examples in {recogniser.training_seconds:.1f} s")
    return 0


async def _retrain_in_database(
    shipped: list[LabelledMessage], bundled: CategoryClassifier, artifact: bytes
) -> dict[str, Any]:
    from crm_backend.db import create_engine, create_sessionmaker
    from crm_backend.services import model_versions
    from crm_backend.settings import database_url_from_env

    engine = create_engine(database_url_from_env())
    try:
        sessions = create_sessionmaker(engine)
        await model_versions.ensure_registered(sessions, bundled, artifact, decided_by=model_versions.RETRAIN_ACTOR)
        outcome = await model_versions.retrain(sessions, shipped)
    finally:
        await engine.dispose()
    if outcome is None:
        return {"candidate": None, "promoted": False, "reason": "no staff labels since the last version"}
    return outcome.as_dict()


def _retrain(args: argparse.Namespace) -> int:
    import asyncio

    try:
        from crm_backend.settings import category_model_path_from_env

        model: Path = args.model or category_model_path_from_env()
        shipped = read_labelled_csv(args.data)
        bundled = CategoryClassifier.load(model)
        result = asyncio.run(_retrain_in_database(shipped, bundled, model.read_bytes()))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m crm_backend.dispatch")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the case-category classifier and write it")
    train.add_argument("--data", type=Path, default=TRAINING_DATA_PATH, help="labelled CSV (text,label)")
    train.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH, help="where to write the model")
    evaluate = commands.add_parser("evaluate", help="score the model on a labelled CSV of unseen messages")
    evaluate.add_argument("file", type=Path, help="CSV with text and label columns")
    evaluate.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="the model to evaluate")
    types = commands.add_parser("train-types", help="train the case-type recogniser and write it")
    types.add_argument("--out", type=Path, default=case_type.DEFAULT_MODEL_PATH, help="where to write the model")
    retrain = commands.add_parser(
        "retrain", help="train a candidate on shipped data plus staff labels, behind the gate"
    )
    retrain.add_argument("--data", type=Path, default=TRAINING_DATA_PATH, help="the shipped labelled CSV")
    retrain.add_argument(
        "--model", type=Path, default=None, help="the bundled model, the first version (default: CATEGORY_MODEL_PATH)"
    )
    args = parser.parse_args(argv)
    if args.command == "retrain":
        return _retrain(args)
    if args.command == "train-types":
        return _train_types(args)
    return _train(args) if args.command == "train" else _evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
