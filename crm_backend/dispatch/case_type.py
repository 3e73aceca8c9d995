"""The 12345 case-type recogniser: a report's text → 咨询, 求助, 投诉, 举报, 建议 or 表扬.

The six types a 12345 centre records for every case (criteria in
``data/case_types/PROVENANCE.md``). A multinomial logistic regression over three TF-IDF views
of the normalised text (the category classifier's `normalise` and `split_title`):

* the whole text as character 1-3 grams (sublinear term frequency);
* the title (what comes before the body) as character 1-3 grams, since a letter's title often
  names its purpose (「投诉……」「关于……的建议」「咨询……」);
* jieba words of the whole text in search mode.

It is trained on the hand-labelled development letters (``data/case_types/dev.csv``) plus a
few short sentences written for the purpose (``data/case_types/seeds.csv``: chat-style reports
such as 「路灯坏了」, and the only examples of 表扬, which no sampled letter is). Praise is also
taken from cue words (`PRAISE_CUES`) when the text carries no sign of a grievance, because a
model cannot learn a type from eight sentences. Figures on the held-out letters
(``data/case_types/test.csv``) come from ``python -m benchmarks.case_type_benchmark``.

Trained by ``python -m crm_backend.dispatch train-types`` (run by ``bin/setup``) into
``models/case_type_classifier.joblib`` and loaded once at start with `CaseTypeRecogniser.load`;
nothing is loaded at import.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_backend.dispatch.classifier import (
    DataError,
    ModelLoadError,
    normalise,
    normalise_all,
    read_artifact,
    search_words,
    split_title,
    titles,
    write_artifact,
)

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

CASE_TYPES: tuple[str, ...] = ("咨询", "求助", "投诉", "举报", "建议", "表扬")
# What the console shows for a case filed before types existed (its case_type is NULL).
UNCLASSIFIED_LABEL = "未分类"

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data" / "case_types"
DEV_DATA_PATH = DATA_DIR / "dev.csv"
TEST_DATA_PATH = DATA_DIR / "test.csv"
SEED_DATA_PATH = DATA_DIR / "seeds.csv"
DEFAULT_MODEL_PATH = PACKAGE_DIR.parent.parent / "models" / "case_type_classifier.joblib"

MAX_CLASSIFIED_CHARS = 10_000
ARTIFACT_FORMAT = 1

HYPERPARAMETERS: dict[str, Any] = {
    "features_revision": 1,
    "body_char_ngrams": [1, 3],
    "title_char_ngrams": [1, 3],
    "title_weight": 1.0,
    "word_segmentation": "jieba-search",
    "min_df": 2,
    "logistic_c": 10.0,
    "class_weight": "balanced",
    "praise_rule": True,
    "cue_weight": 2.0,
}

# Words that say what a letter is for; one binary feature each (the "cues" view), so that a
# word seen in few training letters still counts. Chosen from the written criteria, not from
# the test letters.
TYPE_CUES: tuple[str, ...] = (
    "投诉", "举报", "咨询", "请问", "建议", "希望", "呼吁", "能否", "可否", "是否", "如何", "怎么", "什么时候", "何时",
    "感谢", "表扬", "点赞", "求助", "帮帮", "帮忙", "救助", "困难", "请求", "恳请", "解决",
    "违法", "非法", "违规", "违章", "无证", "涉嫌", "查处", "取缔", "偷税", "漏税", "赌博", "传销", "诈骗", "黑心",
    "扰民", "噪音", "拖欠", "乱收费", "不作为", "态度", "维权", "退款", "退还", "赔偿", "欺骗", "强制",
    "坏了", "破损", "漏水", "停水", "停电", "路灯", "积水", "堵塞", "没有",
    "增设", "增加", "开通", "修建", "规划", "政策", "规定", "条件", "办理", "手续", "流程",
)  # fmt: skip

# Praise is recognised from these words when no grievance cue is present (see module docstring).
PRAISE_CUES = ("表扬", "感谢", "谢谢", "点赞", "锦旗", "致谢", "称赞", "赞扬", "好人好事")
GRIEVANCE_CUES = (
    "投诉", "举报", "不满", "扰民", "拖欠", "乱收费", "违法", "违规", "非法", "不作为", "态度差", "态度恶劣",
    "坏了", "没人管", "无人管", "问题", "请问", "咨询", "建议", "希望", "能否", "为什么", "何时", "求助",
)  # fmt: skip
PRAISE_CONFIDENCE = 0.9
_POLITE_THANKS = re.compile(r"(谢谢|感谢|万分感谢|多谢)[!！。.~…]*$")


@dataclass(frozen=True)
class LabelledLetter:
    """One hand-labelled example: the text (title and body) and its type."""

    text: str
    case_type: str


@dataclass(frozen=True)
class CaseTypePrediction:
    """The recogniser's answer for one report.

    Attributes:
        case_type: the most likely type, one of `CASE_TYPES`.
        confidence: its probability.
        top: every type with its probability, most likely first.
        rule: ``"praise_cue"`` when the praise rule decided, else ``None``.
    """

    case_type: str
    confidence: float
    top: list[tuple[str, float]]
    rule: str | None = None


def is_praise(text: str) -> bool:
    """Whether a normalised text thanks or praises and carries no sign of a grievance.

    A closing 「谢谢」 or 「万分感谢」 is politeness, not praise: it is ignored.
    """
    body = _POLITE_THANKS.sub("", text.strip())
    return any(cue in body for cue in PRAISE_CUES) and not any(cue in body for cue in GRIEVANCE_CUES)


def cue_flags(texts: Sequence[str]) -> list[str]:
    """For every normalised text, the `TYPE_CUES` it contains, in the title (``t:``) and anywhere."""
    flags = []
    for text in texts:
        title = split_title(text)
        present = [f"a:{cue}" for cue in TYPE_CUES if cue in text] + [f"t:{cue}" for cue in TYPE_CUES if cue in title]
        flags.append(" ".join(present) or "none")
    return flags


def build_pipeline(params: dict[str, Any] | None = None) -> Pipeline:
    """The untrained pipeline: raw texts in, probabilities over the types out."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    p = HYPERPARAMETERS if params is None else params
    body = TfidfVectorizer(
        analyzer="char", ngram_range=tuple(p["body_char_ngrams"]), sublinear_tf=True, min_df=p["min_df"]
    )
    title = make_pipeline(
        FunctionTransformer(titles),
        TfidfVectorizer(analyzer="char", ngram_range=tuple(p["title_char_ngrams"]), min_df=p["min_df"]),
    )
    words = TfidfVectorizer(
        tokenizer=search_words, token_pattern=None, lowercase=False, sublinear_tf=True, min_df=p["min_df"]
    )
    cues = make_pipeline(
        FunctionTransformer(cue_flags),
        TfidfVectorizer(tokenizer=str.split, token_pattern=None, lowercase=False, use_idf=False, binary=True),
    )
    features = FeatureUnion(
        [("body_chars", body), ("title_chars", title), ("words", words), ("cues", cues)],
        transformer_weights={"title_chars": p["title_weight"], "cues": p["cue_weight"]},
    )
    model = LogisticRegression(C=p["logistic_c"], class_weight=p["class_weight"], max_iter=2000)
    return Pipeline([("normalise", FunctionTransformer(normalise_all)), ("features", features), ("model", model)])


