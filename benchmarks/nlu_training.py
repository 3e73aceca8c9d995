"""What the engine's NLU costs to train, and what it is worth, for a few pipeline variants.

Run from the project root, after ``bin/setup``::

    .venv/bin/python -m benchmarks.nlu_training [--variants shipped,epochs40,...] [--full] \
        [--out results/nlu_training.json] > results/nlu_training.md

``nlu_data/nlu`` is split once, 80 % / 20 %, stratified by intent with Rasa's own splitter and
a fixed seed (``rasa data split nlu --random-seed 42``), so every variant learns from and is
scored on the same examples. For each variant the script writes ``config.yml`` with the
variant's changes, trains the NLU alone on the 80 % (``rasa train nlu``, empty Rasa cache, so
nothing is reused) and scores it on the held-out 20 % (``rasa test nlu``): intent accuracy and
macro-F1, entity micro-F1 (DIET's entities; the regexes and lookups are part of DIET's
features). The NLU training's wall time is what the variant costs on an idle machine; its CPU
time (user + system of the whole process tree) compares variants fairly when the machine is
shared. ``--full`` also times
one full ``rasa train --force`` (NLU and dialogue policies, all of ``nlu_data``) with
``config.yml`` as it is, which is what a fresh clone's ``bin/setup`` pays.

Figures from one split carry noise of about one example in a hundred and fifty per intent;
differences of a point or less between variants are not differences.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.run_benchmarks import find_report, log, log_tail, run_rasa, write_report
from tests.support.stack import ROOT

SPLIT_SEED = 42
TRAINING_FRACTION = 0.8
TIMEOUT_SECONDS = 3600

Pipeline = list[dict[str, Any]]


def timed_rasa(args: list[str], logfile: Path, cache_dir: Path) -> tuple[float, float, int]:
    """`run_rasa`, plus the CPU seconds (user + system) its process tree used.

    CPU time barely moves when other jobs share the machine; wall time does. On two idle
    cores, wall time is roughly the CPU time over the cores TensorFlow keeps busy.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, code = run_rasa(args, logfile, cache_dir, TIMEOUT_SECONDS)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, code


def _component(pipeline: Pipeline, name: str, index: int = 0) -> dict[str, Any]:
    return [step for step in pipeline if step["name"] == name][index]


def _diet(**options: Any) -> Callable[[Pipeline], None]:
    def change(pipeline: Pipeline) -> None:
        _component(pipeline, "DIETClassifier").update(options)

    return change


def _chars(low: int, high: int) -> Callable[[Pipeline], None]:
    def change(pipeline: Pipeline) -> None:
        _component(pipeline, "CountVectorsFeaturizer", 1).update(min_ngram=low, max_ngram=high)

    return change


def _both(*changes: Callable[[Pipeline], None]) -> Callable[[Pipeline], None]:
    def change(pipeline: Pipeline) -> None:
        for each in changes:
            each(pipeline)

    return change


# Variants: a name, what it changes, the change applied to config.yml's pipeline as it is.
VARIANTS: dict[str, tuple[str, Callable[[Pipeline], None]]] = {
    "shipped": ("config.yml as it is", lambda pipeline: None),
    "epochs80": ("DIET 80 epochs", _diet(epochs=80)),
    "epochs40": ("DIET 40 epochs", _diet(epochs=40)),
    "epochs30": ("DIET 30 epochs", _diet(epochs=30)),
    "chars12": ("characters 1-2 instead of 1-3", _chars(1, 2)),
    "chars12_epochs40": ("characters 1-2, DIET 40 epochs", _both(_chars(1, 2), _diet(epochs=40))),
    "one_layer_epochs40": (
        "DIET one transformer layer of 128, 40 epochs",
        _diet(epochs=40, number_of_transformer_layers=1, transformer_size=128),
    ),
    "no_transformer_epochs40": (
        "DIET without transformer layers, 40 epochs",
        _diet(epochs=40, number_of_transformer_layers=0),
    ),
}


def split_data(tmp: Path) -> tuple[Path, Path]:
    """The fixed 80/20 split of nlu_data/nlu (Rasa's splitter keeps every intent on both sides)."""
    out = tmp / "split"
    logfile = tmp / "split.log"
    command = ["data", "split", "nlu", "--nlu", "nlu_data/nlu", "--training-fraction", str(TRAINING_FRACTION)]
    command += ["--random-seed", str(SPLIT_SEED), "--out", str(out)]
    _, code = run_rasa(command, logfile, tmp / "split-cache", TIMEOUT_SECONDS)
    train, test = sorted(out.glob("training_data*")), sorted(out.glob("test_data*"))
    if code != 0 or not train or not test:
        raise SystemExit(f"rasa data split failed (exit {code}):\n{log_tail(logfile)}")
    return train[0], test[0]


