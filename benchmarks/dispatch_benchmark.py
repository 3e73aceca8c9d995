"""Benchmark of the case-category classifier: cross-validated quality, calibration, threshold, speed.

Run from the project root::

    .venv/bin/python -m benchmarks.dispatch_benchmark [--out-dir results] > results/dispatch_benchmark.md

It prints a Markdown report on stdout, progress on stderr, and writes
``dispatch_benchmark.json`` and the PNGs (confusion matrices, calibration and coverage curves)
into ``--out-dir``. About two minutes on 2 cores. What each figure means:

1. **Cross-validation.** ``StratifiedGroupKFold`` (5 folds), run twice with two shuffle seeds.
   Near-duplicate messages (the same complaint posted twice: character-trigram TF-IDF cosine
   ≥ 0.8, linked transitively) form one group and always fall in the same fold, so no
   message is scored by a model trained on its twin. In every fold the chosen model
   (``crm_backend.dispatch.classifier.build_pipeline``, calibration included, fitted on the
   training folds only) and the baseline (character 1-3-gram TF-IDF + ``LinearSVC`` on the raw
   text) are trained on the same rows and scored on the same held-out rows. Accuracy and
   macro F1 are mean ± standard deviation over the folds; per-category F1 is the mean over
   all ten folds; the confusion matrices pool the held-out predictions of the first seed.
   The seeds are not the ones used while choosing the model (0, 1, 2).
2. **Calibration.** Log loss, Brier score (multi-class, summed over categories) and expected
   calibration error (10 equal-width confidence bins) of the held-out probabilities of both
   seeds, and a reliability diagram.
3. **Manual dispatch threshold.** For each threshold, the share of held-out cases whose top
   probability is below it (queued for a person) and the accuracy of the rest. The rule: the
   lowest threshold on a 0.01 grid at which the kept cases are at least 97 % right.
4. **Final model.** Trained on every row: training time (wall clock), artifact size, and the
   latency of ``CategoryClassifier.predict`` per message (one call per text, every text of the
   CSV, after one warm-up call) as p50 / p95 / max.

5. **Variants** (``--variants NAMES`` or ``all``; ``--variants-only`` skips 1-4). Each variant
   of `VARIANTS` (the shipped hyper-parameters, LAC's pretrained views in several
   weightings, LAC's states alone, WordLlama's shipped token vectors) is cross-validated on the
   same folds and seeds as 1., with the paired difference to the shipped model fold by fold.
   LAC is run once per message and kept in memory for the whole comparison
   (``lac_view.keep_analyses``), and so are jieba's words during the cross-validation. Then each
   is trained on every row and measured: training time (the fit, plus LAC's time on every row,
   measured once, for a variant with a LAC view), artifact size, ``predict`` latency on every
   fifth message (one call each, nothing kept), and the resident memory (VmRSS) of a fresh
   process that has loaded the artifact and classified 50 messages. A variant "beats" the shipped model when
   both its paired gains are above twice their standard error over the 10 folds.

Timings depend on the machine's load (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib import font_manager
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

from crm_backend.dispatch import classifier as classifier_module
from crm_backend.dispatch import lac_view
from crm_backend.dispatch.classifier import (
    CATEGORIES,
    HYPERPARAMETERS,
    MANUAL_DISPATCH_THRESHOLD,
    TRAINING_DATA_PATH,
    CategoryClassifier,
    build_pipeline,
    model_version,
    normalise_all,
    read_labelled_csv,
)
from crm_backend.dispatch.folds import duplicate_groups, grouped_folds

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (11, 12)
TARGET_KEPT_ACCURACY = 0.97
TABLE_THRESHOLDS = [round(0.3 + 0.05 * i, 2) for i in range(13)]
GOAL_ACCURACY, GOAL_MACRO_F1 = 0.92, 0.91
CJK_FONT = "WenQuanYi Zen Hei"
ENGLISH_CODES = {
    "城乡建设": "URBAN",
    "环境保护": "ENVIRON",
    "交通运输": "TRANSPORT",
    "教育文体": "EDU-CULT",
    "劳动和社会保障": "LABOUR",
    "商贸旅游": "TRADE",
    "卫生计生": "HEALTH",
}
MODELS = ("chosen", "baseline")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def baseline_pipeline() -> Pipeline:
    """The reference: character 1-3-gram TF-IDF and a linear SVM, on the raw text."""
    return make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 3)), LinearSVC(random_state=0))


def cross_validate(texts: list[str], labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """Both models on the same folds, for every seed: per-fold scores and held-out predictions."""
    x = np.array(texts, dtype=object)
    result: dict[str, Any] = {model: {"folds": [], "predicted": {}, "per_class_f1": []} for model in MODELS}
    result["chosen"]["probabilities"] = {}
    for seed in SEEDS:
        predicted = {model: np.empty(len(labels), dtype=object) for model in MODELS}
        probabilities = np.zeros((len(labels), len(CATEGORIES)))
        for fold, (train, test) in enumerate(grouped_folds(texts, list(labels), seed, groups=groups)):
            for model in MODELS:
                started = time.perf_counter()
                pipeline = build_pipeline() if model == "chosen" else baseline_pipeline()
                pipeline.fit(list(x[train]), labels[train])
                if model == "chosen":
                    proba = pipeline.predict_proba(list(x[test]))
                    order = [list(pipeline.classes_).index(name) for name in CATEGORIES]
                    probabilities[test] = proba[:, order]
                    guess = np.array(CATEGORIES, dtype=object)[probabilities[test].argmax(axis=1)]
                else:
                    guess = pipeline.predict(list(x[test]))
                predicted[model][test] = guess
                accuracy = float(accuracy_score(labels[test], guess))
                macro = float(f1_score(labels[test], guess, average="macro"))
                per_class = f1_score(labels[test], guess, labels=list(CATEGORIES), average=None)
                result[model]["folds"].append({"seed": seed, "fold": fold, "accuracy": accuracy, "macro_f1": macro})
                result[model]["per_class_f1"].append([float(v) for v in per_class])
                log(
                    f"seed {seed} fold {fold} {model:8s} accuracy {accuracy:.4f} macro-F1 {macro:.4f} "
                    f"({time.perf_counter() - started:.1f} s)"
                )
        for model in MODELS:
            result[model]["predicted"][seed] = predicted[model]
        result["chosen"]["probabilities"][seed] = probabilities
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarise(cv: dict[str, Any]) -> dict[str, Any]:
    """Mean ± std per model and seed, and over all folds."""
    summary: dict[str, Any] = {}
    for model in MODELS:
        folds = cv[model]["folds"]
        entry: dict[str, Any] = {}
        for key, chosen_folds in [
            *((f"seed {s}", [f for f in folds if f["seed"] == s]) for s in SEEDS),
            ("all", folds),
        ]:
            acc = mean_std([f["accuracy"] for f in chosen_folds])
            f1 = mean_std([f["macro_f1"] for f in chosen_folds])
            entry[key] = {
                "accuracy_mean": acc[0],
                "accuracy_std": acc[1],
                "macro_f1_mean": f1[0],
                "macro_f1_std": f1[1],
            }
        per_class = np.mean(np.array(cv[model]["per_class_f1"]), axis=0)
        entry["per_class_f1"] = {name: float(v) for name, v in zip(CATEGORIES, per_class, strict=True)}
        summary[model] = entry
    return summary


def calibration_figures(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Log loss, Brier score, ECE and the reliability bins of held-out probabilities."""
    index = np.array([CATEGORIES.index(label) for label in truth])
    onehot = np.eye(len(CATEGORIES))[index]
    clipped = np.clip(probabilities[np.arange(len(index)), index], 1e-15, 1.0)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == index
    edges = np.linspace(0.0, 1.0, 11)
    bins = []
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
            ece += gap * float(inside.mean())
            bins.append(
                {
                    "low": float(low),
                    "high": float(high),
                    "n": int(inside.sum()),
                    "mean_confidence": float(confidence[inside].mean()),
                    "accuracy": float(correct[inside].mean()),
                }
            )
    return {
        "log_loss": float(-np.mean(np.log(clipped))),
        "brier": float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1))),
        "ece": ece,
        "bins": bins,
    }


