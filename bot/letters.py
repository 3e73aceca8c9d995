"""The letter gate: a citizen's letter is read as a report or a policy question before the engine sees it.

Citizens write letters (「尊敬的书记：您好！我是……」, hundreds of characters) that the engine's NLU,
trained on short examples, often cannot place. In front of the engine, `LetterGate.steer` looks
at each text message:

* A message that reads as a letter (`is_letter`: at least `LETTER_MIN_CHARS` characters, or at
  least `FORMAL_MIN_CHARS` opening with a formal salutation such as 「尊敬的」 or 「书记您好」, and
  at least `LETTER_MIN_DISTINCT_CHARS` different characters, so long filler is no letter) is
  given a `Steering`: intent ``report_issue`` or ``ask_faq`` with the model's confidence. The app
  sends it to the engine as message metadata (``{"letter": {...}}``) with the letter's own text,
  and the engine's channel (`bot.engine_channel`) turns it into the message's parse data instead
  of the NLU's guess, so the dialogue starts the report or answers from the knowledge base.
* Anything shorter, a button's payload, or a letter naming a case number (a progress query)
  gets no steering: the NLU reads it exactly as before.

Report or question is decided by `LetterKindModel`, a logistic regression over character 1-2
grams of the letter, trained from ``bot/data/letter_kinds.csv``: real letters of the message
board labelled by their titles (`kind_by_title`), none of them in the benchmark set. ``bin/setup``
trains it (``python -m bot.letters train --out models/letter_kind.joblib``, a few seconds) when
the data or this code change, and the app loads it at start (`LetterKindModel.load`): training at
every start cost each app process a few seconds of CPU and its training's memory. A letter is a
question only if the model says so with at least `QUESTION_THRESHOLD`; anything else a citizen
writes at length to the government is treated as a report (a complaint that mentions a policy
included). Figures: ``python -m benchmarks.letters_kind``
(cross-validation) and ``python -m benchmarks.letters_benchmark`` (the engine's first replies).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from crm_backend.importer import letter_text as letter_text  # a letter as one message, as history imports it

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

LETTER_KIND_DATA = Path(__file__).resolve().parent / "data" / "letter_kinds.csv"
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "letter_kind.joblib"
ARTIFACT_FORMAT = 1
LETTER_MIN_CHARS = 60
FORMAL_MIN_CHARS = 25
# A letter uses many different characters; a long run of filler (「啊啊啊…」, a test string) does not.
LETTER_MIN_DISTINCT_CHARS = 15
QUESTION_THRESHOLD = 0.5
MODEL_CHARS = 200  # a letter's kind shows in its title and first lines; training rows are cut the same

Kind = Literal["report", "question"]
INTENT_OF_KIND: dict[Kind, str] = {"report": "report_issue", "question": "ask_faq"}

# A letter's opening: 「尊敬的…」, 「…书记/市长/领导（您）好」, 「您好，我是…」.
_FORMAL_OPENING = re.compile(
    r"^\s*(尊敬的|敬爱的|.{0,12}?(书记|市长|县长|区长|局长|主任|领导|政府)[\s,，:：!！]*(您|你)?好|(您|你)好[\s,，:：!！]*我是)"
)
_CASE_NUMBER = re.compile(r"\d{8}-\d{4}")
# Title cues of the message board's own 咨询 letters (the labelling rule of the training rows).
_QUESTION_TITLE = re.compile(r"咨询|请问|询问|问一下")
# A title with any of these asks something too; with neither cue, the letter is left unlabelled.
_ASKING_TITLE = re.compile(r"[?？吗]|能否|可否|是否|如何|怎么|怎样|何时|什么|哪些|多少|为何|为什么")


def kind_by_title(title: str) -> Kind | None:
    """The fixed labelling rule for training rows: a 咨询 title is a question, a title asking nothing a report.

    Titles that ask something without the 咨询 words (「…是否合法纳税了？」) are often complaints
    in question form: they are left unlabelled (None).
    """
    if _QUESTION_TITLE.search(title):
        return "question"
    if _ASKING_TITLE.search(title):
        return None
    return "report"


def is_letter(text: str) -> bool:
    """Whether a message reads as a letter: long, or formal and not short, and not filler."""
    text = text.strip()
    if len(set(text)) < LETTER_MIN_DISTINCT_CHARS:
        return False
    if len(text) >= LETTER_MIN_CHARS:
        return True
    return len(text) >= FORMAL_MIN_CHARS and bool(_FORMAL_OPENING.match(text))


@dataclass(frozen=True)
class LabelledLetter:
    kind: Kind
    text: str


def read_letter_kinds(path: Path = LETTER_KIND_DATA) -> list[LabelledLetter]:
    """The labelled training rows (columns ``source,msg_id,kind,text``)."""
    with open(path, encoding="utf-8", newline="") as handle:
        return [
            LabelledLetter("question" if row["kind"] == "question" else "report", row["text"])
            for row in csv.DictReader(handle)
        ]


def build_pipeline() -> Pipeline:
    """The untrained model: TF-IDF of character 1-2 grams, balanced logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("tfidf", TfidfVectorizer(analyzer="char", ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
            ("model", LogisticRegression(C=4.0, class_weight="balanced", max_iter=1000)),
        ]
    )


