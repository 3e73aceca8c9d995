"""Ranking knowledge-base entries for a citizen's question.

Each entry is indexed by its title and its question variants. A question is scored against
every variant twice, by TF-IDF over character uni- and bigrams (robust to typos and to words
jieba splits differently) and by TF-IDF over jieba words (robust to word order and filler);
an entry's score is the best of its variants, the two cosines averaged. This combination was
chosen by measurement: `benchmarks/kb_benchmark.py` compares it with each half alone, BM25
over words and characters, and Rasa's ResponseSelector (figures in the README).

How sure a match is decides what the bot does (`Verdict`): a clear match is answered, an
unclear one is answered with the two runners-up offered as buttons, and below `NO_MATCH`
the bot says it has no answer rather than guess.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crm_backend.knowledge.text import normalise

if TYPE_CHECKING:
    import jieba
    from scipy.sparse import spmatrix
    from sklearn.feature_extraction.text import TfidfVectorizer

USER_DICTIONARY = Path(__file__).resolve().parents[2] / "nlu_data" / "jieba" / "userdict.txt"

# Thresholds on the combined score (0–1), chosen from the scores of held-out training variants
# and of off-topic training messages (benchmarks/kb_benchmark.py --thresholds, see README):
NO_MATCH = 0.25  # below: "no answer", never a guess
CLEAR = 0.45  # at or above (and ahead of the runner-up by CLEAR_MARGIN): answered without doubt
CLEAR_MARGIN = 0.05


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
    """The best entries for a question, best first, and what to make of them."""

    matches: tuple[Match, ...]
    verdict: Verdict

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None


def verdict_of(scores: Sequence[float]) -> Verdict:
    """Clear, unclear or no match, from the best scores in order."""
    if not scores or scores[0] < NO_MATCH:
        return Verdict.NO_MATCH
    runner_up = scores[1] if len(scores) > 1 else 0.0
    if scores[0] >= CLEAR and scores[0] - runner_up >= CLEAR_MARGIN:
        return Verdict.CLEAR
    return Verdict.UNCLEAR


@functools.cache
def _segmenter() -> jieba.Tokenizer:
    """A jieba of our own with the service vocabulary the engine also uses."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    segmenter = jieba.Tokenizer()
    segmenter.initialize()
    if USER_DICTIONARY.exists():
        segmenter.load_userdict(str(USER_DICTIONARY))
    return segmenter


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


class KnowledgeIndex:
    """An immutable index over the active entries; rebuilt (cheaply) whenever they change."""

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

    def scores(self, question: str) -> np.ndarray:
        """Every entry's score for the question (0–1), in the order of `entries`."""
        result = np.zeros(len(self.entries))
        text = normalise(question)
        if not text or not self._scorers:
            return result
        per_text = sum(scorer(text) for scorer in self._scorers) / len(self._scorers)
        np.maximum.at(result, self._owners, per_text)
        return result

    def rank(self, question: str, limit: int = 3) -> Ranking:
        """The `limit` best entries for a question and the verdict on them."""
        scores = self.scores(question)
        order = np.argsort(-scores, kind="stable")[:limit]
        matches = tuple(
            Match(self.entries[i].slug, self.entries[i].title, round(float(scores[i]), 4))
            for i in order
            if scores[i] > 0
        )
        return Ranking(matches, verdict_of([m.score for m in matches]))
