"""Ranking knowledge-base entries for a citizen's question.

Two views of the same texts (each entry's title and question variants, normalised):

* **Which entry** — a logistic regression over TF-IDF of character 1–3-grams and jieba words,
  trained on the variants with the entries as classes, gives each entry a probability. It
  learns which words tell entries apart from all of an entry's variants together, so it ranks
  far better than the nearest single variant (`benchmarks/kb_benchmark.py` compares it with
  TF-IDF and BM25 nearest-variant search and with Rasa's ResponseSelector; figures in the
  README). It retrains in about a second, so admins' edits count at once.
* **Whether any entry** — a probability says nothing about a question unlike every entry
  (a recipe still gets a "best" entry), so the evidence is the question's best cosine with a
  single variant (TF-IDF over character uni/bigrams and jieba words, averaged), where
  features the index never saw count in the question's length.

The verdict decides what the bot does: a clear match is answered, an unclear one is answered
with the two runners-up offered as buttons, and with too little evidence the bot says it has
no answer rather than guess.
"""

from __future__ import annotations

import enum
import functools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crm_backend.knowledge.text import normalise
from crm_backend.segmentation import layered_segmenter

if TYPE_CHECKING:
    import jieba
    from scipy.sparse import spmatrix
    from sklearn.feature_extraction.text import TfidfVectorizer

USER_DICTIONARY = Path(__file__).resolve().parents[2] / "nlu_data" / "jieba" / "userdict.txt"

# Thresholds, chosen on cross-validated variants of the entries and the NLU's off-topic and
# chit-chat examples, never on the held-out questions (benchmarks/kb_benchmark.py, README):
NO_MATCH = 0.25  # evidence below this: "no answer", never a guess
CLEAR = 0.30  # the best entry's probability at or above this: answered without doubt
CLASSIFIER_C = 10.0


class Verdict(enum.StrEnum):
    CLEAR = "clear"
    UNCLEAR = "unclear"
    NO_MATCH = "no_match"


@dataclass(frozen=True)
class IndexedEntry:
    """What the index needs of an entry."""

    slug: str
    title: str
    questions: tuple[str, ...]


@dataclass(frozen=True)
class Match:
    slug: str
    title: str
    score: float


@dataclass(frozen=True)
class Ranking:
    """The best entries for a question, best first (score: probability), and what to make of them."""

    matches: tuple[Match, ...]
    verdict: Verdict
    evidence: float = 0.0

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None


def verdict_of(probability: float, evidence: float) -> Verdict:
    """Clear, unclear or no match, from the best entry's probability and the best similarity."""
    if evidence < NO_MATCH:
        return Verdict.NO_MATCH
    return Verdict.CLEAR if probability >= CLEAR else Verdict.UNCLEAR


@functools.cache
def _segmenter() -> jieba.Tokenizer:
    """A jieba of our own with the service vocabulary the engine also uses."""
    return layered_segmenter(USER_DICTIONARY)


def words(text: str) -> list[str]:
    """jieba words of a normalised text in search mode (long words and the words inside them)."""
    return [word for word in _segmenter().cut_for_search(text) if not word.isspace()]


class Scorer:
    """TF-IDF cosine of a question with every indexed text, over one kind of feature.

    Features of the question the index has never seen (a recipe's dish, an English word) count
    in its length at the highest IDF, so a question that shares one common word with a text
    and nothing else scores low, instead of being judged on that word alone.
    """

    def __init__(self, vectorizer: TfidfVectorizer, texts: Sequence[str]) -> None:
        from sklearn.preprocessing import normalize

        self.vectorizer = vectorizer
        self.matrix: spmatrix = normalize(vectorizer.fit_transform(texts))
        self._analyse = vectorizer.build_analyzer()
        self._vocabulary = vectorizer.vocabulary_
        self._unseen_weight = float(vectorizer.idf_.max())

    def __call__(self, text: str) -> np.ndarray:
        vector = self.vectorizer.transform([text])
        unseen = Counter(feature for feature in self._analyse(text) if feature not in self._vocabulary)
        unseen_square = sum(((1 + math.log(count)) * self._unseen_weight) ** 2 for count in unseen.values())
        length = math.sqrt(float(vector.multiply(vector).sum()) + unseen_square)
        if length == 0:
            return np.zeros(self.matrix.shape[0])
        return np.asarray((self.matrix @ vector.T).todense()).ravel() / length


def char_scorer(texts: Sequence[str]) -> Scorer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return Scorer(TfidfVectorizer(analyzer="char", ngram_range=(1, 2), sublinear_tf=True, norm=None), texts)


def word_scorer(texts: Sequence[str]) -> Scorer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return Scorer(TfidfVectorizer(analyzer=words, sublinear_tf=True, norm=None), texts)


def entry_classifier():  # type: ignore[no-untyped-def]
    """Logistic regression over character 1–3-gram and jieba-word TF-IDF (a scikit-learn pipeline)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True),
        TfidfVectorizer(analyzer=words, sublinear_tf=True),
    )
    return make_pipeline(features, LogisticRegression(C=CLASSIFIER_C, max_iter=2000))


class KnowledgeIndex:
    """An immutable index over the active entries; rebuilt whenever they change (about a second)."""

    def __init__(self, entries: Sequence[IndexedEntry], revision: object = None) -> None:
        self.entries = tuple(entries)
        self.revision = revision
        texts: list[str] = []
        owners: list[int] = []
        for position, entry in enumerate(self.entries):
            for text in (entry.title, *entry.questions):
                if normalised := normalise(text):
                    texts.append(normalised)
                    owners.append(position)
        self._owners = np.array(owners, dtype=int)
        self._scorers = (char_scorer(texts), word_scorer(texts)) if texts else ()
        self._classifier = None
        if len(set(owners)) >= 2:
            self._classifier = entry_classifier().fit(texts, owners)

    def similarities(self, question: str) -> np.ndarray:
        """Every entry's best cosine with one of its variants (0–1), in the order of `entries`."""
        result = np.zeros(len(self.entries))
        text = normalise(question)
        if not text or not self._scorers:
            return result
        per_text = sum(scorer(text) for scorer in self._scorers) / len(self._scorers)
        np.maximum.at(result, self._owners, per_text)
        return result

    def scores(self, question: str) -> np.ndarray:
        """Every entry's probability of being the one asked about, in the order of `entries`."""
        if self._classifier is None:
            return self.similarities(question)
        result = np.zeros(len(self.entries))
        probabilities = self._classifier.predict_proba([normalise(question)])[0]
        result[self._classifier.classes_] = probabilities
        return result

    def rank(self, question: str, limit: int = 3) -> Ranking:
        """The `limit` most likely entries for a question and the verdict on them."""
        evidence = float(self.similarities(question).max(initial=0.0))
        scores = self.scores(question)
        order = np.argsort(-scores, kind="stable")[:limit]
        matches = tuple(
            Match(self.entries[i].slug, self.entries[i].title, round(float(scores[i]), 4))
            for i in order
            if scores[i] > 0
        )
        best = matches[0].score if matches else 0.0
        return Ranking(matches, verdict_of(best, evidence) if matches else Verdict.NO_MATCH, round(evidence, 4))
