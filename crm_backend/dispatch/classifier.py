"""The case-category classifier: a citizen's report text → one of the seven first-level categories.

A linear SVM over three TF-IDF views of the text (terms seen in at least two training
messages), with calibrated probabilities:

* the whole message as character uni- and bigrams (sublinear term frequency);
* the title (what comes before the body, see `split_title`) as character 1-3 grams, so the
  title, which names the problem in a few words, weighs as much as a long body;
* jieba words of the whole message in search mode (long words plus the words inside them).

Hyper-parameters can add views of Baidu LAC's pretrained network (`crm_backend.dispatch.lac_view`:
pooled BiGRU states, entity and part-of-speech tag counts); see that module for what they
measured.

The SVM (``class_weight="balanced"``) is wrapped in ``CalibratedClassifierCV`` (sigmoid fitted
on 5-fold cross-validated scores, one SVM on all rows), so ``predict`` returns probabilities
that sum to 1. Below `MANUAL_DISPATCH_THRESHOLD` a case goes to the manual dispatch queue
with the three most likely categories as suggestions. Figures (5-fold cross-validation, near-duplicates kept in
one fold) are produced by ``python -m benchmarks.dispatch_benchmark``.

The model is trained from ``data/citizen_messages_train.csv`` by ``python -m
crm_backend.dispatch train`` (run by ``bin/setup``) and loaded once at start with
`CategoryClassifier.load`; nothing is loaded at import, and jieba builds its dictionary on
the first segmentation only.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import tempfile
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_backend.segmentation import shared_segmenter

if TYPE_CHECKING:
    import jieba
    from sklearn.pipeline import Pipeline

CATEGORIES: tuple[str, ...] = ("城乡建设", "环境保护", "交通运输", "教育文体", "劳动和社会保障", "商贸旅游", "卫生计生")

# Chosen from the cross-validated probabilities of this model (benchmarks/dispatch_benchmark.py:
# 5-fold StratifiedGroupKFold, shuffle seeds 11 and 12 pooled, 5,188 held-out predictions) by
# the rule "the lowest confidence, on a 0.01 grid, at which the cases kept for automatic
# dispatch are at least 97 % right", which also sits at the knee of the coverage-accuracy
# curve. At 0.77, 20.4 % of cases go to the manual queue and 97.0 % of the others get the
# right category (without a queue: 91.1 %). Cheaper points on the same curve: 0.70 queues
# 14.9 % at 96.1 %, 0.60 queues 8.8 % at 94.5 %, 0.50 queues 2.5 % at 92.4 %.
MANUAL_DISPATCH_THRESHOLD = 0.77
SUGGESTION_COUNT = 3

PACKAGE_DIR = Path(__file__).resolve().parent
TRAINING_DATA_PATH = PACKAGE_DIR / "data" / "citizen_messages_train.csv"
DEFAULT_MODEL_PATH = PACKAGE_DIR.parent.parent / "models" / "category_classifier.joblib"

# Longer reports are cut before classification: the category is told early, and a bound keeps
# prediction within a few milliseconds (the app logs at most 10,000 characters anyway).
MAX_CLASSIFIED_CHARS = 10_000
ARTIFACT_FORMAT = 1

# Everything that shapes the model besides the training rows; part of `model_version`.
# Bump "features_revision" when normalise/split_title/segmentation change meaning.
HYPERPARAMETERS: dict[str, Any] = {
    "features_revision": 1,
    "body_char_ngrams": [1, 2],
    "body_char_sublinear_tf": True,
    "title_char_ngrams": [1, 3],
    "title_weight": 1.0,
    "word_segmentation": "jieba-search",
    "word_ngrams": [1, 1],
    "word_sublinear_tf": True,
    "min_df": 2,
    "svm_c": 1.0,
    "class_weight": "balanced",
    "calibration": "sigmoid",
    "calibration_folds": 5,
    "calibration_ensemble": False,
}

# The data's placeholder first, then real links (ASCII only: Chinese text often follows a link
# with no space, and NFKC has turned full-width brackets and commas into ASCII ones by then).
_PLACEHOLDER = "https://baidu.com/"
_URL = re.compile(r"https?://[a-z0-9._~:/?#@$&*+=%-]+")
_MASK = re.compile(r"\*{2,}")
_SPACE = re.compile(r"\s+")
# Where the body of a message usually starts when no space separates it from its title.
_BODY_OPENING = re.compile(r"(尊敬的|您好|你好|各位领导|各级领导|我是|我们是|本人|领导[:，,])")
_SENTENCE_END = re.compile(r"[？！?!。]")
_MAX_TITLE_CHARS = 60
_FALLBACK_TITLE_CHARS = 30


class DataError(ValueError):
    """A labelled CSV that cannot be used: unreadable, no ``text``/``label`` columns, unknown labels."""


def read_artifact(
    path: Path | str, what: str, train_command: str, artifact_format: int, *, module: str = "crm_backend.dispatch"
) -> dict[str, Any]:
    """A model artifact written by `write_artifact` (a pickle: load only artifacts built on this machine).

    Args:
        what: the model's name in messages ("category", "case-type").
        train_command: the `python -m <module>` command that builds it.
        module: the module whose command it is.

    Raises:
        ModelLoadError: the file is missing, unreadable, or not an artifact of `artifact_format`.
    """
    import joblib

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no {what} model at {path}: run `python -m {module} {train_command}`")
    try:
        artifact = joblib.load(path)
    except Exception as exc:  # a truncated or foreign file: pickle raises anything
        raise ModelLoadError(f"cannot read the {what} model {path}: {exc}") from exc
    if not isinstance(artifact, dict) or artifact.get("format") != artifact_format:
        raise ModelLoadError(f"{path} is not a {what} model of format {artifact_format}: retrain it")
    return artifact


def write_artifact(path: Path | str, artifact: dict[str, Any]) -> Path:
    """Write a model artifact atomically (a temporary file renamed into place), with the
    scikit-learn version that built it; returns the path."""
    import joblib
    import sklearn

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        joblib.dump({**artifact, "sklearn_version": sklearn.__version__}, temporary, compress=3)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


class ModelLoadError(RuntimeError):
    """The model artifact is missing or is not one this code wrote."""


@dataclass(frozen=True)
class LabelledMessage:
    """One training or evaluation example."""

    text: str
    label: str


@dataclass(frozen=True)
class CategoryPrediction:
    """The classifier's answer for one report.

    Attributes:
        top: every category with its probability, most likely first (probabilities sum to 1).
        category: the most likely category.
        confidence: its probability.
        needs_manual_dispatch: the confidence is below the threshold: a person chooses.
        suggestions: the three most likely categories, most likely first.
    """

    top: list[tuple[str, float]]
    category: str
    confidence: float
    needs_manual_dispatch: bool
    suggestions: list[str]

    @classmethod
    def from_probabilities(cls, probabilities: dict[str, float], threshold: float) -> CategoryPrediction:
        """Build a prediction from a probability per category."""
        top = sorted(probabilities.items(), key=lambda item: (-item[1], CATEGORIES.index(item[0])))
        category, confidence = top[0]
        return cls(
            top=top,
            category=category,
            confidence=confidence,
            needs_manual_dispatch=confidence < threshold,
            suggestions=[name for name, _ in top[:SUGGESTION_COUNT]],
        )


# --- Text ---------------------------------------------------------------------


def normalise(text: str) -> str:
    """Canonical form of a message before features are taken.

    NFKC (full-width letters, digits and punctuation to half-width), lower case, links (the
    data's anonymised numbers are the literal ``https://baidu.com/``) to the token ``url``,
    Excel's ``_x000D_`` line-break residue and all white space runs to one space, and masked
    runs such as ``*********`` (ID and phone numbers) to one ``*``.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("_x000d_", " ")
    text = _URL.sub(" url ", text.replace(_PLACEHOLDER, " url "))
    text = _MASK.sub("*", text)
    return _SPACE.sub(" ", text).strip()


def split_title(text: str) -> str:
    """The title of a normalised message (the message itself always starts with it).

    The title is followed by a space in some messages and runs straight into the body in
    others; in order, the title ends where its first six characters start again (titles are
    often repeated at the top of the body), at the first space, before a salutation such
    as 「尊敬的」「您好」「我是」, after the first 「？！。」, else after 30 characters. Only the
    first 60 characters are searched.
    """
    head = text[: _MAX_TITLE_CHARS + 6]
    for end in range(6, min(len(head) - 5, _MAX_TITLE_CHARS + 1)):
        if head[end : end + 6] == head[:6]:
            return head[:end].strip()
    space = head.find(" ")
    if 0 < space <= _MAX_TITLE_CHARS:
        return head[:space]
    opening = _BODY_OPENING.search(text, 4, _MAX_TITLE_CHARS)
    if opening:
        return text[: opening.start()]
    end_mark = _SENTENCE_END.search(text, 0, _MAX_TITLE_CHARS)
    if end_mark and end_mark.start() >= 4:
        return text[: end_mark.end()]
    return text[:_FALLBACK_TITLE_CHARS]


@functools.cache
def _segmenter() -> jieba.Tokenizer:
    """jieba's default dictionary only (the shared one: nothing adds words to it), built on first use."""
    return shared_segmenter()


def search_words(text: str) -> list[str]:
    """jieba words of a normalised text in search mode (long words and the words inside them)."""
    return [word for word in _segmenter().cut_for_search(text) if not word.isspace()]


def normalise_all(texts: Iterable[str]) -> list[str]:
    """`normalise` every text (the pipeline's first step)."""
    return [normalise(str(text)[:MAX_CLASSIFIED_CHARS]) for text in texts]


def titles(texts: Iterable[str]) -> list[str]:
    """`split_title` every normalised text (the title view's first step)."""
    return [split_title(text) for text in texts]


# --- Model --------------------------------------------------------------------


def build_pipeline(params: dict[str, Any] | None = None) -> Pipeline:
    """The untrained scikit-learn pipeline: raw texts in, calibrated probabilities out.

    Args:
        params: hyper-parameters, `HYPERPARAMETERS` by default.
    """
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import LinearSVC

    p = HYPERPARAMETERS if params is None else params
    body = TfidfVectorizer(
        analyzer="char",
        ngram_range=tuple(p["body_char_ngrams"]),
        sublinear_tf=p["body_char_sublinear_tf"],
        min_df=p["min_df"],
    )
    title = make_pipeline(
        FunctionTransformer(titles),
        TfidfVectorizer(analyzer="char", ngram_range=tuple(p["title_char_ngrams"]), min_df=p["min_df"]),
    )
    words = TfidfVectorizer(
        tokenizer=search_words,
        token_pattern=None,
        lowercase=False,
        ngram_range=tuple(p["word_ngrams"]),
        sublinear_tf=p["word_sublinear_tf"],
        min_df=p["min_df"],
    )
    views: list[tuple[str, Any]] = [("body_chars", body), ("title_chars", title), ("words", words)]
    weights = {"title_chars": p["title_weight"]}
    if p.get("lac_states_weight") or p.get("lac_tags_weight") or p.get("lac_words_weight"):  # see lac_view
        from crm_backend.dispatch import lac_view

        for name, view, weight in lac_view.views(p):
            views.append((name, view))
            weights[name] = weight
    features = FeatureUnion(views, transformer_weights=weights)
    svm = LinearSVC(C=p["svm_c"], class_weight=p["class_weight"], random_state=0)
    classifier = CalibratedClassifierCV(
        svm, cv=p["calibration_folds"], method=p["calibration"], ensemble=p["calibration_ensemble"]
    )
    return Pipeline([("normalise", FunctionTransformer(normalise_all)), ("features", features), ("svm", classifier)])


def model_version(rows: Sequence[LabelledMessage], params: dict[str, Any] | None = None) -> str:
    """``category-`` + the first 12 hex digits of SHA-256 over the training rows and hyper-parameters."""
    digest = hashlib.sha256()
    digest.update(json.dumps(HYPERPARAMETERS if params is None else params, sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps([row.text, row.label], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return "category-" + digest.hexdigest()[:12]


class CategoryClassifier:
    """A trained classifier: `train` or `load` one, then `predict`.

    Attributes:
        model_version: identifies the training data and hyper-parameters.
        threshold: below this confidence a case needs manual dispatch.
        training_seconds: how long `train` took.
        trained_rows: how many messages it was trained on.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        model_version: str,
        *,
        training_seconds: float = 0.0,
        trained_rows: int = 0,
        trained_at: str = "",
        threshold: float = MANUAL_DISPATCH_THRESHOLD,
    ) -> None:
        self.pipeline = pipeline
        self.model_version = model_version
        self.training_seconds = training_seconds
        self.trained_rows = trained_rows
        self.trained_at = trained_at
        self.threshold = threshold
        classes = [str(name) for name in pipeline.classes_]
        if sorted(classes) != sorted(CATEGORIES):
            raise ModelLoadError(f"the model knows the categories {classes}, not {list(CATEGORIES)}")
        self._classes = classes

    @classmethod
    def train(cls, rows: Sequence[LabelledMessage], params: dict[str, Any] | None = None) -> CategoryClassifier:
        """Train on labelled messages.

        Args:
            rows: examples of every category in `CATEGORIES` (at least ``calibration_folds`` each).
            params: hyper-parameters, `HYPERPARAMETERS` by default.

        Raises:
            DataError: if a label is not one of `CATEGORIES` or a category has no examples.
        """
        labels = {row.label for row in rows}
        unknown = labels - set(CATEGORIES)
        if unknown:
            raise DataError(f"unknown labels: {sorted(unknown)}")
        missing = set(CATEGORIES) - labels
        if missing:
            raise DataError(f"no training examples for: {sorted(missing)}")
        params = dict(HYPERPARAMETERS if params is None else params)
        started = time.perf_counter()
        pipeline = build_pipeline(params)
        pipeline.fit([row.text for row in rows], [row.label for row in rows])
        return cls(
            pipeline,
            model_version(rows, params),
            training_seconds=time.perf_counter() - started,
            trained_rows=len(rows),
            trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    @classmethod
    def load(cls, path: Path | str = DEFAULT_MODEL_PATH) -> CategoryClassifier:
        """Load a model written by `save` (a pickle: load only artifacts built on this machine).

        Raises:
            ModelLoadError: if the file is missing or not a model artifact of this format.
        """
        artifact = read_artifact(path, "category", "train", ARTIFACT_FORMAT)
        return cls(
            artifact["pipeline"],
            artifact["model_version"],
            training_seconds=artifact.get("training_seconds", 0.0),
            trained_rows=artifact.get("trained_rows", 0),
            trained_at=artifact.get("trained_at", ""),
        )

    def save(self, path: Path | str = DEFAULT_MODEL_PATH) -> Path:
        """Write the model atomically (a temporary file renamed into place); returns the path."""
        return write_artifact(
            path,
            {
                "format": ARTIFACT_FORMAT,
                "pipeline": self.pipeline,
                "model_version": self.model_version,
                "training_seconds": self.training_seconds,
                "trained_rows": self.trained_rows,
                "trained_at": self.trained_at,
            },
        )

    def predict(self, text: str) -> CategoryPrediction:
        """Classify one report (a few milliseconds)."""
        return self.predict_many([text])[0]

    def predict_many(self, texts: Sequence[str]) -> list[CategoryPrediction]:
        """Classify several reports at once."""
        if not texts:
            return []
        probabilities = self.pipeline.predict_proba(list(texts))
        return [
            CategoryPrediction.from_probabilities(
                {name: float(p) for name, p in zip(self._classes, row, strict=True)}, self.threshold
            )
            for row in probabilities
        ]


# --- Data ---------------------------------------------------------------------


def read_labelled_csv(path: Path | str) -> list[LabelledMessage]:
    """Read a CSV with ``text`` and ``label`` columns (any others are ignored).

    Handles a UTF-8 byte-order mark, GB18030 files (what Excel writes on a Chinese
    Windows), quoted fields with line breaks, and blank lines; header names are matched
    without regard to case or surrounding space, labels and texts are stripped.

    Raises:
        DataError: the file cannot be read or decoded, has no ``text``/``label`` header, has
            an empty text or a label that is not one of `CATEGORIES` (first ones listed with
            their line numbers), or has no rows.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            content = raw.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is neither UTF-8 nor GB18030 text") from exc
    return parse_labelled_csv(content, source=str(path))


def parse_labelled_csv(content: str, source: str = "<csv>") -> list[LabelledMessage]:
    """Parse the text of a labelled CSV; see `read_labelled_csv`."""
    if "\x00" in content:
        raise DataError(f"{source} is not a text file")
    reader = csv.reader(io.StringIO(content, newline=""))
    rows: list[LabelledMessage] = []
    problems: list[str] = []
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise DataError(f"{source} is empty")
        names = [cell.strip().lstrip("\ufeff").lower() for cell in header]
        if "text" not in names or "label" not in names:
            raise DataError(f"{source} needs a header with the columns text and label, found {header}")
        text_at, label_at = names.index("text"), names.index("label")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            text = row[text_at].strip() if text_at < len(row) else ""
            label = row[label_at].strip() if label_at < len(row) else ""
            if label not in CATEGORIES:
                problems.append(f"line {line}: unknown label {label!r}")
            elif not text:
                problems.append(f"line {line}: empty text")
            else:
                rows.append(LabelledMessage(text, label))
    except csv.Error as exc:
        raise DataError(f"{source} is not valid CSV: {exc}") from exc
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DataError(f"{source}: {shown} (labels must be one of {', '.join(CATEGORIES)})")
    if not rows:
        raise DataError(f"{source} has no rows")
    return rows
