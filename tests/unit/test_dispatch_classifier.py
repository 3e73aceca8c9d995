"""The case-category classifier and its CLI, on messages the model has not seen.

One model is trained per module on a stratified 80 % of the bundled data (a few seconds);
the other 20 % is the held-out set the CLI evaluates.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sklearn.model_selection import train_test_split

from crm_backend.dispatch.__main__ import main
from crm_backend.dispatch.classifier import (
    CATEGORIES,
    HYPERPARAMETERS,
    MANUAL_DISPATCH_THRESHOLD,
    TRAINING_DATA_PATH,
    CategoryClassifier,
    LabelledMessage,
    ModelLoadError,
    model_version,
    normalise,
    read_labelled_csv,
    split_title,
)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def split() -> tuple[list[LabelledMessage], list[LabelledMessage]]:
    """A stratified 80 / 20 split of the bundled training data."""
    rows = read_labelled_csv(TRAINING_DATA_PATH)
    train, test = train_test_split(rows, test_size=0.2, stratify=[row.label for row in rows], random_state=0)
    return list(train), list(test)


@pytest.fixture(scope="module")
def classifier(split: tuple[list[LabelledMessage], list[LabelledMessage]]) -> CategoryClassifier:
    return CategoryClassifier.train(split[0])


@pytest.fixture(scope="module")
def model_path(classifier: CategoryClassifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return classifier.save(tmp_path_factory.mktemp("model") / "category_classifier.joblib")


def write_csv(path: Path, rows: list[LabelledMessage]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([row.text, row.label] for row in rows)
    return path


def evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m crm_backend.dispatch evaluate …` as operators run it."""
    return subprocess.run(
        [str(PYTHON), "-m", "crm_backend.dispatch", "evaluate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- The CLI on held-out messages ---------------------------------------------


def test_evaluate_scores_held_out_messages(
    split: tuple[list[LabelledMessage], list[LabelledMessage]], model_path: Path, tmp_path: Path
) -> None:
    held_out = write_csv(tmp_path / "held_out.csv", split[1])

    result = evaluate(str(held_out), "--model", str(model_path))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert {"accuracy", "macro_f1", "per_class", "n"} <= scores.keys()
    assert scores["n"] == len(split[1])
    assert set(scores["per_class"]) == set(CATEGORIES)
    for figures in scores["per_class"].values():
        assert set(figures) == {"precision", "recall", "f1", "support"}
        assert all(0.0 <= figures[key] <= 1.0 for key in ("precision", "recall", "f1"))
    assert sum(figures["support"] for figures in scores["per_class"].values()) == scores["n"]
    assert scores["accuracy"] >= 0.85
    assert scores["macro_f1"] >= 0.83


def test_evaluate_reads_bom_extra_columns_blank_lines_and_quoted_newlines(
    split: tuple[list[LabelledMessage], list[LabelledMessage]],
    model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = split[1][:20]
    path = tmp_path / "excel.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(["id", " Label ", "source", "TEXT"])
        for number, row in enumerate(rows):
            text = row.text.replace(" ", "\n", 1) if number % 2 else row.text
            writer.writerow([number, row.label, "web, 12345", text])
            if number % 5 == 0:
                writer.writerow([])
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")

    assert main(["evaluate", str(path), "--model", str(model_path)]) == 0

    scores = json.loads(capsys.readouterr().out)
    assert scores["n"] == len(rows)
    assert scores["accuracy"] >= 0.7


def test_evaluate_rejects_unknown_labels_with_exit_2(
    split: tuple[list[LabelledMessage], list[LabelledMessage]],
    model_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [*split[1][:5], LabelledMessage("路灯坏了", "其他"), LabelledMessage("公交晚点", "交通")]
    path = write_csv(tmp_path / "bad_labels.csv", rows)

    assert main(["evaluate", str(path), "--model", str(model_path)]) == 2

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown label '其他'" in captured.err
    assert "line 7" in captured.err and "'交通'" in captured.err


@pytest.mark.parametrize(
    "content",
    ["", "message,category\n路灯坏了,城乡建设\n", "text,label\n", "text,label\n,城乡建设\n"],
    ids=["empty", "no-text-label-columns", "no-rows", "empty-text"],
)
def test_evaluate_rejects_unusable_csv_with_exit_2(
    content: str, model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unusable.csv"
    path.write_text(content, encoding="utf-8")

    assert main(["evaluate", str(path), "--model", str(model_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_evaluate_trains_the_model_first_when_it_is_missing(
    split: tuple[list[LabelledMessage], list[LabelledMessage]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "models" / "category_classifier.joblib"
    path = write_csv(tmp_path / "some.csv", split[1][:10])

    assert main(["evaluate", str(path), "--model", str(missing)]) == 0

    captured = capsys.readouterr()
    assert "training it first" in captured.err
    assert json.loads(captured.out)["n"] == 10
    assert CategoryClassifier.load(missing).trained_rows == 2594


def test_train_writes_the_model_and_says_where(
    split: tuple[list[LabelledMessage], list[LabelledMessage]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = [row for category in CATEGORIES for row in [r for r in split[0] if r.label == category][:15]]
    out = tmp_path / "out" / "model.joblib"

    assert main(["train", "--data", str(write_csv(tmp_path / "small.csv", small)), "--out", str(out)]) == 0

    printed = capsys.readouterr().out
    version = model_version(small)
    assert str(out) in printed and version in printed and " s" in printed
    assert CategoryClassifier.load(out).model_version == version


# --- Predictions ----------------------------------------------------------------


def test_predictions_are_probabilities_over_the_seven_categories(
    classifier: CategoryClassifier, split: tuple[list[LabelledMessage], list[LabelledMessage]]
) -> None:
    for row in split[1][:50]:
        prediction = classifier.predict(row.text)
        probabilities = [p for _, p in prediction.top]
        assert {name for name, _ in prediction.top} == set(CATEGORIES)
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        assert probabilities == sorted(probabilities, reverse=True)
        assert (prediction.category, prediction.confidence) == prediction.top[0]
        assert 0.0 <= prediction.confidence <= 1.0
        assert prediction.suggestions == [name for name, _ in prediction.top[:3]]
        assert prediction.needs_manual_dispatch == (prediction.confidence < MANUAL_DISPATCH_THRESHOLD)


def test_confidence_matches_accuracy_on_held_out_messages(
    classifier: CategoryClassifier, split: tuple[list[LabelledMessage], list[LabelledMessage]]
) -> None:
    rows = split[1]
    predictions = classifier.predict_many([row.text for row in rows])
    right = [p.category == row.label for p, row in zip(predictions, rows, strict=True)]
    mean_confidence = statistics.fmean(p.confidence for p in predictions)
    assert abs(mean_confidence - statistics.fmean(right)) < 0.06

    kept = [ok for p, ok in zip(predictions, right, strict=True) if not p.needs_manual_dispatch]
    assert 0.05 < 1 - len(kept) / len(rows) < 0.4
    assert statistics.fmean(kept) >= 0.93


@pytest.mark.parametrize("text", ["啊啊啊啊", "", "   ", "你好，我有个事情想问问，麻烦尽快回复，谢谢"])
def test_text_without_a_topic_needs_manual_dispatch_with_three_suggestions(
    classifier: CategoryClassifier, text: str
) -> None:
    prediction = classifier.predict(text)

    assert prediction.needs_manual_dispatch
    assert len(prediction.suggestions) == len(set(prediction.suggestions)) == 3
    assert set(prediction.suggestions) <= set(CATEGORIES)
    assert prediction.suggestions[0] == prediction.category


def test_prediction_takes_a_few_milliseconds(
    classifier: CategoryClassifier, split: tuple[list[LabelledMessage], list[LabelledMessage]]
) -> None:
    classifier.predict("warm-up")
    timings = []
    for row in split[1][:60]:
        started = time.perf_counter()
        classifier.predict(row.text)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.05  # typically 3 ms; loose for a loaded machine


def test_saved_model_loads_with_the_same_version_and_answers(
    classifier: CategoryClassifier, model_path: Path, split: tuple[list[LabelledMessage], list[LabelledMessage]]
) -> None:
    loaded = CategoryClassifier.load(model_path)
    text = split[1][0].text

    assert loaded.model_version == classifier.model_version
    assert loaded.predict(text) == classifier.predict(text)


def test_load_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="train"):
        CategoryClassifier.load(tmp_path / "nothing.joblib")
    foreign = tmp_path / "foreign.joblib"
    foreign.write_bytes(b"not a pickle")
    with pytest.raises(ModelLoadError):
        CategoryClassifier.load(foreign)


# --- Model version, text preparation, imports -----------------------------------


def test_model_version_changes_when_the_data_or_parameters_change(
    classifier: CategoryClassifier, split: tuple[list[LabelledMessage], list[LabelledMessage]]
) -> None:
    rows = split[0]
    relabelled = [LabelledMessage(rows[0].text, "环境保护" if rows[0].label != "环境保护" else "城乡建设"), *rows[1:]]
    edited = [LabelledMessage(rows[0].text + "。", rows[0].label), *rows[1:]]

    assert classifier.model_version == model_version(rows)
    assert classifier.model_version.startswith("category-") and len(classifier.model_version) == len("category-") + 12
    assert model_version(list(rows)) == model_version(rows)
    versions = {
        model_version(rows),
        model_version(relabelled),
        model_version(edited),
        model_version(rows[:-1]),
        model_version(rows, {**HYPERPARAMETERS, "svm_c": 2.0}),
    }
    assert len(versions) == 5


def test_normalise_replaces_placeholders_and_unifies_width_and_space() -> None:
    text = "Ａ市ＸＸ路 https://baidu.com/号楼_x000D_  漏水，电话*********，见http://x.cn/a?b=1（图）"
    assert normalise(text) == "a市xx路 url 号楼 漏水,电话*,见 url (图)"


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("k8县丁字街的商户乱摆摊 k8县丁字街的商户乱摆摊,前段时间", "k8县丁字街的商户乱摆摊"),
        ("m2县五丰机械厂喷漆污染何时休?m2县五丰机械厂喷漆污染何时休?尊敬的各位领导", "m2县五丰机械厂喷漆污染何时休?"),
        ("b市小鸣单车不退押金尊敬的上级领导,您好!我是10月31号", "b市小鸣单车不退押金"),
        (
            "灵活就业参加城镇职工基本养老保险缴费比例会下调吗?我想问问",
            "灵活就业参加城镇职工基本养老保险缴费比例会下调吗?",
        ),
    ],
)
def test_split_title_finds_the_title_with_or_without_a_space(text: str, title: str) -> None:
    assert split_title(text) == title


def test_importing_the_classifier_loads_neither_jieba_nor_scikit_learn() -> None:
    code = "import sys, crm_backend.dispatch.classifier; print('jieba' in sys.modules, 'sklearn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
