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

Timings depend on the machine's load (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib import font_manager
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.svm import LinearSVC

from crm_backend.dispatch.classifier import (
    CATEGORIES,
    HYPERPARAMETERS,
    MANUAL_DISPATCH_THRESHOLD,
    TRAINING_DATA_PATH,
    CategoryClassifier,
    build_pipeline,
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
    classifier.predict(texts[0])
    latencies = []
    for text in texts:
        began = time.perf_counter()
        classifier.predict(text)
        latencies.append((time.perf_counter() - began) * 1000)
    latencies.sort()
    return {
        "model_version": classifier.model_version,
        "training_seconds": wall,
        "artifact_bytes": size,
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p95": latencies[int(0.95 * (len(latencies) - 1))],
        "latency_ms_max": latencies[-1],
        "latency_n": len(latencies),
        "load_average": os.getloadavg()[0],
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dispatch_benchmark")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    rows = read_labelled_csv(TRAINING_DATA_PATH)
    texts = [row.text for row in rows]
    labels = np.array([row.label for row in rows], dtype=object)
    groups = duplicate_groups(texts)
    sizes = np.bincount(groups)
    log(f"{len(rows)} rows, {len(set(groups))} groups")

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