def variant_config(tmp: Path, name: str) -> Path:
    config = yaml.safe_load((ROOT / "config.yml").read_text(encoding="utf-8"))
    config["pipeline"] = copy.deepcopy(config["pipeline"])
    VARIANTS[name][1](config["pipeline"])
    path = tmp / f"config-{name}.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def measure_variant(tmp: Path, name: str, train: Path, test: Path) -> dict[str, Any]:
    config = variant_config(tmp, name)
    models = tmp / f"models-{name}"
    log(f"{name}: training the NLU on the 80 %...")
    command = ["train", "nlu", "--nlu", str(train), "--config", str(config), "--out", str(models)]
    command += ["--fixed-model-name", name]
    seconds, cpu, code = timed_rasa(command, tmp / f"train-{name}.log", tmp / f"cache-{name}")
    result: dict[str, Any] = {
        "changes": VARIANTS[name][0],
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu, 1),
    }
    if code != 0:
        result["error"] = f"rasa train nlu failed (exit {code}):\n{log_tail(tmp / f'train-{name}.log')}"
        return result
    log(f"{name}: trained in {seconds:.0f} s; scoring the held-out 20 %...")
    results_dir = tmp / f"results-{name}"
    command = ["test", "nlu", "--nlu", str(test), "--model", str(models / f"{name}.tar.gz"), "--out", str(results_dir)]
    _, code = run_rasa(command, tmp / f"test-{name}.log", tmp / f"cache-{name}", TIMEOUT_SECONDS)
    intent_path = find_report(results_dir, "intent_report.json")
    if code != 0 or intent_path is None:
        result["error"] = f"rasa test nlu failed (exit {code}):\n{log_tail(tmp / f'test-{name}.log')}"
        return result
    intents = json.loads(intent_path.read_text())
    result.update(
        examples=intents["macro avg"]["support"],
        intent_accuracy=round(intents["accuracy"], 4),
        intent_macro_f1=round(intents["macro avg"]["f1-score"], 4),
    )
    entity_path = find_report(results_dir, "DIETClassifier_report.json")
    if entity_path is not None:
        entities = json.loads(entity_path.read_text())
        result["entity_micro_f1"] = round(entities["micro avg"]["f1-score"], 4)
        result["entity_examples"] = entities["micro avg"]["support"]
        result["entities"] = {
            label: round(row["f1-score"], 4)
            for label, row in sorted(entities.items())
            if isinstance(row, dict) and not label.endswith(" avg") and label != "accuracy"
        }
    return result


def time_full_training(tmp: Path) -> dict[str, Any]:
    log("full rasa train --force with config.yml...")
    command = ["train", "--data", "nlu_data", "--config", "config.yml", "--domain", "domain.yml"]
    command += ["--out", str(tmp / "full"), "--fixed-model-name", "full", "--force"]
    seconds, cpu, code = timed_rasa(command, tmp / "full.log", tmp / "full-cache")
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "exit_code": code}


def render(results: dict[str, Any]) -> str:
    lines = [
        f"NLU split: {results['train_examples']} training / {results['test_examples']} held-out examples "
        f"(seed {SPLIT_SEED})",
        "",
        "| variant | changes | NLU training wall s | CPU s | intent accuracy | intent macro-F1 | entity micro-F1 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["variants"].items():
        if "error" in row:
            lines.append(f"| {name} | {row['changes']} | failed | | | | |")
            continue
        lines.append(
            f"| {name} | {row['changes']} | {row['train_seconds']:.0f} | {row['train_cpu_seconds']:.0f} | "
            f"{row['intent_accuracy']:.3f} | "
            f"{row['intent_macro_f1']:.3f} | {row.get('entity_micro_f1', 0):.3f} |"
        )
    lines.append("")
    for name, row in results["variants"].items():
        if "entities" in row:
            per_entity = ", ".join(f"{label} {f1:.3f}" for label, f1 in row["entities"].items())
            lines.append(f"{name} entities: {per_entity}")
    if "full_training" in results:
        full = results["full_training"]
        lines += [
            "",
            f"full rasa train --force (config.yml, all data): {full['seconds']:.0f} s, exit {full['exit_code']}",
        ]
    return "\n".join(lines)


def count_examples(path: Path) -> int:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return sum(
        len([line for line in str(block.get("examples", "")).splitlines() if line.strip().startswith("-")])
        for block in data.get("nlu", [])
        if "intent" in block
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="shipped", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--full", action="store_true", help="also time one full rasa train --force")
    parser.add_argument("--out", type=Path, default=Path("results/nlu_training.json"))
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    if unknown := [name for name in names if name not in VARIANTS]:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="nlu-training-") as tmp_name:
        tmp = Path(tmp_name)
        train, test = split_data(tmp)
        results: dict[str, Any] = {
            "train_examples": count_examples(train),
            "test_examples": count_examples(test),
            "variants": {},
        }
        for name in names:
            results["variants"][name] = measure_variant(tmp, name, train, test)
            log(json.dumps({name: {k: v for k, v in results["variants"][name].items() if k != "entities"}}))
        if args.full:
            results["full_training"] = time_full_training(tmp)
    write_report(results, args.out, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
