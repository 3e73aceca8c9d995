"""The grouped cross-validation folds the category model is measured on (benchmark and retraining gate).

Near-duplicate messages (the same complaint posted twice: character-trigram TF-IDF cosine ≥
`DUPLICATE_COSINE` on the normalised letters, linked transitively) form one group and always fall
in the same fold, so no message is scored by a model trained on its twin. The folds are
``StratifiedGroupKFold`` with a shuffle seed: the same texts, labels and seed give the same folds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from crm_backend.dispatch.classifier import normalise

FOLDS = 5
DUPLICATE_COSINE = 0.8
GATE_SEED = 11  # the benchmark's first unseen seed


def duplicate_groups(texts: Sequence[str]) -> np.ndarray:
    """A group id per text; near-duplicates (trigram cosine ≥ `DUPLICATE_COSINE`) share one."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    letters = [re.sub(r"[\W_]+", "", normalise(text)) for text in texts]
    vectors = TfidfVectorizer(analyzer="char", ngram_range=(3, 3)).fit_transform(letters)
    similar = (vectors @ vectors.T).tocoo()
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, cosine in zip(similar.row, similar.col, similar.data, strict=True):
        if i < j and cosine >= DUPLICATE_COSINE:
            parent[root(int(i))] = root(int(j))
    return np.array([root(i) for i in range(len(texts))])


def grouped_folds(
    texts: Sequence[str],
    labels: Sequence[str],
    seed: int,
    *,
    n_splits: int = FOLDS,
    groups: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) row indices of each fold; no near-duplicate group crosses folds.

    Args:
        groups: `duplicate_groups(texts)`, when the caller has it already.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = duplicate_groups(texts) if groups is None else groups
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    x = np.zeros(len(texts))
    folds = [(train, test) for train, test in splitter.split(x, np.array(labels, dtype=object), groups)]
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test]), "a duplicate group crosses folds"
    return folds