def model_version(rows: Sequence[LabelledLetter], params: dict[str, Any] | None = None) -> str:
    """``case-type-`` + 12 hex digits of SHA-256 over the training rows and hyper-parameters."""
    digest = hashlib.sha256()
    digest.update(json.dumps(HYPERPARAMETERS if params is None else params, sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps([row.text, row.case_type], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return "case-type-" + digest.hexdigest()[:12]


class CaseTypeRecogniser:
    """A trained recogniser: `train` or `load` one, then `predict`.

    Attributes:
        model_version: identifies the training data and hyper-parameters.
        trained_rows: how many examples it learnt from.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        model_version: str,
        *,
        params: dict[str, Any] | None = None,
        trained_rows: int = 0,
        trained_at: str = "",
        training_seconds: float = 0.0,
    ) -> None:
        self.pipeline = pipeline
        self.model_version = model_version
        self.params = dict(HYPERPARAMETERS if params is None else params)
        self.trained_rows = trained_rows
        self.trained_at = trained_at
        self.training_seconds = training_seconds
        self._classes = [str(name) for name in pipeline.classes_]
        unknown = set(self._classes) - set(CASE_TYPES)
        if unknown:
            raise ModelLoadError(f"the case-type model knows types {sorted(unknown)} outside {list(CASE_TYPES)}")

    @classmethod
    def train(cls, rows: Sequence[LabelledLetter], params: dict[str, Any] | None = None) -> CaseTypeRecogniser:
        """Train on labelled examples.

        Raises:
            DataError: a type outside `CASE_TYPES`, or fewer than two types.
        """
        labels = {row.case_type for row in rows}
        unknown = labels - set(CASE_TYPES)
        if unknown:
            raise DataError(f"unknown case types: {sorted(unknown)}")
        if len(labels) < 2:
            raise DataError("the case-type recogniser needs examples of at least two types")
        params = dict(HYPERPARAMETERS if params is None else params)
        started = time.perf_counter()
        pipeline = build_pipeline(params)
        pipeline.fit([row.text for row in rows], [row.case_type for row in rows])
        return cls(
            pipeline,
            model_version(rows, params),
            params=params,
            trained_rows=len(rows),
            trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
            training_seconds=time.perf_counter() - started,
        )

    @classmethod
    def load(cls, path: Path | str = DEFAULT_MODEL_PATH) -> CaseTypeRecogniser:
        """Load a model written by `save` (a pickle: load only artifacts built on this machine).

        Raises:
            ModelLoadError: the file is missing or not a case-type model of this format.
        """
        artifact = read_artifact(path, "case-type", "train-types", ARTIFACT_FORMAT)
        if "case_types" not in artifact:
            raise ModelLoadError(f"{path} is not a case-type model of format {ARTIFACT_FORMAT}: retrain it")
        return cls(
            artifact["pipeline"],
            artifact["model_version"],
            params=artifact.get("params"),
            trained_rows=artifact.get("trained_rows", 0),
            trained_at=artifact.get("trained_at", ""),
            training_seconds=artifact.get("training_seconds", 0.0),
        )

    def save(self, path: Path | str = DEFAULT_MODEL_PATH) -> Path:
        """Write the model atomically (a temporary file renamed into place); returns the path."""
        return write_artifact(
            path,
            {
                "format": ARTIFACT_FORMAT,
                "case_types": list(CASE_TYPES),
                "pipeline": self.pipeline,
                "model_version": self.model_version,
                "params": self.params,
                "trained_rows": self.trained_rows,
                "trained_at": self.trained_at,
                "training_seconds": self.training_seconds,
            },
        )

    def predict(self, text: str) -> CaseTypePrediction:
        """The type of one report (a few milliseconds)."""
        return self.predict_many([text])[0]

    def predict_many(self, texts: Sequence[str]) -> list[CaseTypePrediction]:
        """The types of several reports at once."""
        if not texts:
            return []
        texts = [str(text)[:MAX_CLASSIFIED_CHARS] for text in texts]
        probabilities = self.pipeline.predict_proba(texts)
        predictions = []
        for text, row in zip(texts, probabilities, strict=True):
            scores = {name: float(p) for name, p in zip(self._classes, row, strict=True)}
            if self.params.get("praise_rule") and is_praise(normalise(text)):
                rest = 1.0 - PRAISE_CONFIDENCE
                total = sum(value for name, value in scores.items() if name != "表扬") or 1.0
                scores = {name: rest * value / total for name, value in scores.items() if name != "表扬"}
                scores["表扬"] = PRAISE_CONFIDENCE
                rule: str | None = "praise_cue"
            else:
                rule = None
            top = sorted(scores.items(), key=lambda item: (-item[1], CASE_TYPES.index(item[0])))
            predictions.append(CaseTypePrediction(case_type=top[0][0], confidence=top[0][1], top=top, rule=rule))
        return predictions


def letter_text(title: str, detail: str) -> str:
    """A letter as the recogniser reads it: the title, a space, the body (as citizens' reports arrive)."""
    return f"{title.strip()} {detail.strip()}"


def read_case_type_csv(path: Path | str) -> list[LabelledLetter]:
    """Read a labelled case-type CSV: ``title,text,type`` (letters) or ``text,type`` (seeds).

    Raises:
        DataError: unreadable, missing columns, or a type outside `CASE_TYPES`.
    """
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    rows: list[LabelledLetter] = []
    with handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "text" not in reader.fieldnames or "type" not in reader.fieldnames:
            raise DataError(f"{path} needs the columns text and type")
        for number, row in enumerate(reader, start=2):
            case_type = (row.get("type") or "").strip()
            if case_type not in CASE_TYPES:
                raise DataError(f"{path} line {number}: unknown case type {case_type!r}")
            rows.append(LabelledLetter(letter_text(row.get("title") or "", row["text"] or ""), case_type))
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows


def training_rows(dev_path: Path = DEV_DATA_PATH, seed_path: Path = SEED_DATA_PATH) -> list[LabelledLetter]:
    """What the shipped model learns from: the development letters and the seed sentences."""
    return read_case_type_csv(dev_path) + read_case_type_csv(seed_path)