class LetterKindModel:
    """Report or question, for a letter (see the module's docstring)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._question = list(pipeline.classes_).index("question")

    @classmethod
    def train(cls, rows: Sequence[LabelledLetter] | None = None) -> LetterKindModel:
        """Fit on `rows` (by default the project's labelled letters); CPU-bound, a couple of seconds."""
        rows = read_letter_kinds() if rows is None else rows
        pipeline = build_pipeline()
        pipeline.fit([row.text[:MODEL_CHARS] for row in rows], [row.kind for row in rows])
        return cls(pipeline)

    @classmethod
    def load(cls, path: Path | str = DEFAULT_MODEL_PATH) -> LetterKindModel:
        """Load a model written by `save` (a pickle: load only artifacts built on this machine).

        Raises:
            ModelLoadError: the file is missing or is not a letter-kind model of this format.
        """
        from crm_backend.dispatch.classifier import read_artifact

        artifact = read_artifact(path, "letter-kind", "train --out PATH", ARTIFACT_FORMAT, module="bot.letters")
        return cls(artifact["pipeline"])

    def save(self, path: Path | str = DEFAULT_MODEL_PATH) -> Path:
        """Write the model atomically (a temporary file renamed into place); returns the path."""
        from crm_backend.dispatch.classifier import write_artifact

        return write_artifact(path, {"format": ARTIFACT_FORMAT, "pipeline": self._pipeline})

    def question_probability(self, text: str) -> float:
        return float(self._pipeline.predict_proba([text[:MODEL_CHARS]])[0][self._question])


@dataclass(frozen=True)
class Steering:
    """What the engine is told a letter is: an intent with the gate's confidence."""

    kind: Kind
    confidence: float

    @property
    def intent(self) -> str:
        return INTENT_OF_KIND[self.kind]

    def as_metadata(self) -> dict[str, Any]:
        """The message metadata the engine's channel reads (`bot.engine_channel.steered_parse_data`)."""
        return {"letter": {"intent": self.intent, "confidence": round(self.confidence, 4)}}


class LetterGate:
    """Decides, for each text the engine is to read, whether and how to steer it."""

    def __init__(self, model: LetterKindModel) -> None:
        self._model = model

    def steer(self, text: str) -> Steering | None:
        """The steering for a letter; None for anything the NLU should read as it always has."""
        if text.startswith("/") or not is_letter(text) or _CASE_NUMBER.search(text):
            return None
        question = self._model.question_probability(text)
        if question >= QUESTION_THRESHOLD:
            return Steering("question", question)
        return Steering("report", 1.0 - question)


def main(argv: list[str] | None = None) -> int:
    """``python -m bot.letters train --out PATH``: train the letter-kind model and write it."""
    parser = argparse.ArgumentParser(prog="python -m bot.letters", description="The letter gate's model.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the report/question model on bot/data/letter_kinds.csv")
    train.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH, help="where to write the model")
    args = parser.parse_args(argv)
    path = LetterKindModel.train().save(args.out)
    print(f"letter-kind model written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