def threshold_figures(probabilities: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    """Share queued (top probability below `threshold`) and accuracy of the cases kept."""
    confidence = probabilities.max(axis=1)
    correct = np.array(CATEGORIES, dtype=object)[probabilities.argmax(axis=1)] == truth
    kept = confidence >= threshold
    return {
        "threshold": threshold,
        "share_queued": float(1.0 - kept.mean()),
        "accuracy_not_queued": float(correct[kept].mean()) if kept.any() else float("nan"),
        "n_not_queued": int(kept.sum()),
    }


def choose_threshold(probabilities: np.ndarray, truth: np.ndarray) -> dict[str, float] | None:
    """The lowest threshold on a 0.01 grid whose kept cases are at least 97 % right."""
    for step in range(30, 100):
        figures = threshold_figures(probabilities, truth, step / 100)
        if figures["accuracy_not_queued"] >= TARGET_KEPT_ACCURACY:
            return figures
    return None


def category_names() -> tuple[list[str], bool]:
    """Chinese names with a CJK font when one is installed, else English codes."""
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # "weight normal … using 500"
    try:
        path = font_manager.findfont(font_manager.FontProperties(family=CJK_FONT), fallback_to_default=False)
    except ValueError:
        return [ENGLISH_CODES[name] for name in CATEGORIES], False
    font_manager.fontManager.addfont(path)
    plt.rcParams["font.family"] = [font_manager.FontProperties(fname=path).get_name(), "DejaVu Sans"]
    return list(CATEGORIES), True


def plot_confusion(matrix: np.ndarray, title: str, names: list[str], path: Path) -> None:
    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(names)), names, rotation=40, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            axes.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color, fontsize=9)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_calibration(calibration: dict[str, Any], curve: list[dict[str, float]], chosen: float, path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    bins = calibration["bins"]
    left.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    left.plot([b["mean_confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label="chosen model")
    left.set_xlabel("confidence (top probability)")
    left.set_ylabel("accuracy")
    left.set_title(f"Reliability (held-out), ECE {calibration['ece']:.3f}")
    left.legend()
    right.plot([c["share_queued"] for c in curve], [c["accuracy_not_queued"] for c in curve], marker=".")
    mark = next(c for c in curve if abs(c["threshold"] - chosen) < 1e-9)
    right.scatter([mark["share_queued"]], [mark["accuracy_not_queued"]], color="red", zorder=3)
    right.annotate(
        f"threshold {chosen:.2f}",
        (mark["share_queued"], mark["accuracy_not_queued"]),
        xytext=(8, -12),
        textcoords="offset points",
    )
    right.axhline(TARGET_KEPT_ACCURACY, linestyle="--", color="grey")
    right.set_xlabel("share queued for manual dispatch")
    right.set_ylabel("accuracy of cases not queued")
    right.set_title("Coverage – accuracy (threshold 0.30 … 0.99)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def final_model(texts: list[str], rows: list[Any]) -> dict[str, Any]:
    """Train on every row, then time `predict` on every text."""
    started = time.perf_counter()
    classifier = CategoryClassifier.train(rows)
    wall = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as directory:
        size = classifier.save(Path(directory) / "model.joblib").stat().st_size
    return {
        "model_version": classifier.model_version,
        "training_seconds": wall,
        "artifact_bytes": size,
        **prediction_latencies(classifier, texts),
        "load_average": os.getloadavg()[0],
    }


def prediction_latencies(classifier: CategoryClassifier, texts: list[str]) -> dict[str, float]:
    """`predict` timed on each text, one at a time, after one call not counted (ms)."""
    classifier.predict(texts[0])
    latencies = []
    for text in texts:
        began = time.perf_counter()
        classifier.predict(text)
        latencies.append((time.perf_counter() - began) * 1000)
    latencies.sort()
    return {
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p95": latencies[int(0.95 * (len(latencies) - 1))],
        "latency_ms_max": latencies[-1],
        "latency_n": len(latencies),
    }


def pm(entry: dict[str, float], key: str) -> str:
    return f"{entry[key + '_mean']:.4f} ± {entry[key + '_std']:.4f}"


def report(figures: dict[str, Any]) -> str:
    """The Markdown report."""
    s = figures["summary"]
    lines: list[str] = []
    out = lines.append
    out("## Case-category classifier (5-fold cross-validation, near-duplicates grouped)")
    out("")
    out(
        f"{figures['n_rows']} messages, {figures['n_groups']} groups ({figures['n_grouped_rows']} rows in "
        f"{figures['n_multi_groups']} near-duplicate groups); StratifiedGroupKFold, seeds {', '.join(map(str, SEEDS))}."
    )
    out("")
    out("| model | seed | accuracy (mean ± std) | macro F1 (mean ± std) |")
    out("| --- | --- | --- | --- |")
    for model, name in (
        ("chosen", "chosen: chars + title + jieba words, calibrated SVM"),
        ("baseline", "baseline: char 1-3 TF-IDF + LinearSVC"),
    ):
        for key in [*(f"seed {seed}" for seed in SEEDS), "all"]:
            label = "both (10 folds)" if key == "all" else key.removeprefix("seed ")
            out(f"| {name} | {label} | {pm(s[model][key], 'accuracy')} | {pm(s[model][key], 'macro_f1')} |")
    out("")
    chosen_all = s["chosen"]["all"]
    met = chosen_all["accuracy_mean"] >= GOAL_ACCURACY and chosen_all["macro_f1_mean"] >= GOAL_MACRO_F1
    out(
        f"Goal accuracy ≥ {GOAL_ACCURACY} and macro F1 ≥ {GOAL_MACRO_F1}: **{'met' if met else 'not met'}** "
        f"(accuracy {chosen_all['accuracy_mean']:.4f}, macro F1 {chosen_all['macro_f1_mean']:.4f}; "
        f"baseline {s['baseline']['all']['accuracy_mean']:.4f} / {s['baseline']['all']['macro_f1_mean']:.4f})."
    )
    out("")
    out("Per-category F1 (mean over the 10 folds):")
    out("")
    out("| category | support | chosen | baseline |")
    out("| --- | --- | --- | --- |")
    for name in CATEGORIES:
        out(
            f"| {name} | {figures['support'][name]} | {s['chosen']['per_class_f1'][name]:.4f} | "
            f"{s['baseline']['per_class_f1'][name]:.4f} |"
        )
    out("")
    out(f"Confusion matrices (held-out, seed {SEEDS[0]}): {', '.join(figures['pngs'][:2])}.")
    out("")
    cal = figures["calibration"]
    out("### Calibration (held-out probabilities, both seeds)")
    out("")
    out(f"Log loss {cal['log_loss']:.4f}, Brier {cal['brier']:.4f}, expected calibration error {cal['ece']:.4f}.")
    out("")
    out("| confidence | n | mean confidence | accuracy |")
    out("| --- | --- | --- | --- |")
    for b in cal["bins"]:
        out(f"| {b['low']:.1f}–{b['high']:.1f} | {b['n']} | {b['mean_confidence']:.3f} | {b['accuracy']:.3f} |")
    out("")
    out("### Manual dispatch threshold")
    out("")
    out("| threshold | share queued | accuracy of not queued |")
    out("| --- | --- | --- |")
    for row in figures["threshold_table"]:
        out(f"| {row['threshold']:.2f} | {row['share_queued']:.1%} | {row['accuracy_not_queued']:.2%} |")
    out("")
    rule = figures["threshold_rule"]
    at_constant = figures["at_constant"]
    if rule is None:
        out(f"No threshold up to 0.99 keeps {TARGET_KEPT_ACCURACY:.0%} accuracy.")
    else:
        out(
            f"Rule (lowest threshold, 0.01 grid, with accuracy of not-queued ≥ {TARGET_KEPT_ACCURACY:.0%}): "
            f"**{rule['threshold']:.2f}** → {rule['share_queued']:.1%} queued, {rule['accuracy_not_queued']:.2%} "
            f"right among the rest."
        )
    out(
        f"`MANUAL_DISPATCH_THRESHOLD` = {MANUAL_DISPATCH_THRESHOLD}: {at_constant['share_queued']:.1%} queued, "
        f"{at_constant['accuracy_not_queued']:.2%} right among the rest "
        + ", ".join(
            f"(seed {seed}: {f['share_queued']:.1%} / {f['accuracy_not_queued']:.2%})"
            for seed, f in figures["at_constant_by_seed"].items()
        )
        + f". Curves: {figures['pngs'][2]}."
    )
    out("")
    final = figures["final"]
    out("### Final model (all rows)")
    out("")
    out("| figure | value |")
    out("| --- | --- |")
    out(f"| model version | `{final['model_version']}` |")
    out(f"| training time | {final['training_seconds']:.1f} s |")
    out(f"| artifact size | {final['artifact_bytes'] / 1e6:.1f} MB |")
    out(
        f"| `predict` latency per message (n = {final['latency_n']}) | p50 {final['latency_ms_p50']:.1f} ms, "
        f"p95 {final['latency_ms_p95']:.1f} ms, max {final['latency_ms_max']:.1f} ms |"
    )
    out(f"| machine | {figures['machine']}, load average {final['load_average']:.2f} |")
    return "\n".join(lines)


# --- Variants -----------------------------------------------------------------

# Hyper-parameters added to the shipped ones (`HYPERPARAMETERS`); see crm_backend/dispatch/lac_view.py.
VARIANT_PARAMS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "lac_states": {"lac_states_weight": 1.0},
    "lac_states_w0.5": {"lac_states_weight": 0.5},
    "lac_states_w2": {"lac_states_weight": 2.0},
    "lac_states_both_layers": {"lac_states_weight": 1.0, "lac_layers": "both"},
    "lac_states_512_chars": {"lac_states_weight": 1.0, "lac_max_chars": 512},
    "lac_tags_ner": {"lac_tags_weight": 1.0, "lac_tags": "ner"},
    "lac_tags_all": {"lac_tags_weight": 1.0, "lac_tags": "all"},
    "lac_tags_all_w0.5": {"lac_tags_weight": 0.5, "lac_tags": "all"},
    "lac_states_and_tags": {"lac_states_weight": 1.0, "lac_tags_weight": 1.0, "lac_tags": "all"},
    "lac_words": {"lac_words_weight": 1.0, "lac_words": "all"},
    "lac_entity_words": {"lac_words_weight": 1.0, "lac_words": "entities"},
}
VARIANT_NOTES = {
    "shipped": "the shipped model (chars + title + jieba words)",
    "lac_states": "+ LAC BiGRU top layer, mean and max (512), weight 1",
    "lac_states_w0.5": "+ LAC states, weight 0.5",
    "lac_states_w2": "+ LAC states, weight 2",
    "lac_states_both_layers": "+ LAC states of both layers (1,024), weight 1",
    "lac_states_512_chars": "+ LAC states over the first 512 characters (256 elsewhere)",
    "lac_tags_ner": "+ LAC PER/LOC/ORG/TIME counts, weight 1",
    "lac_tags_all": "+ LAC counts of all 24 labels (POS too), weight 1",
    "lac_tags_all_w0.5": "+ LAC counts of all labels, weight 0.5",
    "lac_states_and_tags": "+ LAC states and all label counts, weight 1 each",
    "lac_words": "+ TF-IDF of LAC's words (first 256 characters), weight 1",
    "lac_entity_words": "+ TF-IDF of LAC's person/place/organisation/time words, weight 1",
    "lac_states_alone": "LAC states only (no TF-IDF), calibrated LinearSVC",
    "wordllama": "+ WordLlama l2_supercat token vectors (mean, 256), weight 1",
}
LATENCY_EVERY = 5
RSS_MESSAGES = 50


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@functools.cache
def _wordllama_table(directory: str) -> tuple[dict[str, int], np.ndarray]:
    """WordLlama's shipped Llama-2 vocabulary and its 32,000 × 256 token vectors (safetensors, fp16)."""
    root = Path(directory)
    vocabulary = json.loads((root / "tokenizers" / "l2_supercat_tokenizer_config.json").read_text())["model"]["vocab"]
    raw = (root / "weights" / "l2_supercat_256.safetensors").read_bytes()
    header_size = int.from_bytes(raw[:8], "little")
    entry = json.loads(raw[8 : 8 + header_size])["embedding.weight"]
    start, end = entry["data_offsets"]
    table = np.frombuffer(raw[8 + header_size + start : 8 + header_size + end], dtype=np.float16)
    return vocabulary, table.reshape(entry["shape"]).astype(np.float32)


class WordLlamaVectors(lac_view.StandardisedView):
    """The mean of WordLlama's token vectors over a text's characters, standardised like `lac_view.LacView`.

    Llama-2's tokenizer (SentencePiece BPE with byte fallback) keeps a CJK character as one
    token when it has one (700 do) and as its UTF-8 byte tokens otherwise; each character is
    looked up the same way here (Latin letters one by one, where the tokenizer would merge them).
    """

    def __init__(self, directory: str = "") -> None:
        self.directory = directory

    def _raw(self, texts: Sequence[str]) -> np.ndarray:
        vocabulary, table = _wordllama_table(self.directory)
        rows = []
        for text in texts:
            ids: list[int] = []
            for char in text[:1000]:
                index = vocabulary.get(char, vocabulary.get("▁" + char))
                if index is None:
                    ids.extend(vocabulary[f"<0x{byte:02X}>"] for byte in char.encode("utf-8"))
                else:
                    ids.append(index)
            rows.append(table[ids].mean(axis=0) if ids else np.zeros(table.shape[1], dtype=np.float32))
        return np.array(rows, dtype=np.float64)


def variant_builders(wordllama_dir: Path | None) -> dict[str, Callable[[], Pipeline]]:
    """Every variant's untrained pipeline (WordLlama only when its package directory is given)."""
    builders: dict[str, Callable[[], Pipeline]] = {
        name: functools.partial(build_pipeline, {**HYPERPARAMETERS, **extra}) for name, extra in VARIANT_PARAMS.items()
    }

    def states_alone() -> Pipeline:
        svm = LinearSVC(C=1.0, class_weight="balanced", random_state=0)
        return Pipeline(
            [
                ("normalise", FunctionTransformer(normalise_all)),
                ("lac_states", lac_view.LacView("states")),
                ("svm", CalibratedClassifierCV(svm, cv=5, method="sigmoid", ensemble=False)),
            ]
        )

    builders["lac_states_alone"] = states_alone
    if wordllama_dir is not None:
        # By its module's name, not __main__'s, so that the measuring process can unpickle it.
        from benchmarks.dispatch_benchmark import WordLlamaVectors as vectors

        def with_wordllama() -> Pipeline:
            pipeline = build_pipeline()
            union = pipeline.named_steps["features"]
            union.transformer_list.append(("wordllama", vectors(str(wordllama_dir))))
            return pipeline

        builders["wordllama"] = with_wordllama
    return builders


@contextlib.contextmanager
def _segmentation_kept() -> Iterator[None]:
    """Within the block, jieba segments each text once (half of a fold's time), for every variant alike."""
    original = classifier_module.search_words
    kept: dict[str, list[str]] = {}

    def search_words(text: str) -> list[str]:
        if text not in kept:
            kept[text] = original(text)
        return list(kept[text])

    classifier_module.search_words = search_words
    try:
        yield
    finally:
        classifier_module.search_words = original


def _paired(folds: list[dict[str, Any]], reference: list[dict[str, Any]], key: str) -> dict[str, float]:
    differences = [f[key] - r[key] for f, r in zip(folds, reference, strict=True)]
    mean, sd = float(np.mean(differences)), float(np.std(differences, ddof=1))
    return {"mean": mean, "sd": sd, "se": sd / math.sqrt(len(differences))}


def variant_cross_validation(
    texts: list[str], labels: np.ndarray, groups: np.ndarray, builders: dict[str, Callable[[], Pipeline]]
) -> dict[str, Any]:
    """Every variant on the folds of `cross_validate`: per-fold scores, fit times, pooled probabilities."""
    x = np.array(texts, dtype=object)
    result: dict[str, Any] = {name: {"folds": [], "fit_seconds": [], "probabilities": []} for name in builders}
    for seed in SEEDS:
        probabilities = {name: np.zeros((len(labels), len(CATEGORIES))) for name in builders}
        for fold, (train, test) in enumerate(grouped_folds(texts, list(labels), seed, groups=groups)):
            for name, build in builders.items():
                started = time.perf_counter()
                pipeline = build()
                pipeline.fit(list(x[train]), labels[train])
                fitted = time.perf_counter() - started
                order = [list(pipeline.classes_).index(category) for category in CATEGORIES]
                probabilities[name][test] = pipeline.predict_proba(list(x[test]))[:, order]
                guess = np.array(CATEGORIES, dtype=object)[probabilities[name][test].argmax(axis=1)]
                accuracy = float(accuracy_score(labels[test], guess))
                macro = float(f1_score(labels[test], guess, average="macro"))
                result[name]["folds"].append({"seed": seed, "fold": fold, "accuracy": accuracy, "macro_f1": macro})
                result[name]["fit_seconds"].append(fitted)
                log(f"seed {seed} fold {fold} {name:24s} accuracy {accuracy:.4f} macro-F1 {macro:.4f} ({fitted:.1f} s)")
        for name in builders:
            result[name]["probabilities"].append(probabilities[name])
    return result


def _rss_of_loaded_model(path: Path, texts: list[str]) -> dict[str, float]:
    """VmRSS and VmHWM of a fresh process that loaded the artifact and classified `RSS_MESSAGES` texts."""
    script = (
        "import json, sys\n"
        "from benchmarks.dispatch_benchmark import _status_mb\n"
        "from crm_backend.dispatch.classifier import CategoryClassifier\n"
        "before = _status_mb('VmRSS')\n"
        "classifier = CategoryClassifier.load(sys.argv[1])\n"
        "for text in json.load(sys.stdin):\n"
        "    classifier.predict(text)\n"
        "print(json.dumps({'rss_mb': _status_mb('VmRSS'), 'peak_mb': _status_mb('VmHWM'), 'before_mb': before}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        input=json.dumps(texts[:RSS_MESSAGES], ensure_ascii=False),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def variant_final(
    name: str,
    build: Callable[[], Pipeline],
    rows: list[Any],
    texts: list[str],
    lac: tuple[dict[tuple[str, int], Any], float],
    keep_dir: Path | None = None,
) -> dict[str, Any]:
    """Train one variant on every row, then time and weigh it.

    jieba is not kept from the cross-validation; LAC's analyses are (`lac`: the kept analyses
    and the seconds LAC took for all rows), and the training time of a variant with a LAC
    view is its fit plus those seconds. With `keep_dir` the artifact is also written there as
    ``<name>.joblib`` (for ``CATEGORY_MODEL_PATH=… python -m benchmarks.memory_benchmark``).
    """
    kept, lac_seconds = lac
    started = time.perf_counter()
    pipeline = build()
    with lac_view.keep_analyses(kept):
        pipeline.fit([row.text for row in rows], [row.label for row in rows])
    wall = time.perf_counter() - started
    uses_lac = any(
        isinstance(step, lac_view.LacView) or getattr(step, "func", None) is lac_view.word_lists
        for step in _steps(pipeline)
    )
    wall += lac_seconds if uses_lac else 0.0
    classifier = CategoryClassifier(pipeline, f"{name}-{model_version(rows)}", training_seconds=wall)
    latencies = prediction_latencies(classifier, texts[::LATENCY_EVERY])
    with tempfile.TemporaryDirectory() as directory:
        path = classifier.save(Path(directory) / "model.joblib")
        memory = _rss_of_loaded_model(path, texts)
        size = path.stat().st_size
        if keep_dir is not None:
            classifier.save(keep_dir / f"{name}.joblib")
    return {
        "training_seconds": wall,
        "artifact_bytes": size,
        **latencies,
        **memory,
        "load_average": os.getloadavg()[0],
    }


def _steps(estimator: Any) -> Iterator[Any]:
    """Every estimator inside a pipeline or feature union, the estimator itself included."""
    yield estimator
    for _, inner in getattr(estimator, "steps", []) + getattr(estimator, "transformer_list", []):
        yield from _steps(inner)


def compare_variants(
    rows: list[Any],
    labels: np.ndarray,
    groups: np.ndarray,
    names: list[str],
    wordllama_dir: Path | None,
    keep_dir: Path | None = None,
) -> dict[str, Any]:
    """Cross-validate and measure the chosen variants; "shipped" is always among them (the reference)."""
    texts = [row.text for row in rows]
    builders = variant_builders(wordllama_dir)
    unknown = set(names) - set(builders)
    if unknown:
        raise SystemExit(f"unknown variants (or WordLlama without --wordllama-dir): {sorted(unknown)}")
    chosen = {name: builders[name] for name in dict.fromkeys(["shipped", *names])}
    figures: dict[str, Any] = {"variants": {}, "load_average_start": os.getloadavg()}
    kept: dict[tuple[str, int], Any] = {}
    with lac_view.keep_analyses(kept), _segmentation_kept():
        normalised = normalise_all(texts)
        for max_chars in sorted({int(VARIANT_PARAMS.get(n, {}).get("lac_max_chars", 256)) for n in chosen}):
            if any(n.startswith("lac") for n in chosen):
                started = time.perf_counter()
                lac_view.analyse(normalised, max_chars)
                seconds = figures[f"lac_analysis_seconds_{max_chars}"] = time.perf_counter() - started
                log(f"LAC analysis of {len(texts)} messages ({max_chars} characters): {seconds:.1f} s")
        started = time.perf_counter()
        cv = variant_cross_validation(texts, labels, groups, chosen)
        figures["cv_seconds"] = time.perf_counter() - started
    truth = np.concatenate([labels for _ in SEEDS])
    reference = cv["shipped"]["folds"]
    for name in chosen:
        folds = cv[name]["folds"]
        pooled = np.vstack(cv[name]["probabilities"])
        entry: dict[str, Any] = {
            "note": VARIANT_NOTES[name],
            "params": VARIANT_PARAMS.get(name),
            "accuracy": mean_std([f["accuracy"] for f in folds]),
            "macro_f1": mean_std([f["macro_f1"] for f in folds]),
            "fit_seconds_per_fold": float(np.mean(cv[name]["fit_seconds"])),
            "folds": folds,
            "threshold_rule": choose_threshold(pooled, truth),
            "calibration": {k: v for k, v in calibration_figures(pooled, truth).items() if k != "bins"},
        }
        if name != "shipped":
            entry["paired_accuracy"] = _paired(folds, reference, "accuracy")
            entry["paired_macro_f1"] = _paired(folds, reference, "macro_f1")
            entry["beats_shipped"] = all(
                entry[key]["mean"] > 2 * entry[key]["se"] for key in ("paired_accuracy", "paired_macro_f1")
            )
        log(f"training {name} on every row")
        max_chars = int(VARIANT_PARAMS.get(name, {}).get("lac_max_chars", lac_view.DEFAULT_MAX_CHARS))
        lac = (kept, figures.get(f"lac_analysis_seconds_{max_chars}", 0.0))
        entry["final"] = variant_final(name, chosen[name], rows, texts, lac, keep_dir)
        figures["variants"][name] = entry
    figures["load_average_end"] = os.getloadavg()
    return figures


def variants_report(figures: dict[str, Any]) -> str:
    """The variants' Markdown table."""
    lines = [
        "## Variants (same folds and seeds; paired difference to the shipped model over the 10 folds)",
        "",
        "| variant | accuracy | macro F1 | Δ accuracy (paired) | Δ macro F1 (paired) | beats shipped | "
        "fit s/fold | train s (all rows) | predict p50 / p95 ms | artifact MB | RSS MB loaded (Δ) | "
        "rule threshold (queued) | log loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    shipped_rss = figures["variants"]["shipped"]["final"]["rss_mb"]
    for name, v in figures["variants"].items():
        final = v["final"]
        rule = v["threshold_rule"]
        if name == "shipped":
            paired = ("", "", "")
        else:
            pa, pf = v["paired_accuracy"], v["paired_macro_f1"]
            paired = (
                f"{pa['mean']:+.4f} ± {pa['sd']:.4f}",
                f"{pf['mean']:+.4f} ± {pf['sd']:.4f}",
                "yes" if v["beats_shipped"] else "no",
            )
        lines.append(
            f"| {name}: {v['note']} | {v['accuracy'][0]:.4f} ± {v['accuracy'][1]:.4f} | "
            f"{v['macro_f1'][0]:.4f} ± {v['macro_f1'][1]:.4f} | {paired[0]} | {paired[1]} | {paired[2]} | "
            f"{v['fit_seconds_per_fold']:.1f} | {final['training_seconds']:.1f} | "
            f"{final['latency_ms_p50']:.1f} / {final['latency_ms_p95']:.1f} | {final['artifact_bytes'] / 1e6:.1f} | "
            f"{final['rss_mb']:.0f} ({final['rss_mb'] - shipped_rss:+.0f}) | "
            + (f"{rule['threshold']:.2f} ({rule['share_queued']:.1%})" if rule else "none")
            + f" | {v['calibration']['log_loss']:.3f} |"
        )
    lines.append("")
    analysis = ", ".join(
        f"{key.rsplit('_', 1)[1]} characters {value:.1f} s"
        for key, value in figures.items()
        if key.startswith("lac_analysis_seconds_")
    )
    if analysis:
        lines.append(f"LAC run once on every message for the cross-validation: {analysis}.")
    lines.append(
        f"Cross-validation of all variants {figures['cv_seconds']:.0f} s; load average "
        f"{' / '.join(f'{x:.2f}' for x in figures['load_average_start'])} at the start, "
        f"{' / '.join(f'{x:.2f}' for x in figures['load_average_end'])} at the end. Latency over every "
        f"{LATENCY_EVERY}th message, one `predict` each; RSS of a fresh process after loading the artifact and "
        f"classifying {RSS_MESSAGES} messages (Δ: against the shipped model's process)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dispatch_benchmark")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results")
    parser.add_argument("--variants", default="", help="comma-separated variant names, or all (see VARIANT_PARAMS)")
    parser.add_argument("--variants-only", action="store_true", help="only the variants, not sections 1-4")
    parser.add_argument(
        "--wordllama-dir", type=Path, help="an unpacked wordllama package (weights/, tokenizers/): adds that variant"
    )
    parser.add_argument("--keep-models", type=Path, help="also write each variant's model there as NAME.joblib")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    rows = read_labelled_csv(TRAINING_DATA_PATH)
    texts = [row.text for row in rows]
    labels = np.array([row.label for row in rows], dtype=object)
    groups = duplicate_groups(texts)
    sizes = np.bincount(groups)
    log(f"{len(rows)} rows, {len(set(groups))} groups")

    if args.variants:
        names = list(variant_builders(args.wordllama_dir)) if args.variants == "all" else args.variants.split(",")
        if args.keep_models is not None:
            args.keep_models.mkdir(parents=True, exist_ok=True)
        variants = compare_variants(rows, labels, groups, names, args.wordllama_dir, args.keep_models)
        for entry in variants["variants"].values():
            entry.pop("probabilities", None)
        (args.out_dir / "dispatch_variants.json").write_text(
            json.dumps(variants, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        print(variants_report(variants))
        print()
        if args.variants_only:
            return 0

    started = time.perf_counter()
    cv = cross_validate(texts, labels, groups)
    log(f"cross-validation done in {time.perf_counter() - started:.0f} s")

    names, cjk = category_names()
    pngs = []
    for model in MODELS:
        matrix = confusion_matrix(labels, cv[model]["predicted"][SEEDS[0]], labels=list(CATEGORIES))
        path = args.out_dir / f"dispatch_confusion_{model}.png"
        plot_confusion(matrix, f"{model} model, held-out predictions (seed {SEEDS[0]})", names, path)
        pngs.append(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
        cv[model]["confusion"] = matrix.tolist()

    pooled_probabilities = np.vstack([cv["chosen"]["probabilities"][seed] for seed in SEEDS])
    pooled_truth = np.concatenate([labels for _ in SEEDS])
    calibration = calibration_figures(pooled_probabilities, pooled_truth)
    table = [threshold_figures(pooled_probabilities, pooled_truth, t) for t in TABLE_THRESHOLDS]
    curve = [threshold_figures(pooled_probabilities, pooled_truth, t / 100) for t in range(30, 100)]
    rule = choose_threshold(pooled_probabilities, pooled_truth)
    calibration_png = args.out_dir / "dispatch_calibration.png"
    plot_calibration(calibration, curve, MANUAL_DISPATCH_THRESHOLD, calibration_png)
    pngs.append(str(calibration_png.relative_to(ROOT) if calibration_png.is_relative_to(ROOT) else calibration_png))

    log("training the final model on every row")
    final = final_model(texts, rows)

    figures: dict[str, Any] = {
        "n_rows": len(rows),
        "n_groups": len(set(groups)),
        "n_multi_groups": int((sizes > 1).sum()),
        "n_grouped_rows": int(sizes[sizes > 1].sum()),
        "support": {name: int((labels == name).sum()) for name in CATEGORIES},
        "seeds": list(SEEDS),
        "hyperparameters": HYPERPARAMETERS,
        "summary": summarise(cv),
        "folds": {model: cv[model]["folds"] for model in MODELS},
        "confusion": {model: cv[model]["confusion"] for model in MODELS},
        "confusion_labels": list(CATEGORIES),
        "confusion_png_labels": "chinese" if cjk else "english codes",
        "calibration": calibration,
        "threshold_table": table,
        "threshold_rule": rule,
        "threshold_constant": MANUAL_DISPATCH_THRESHOLD,
        "at_constant": threshold_figures(pooled_probabilities, pooled_truth, MANUAL_DISPATCH_THRESHOLD),
        "at_constant_by_seed": {
            seed: threshold_figures(cv["chosen"]["probabilities"][seed], labels, MANUAL_DISPATCH_THRESHOLD)
            for seed in SEEDS
        },
        "final": final,
        "pngs": pngs,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    (args.out_dir / "dispatch_benchmark.json").write_text(
        json.dumps(figures, ensure_ascii=False, indent=2), encoding="utf-8"
    )
    print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
