"""jieba segmenters of our own, for the models that segment Chinese text."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jieba


def private_segmenter(*dictionaries: Path) -> jieba.Tokenizer:
    """A fresh jieba segmenter, initialised, with jieba's log quiet and these user dictionaries
    loaded (missing ones skipped).

    Not ``jieba.dt``: words another module adds to the shared dictionary never change how this
    one segments, so a model's features stay what it was trained on.
    """
    import jieba

    jieba.setLogLevel(logging.WARNING)
    segmenter = jieba.Tokenizer()
    segmenter.initialize()
    for dictionary in dictionaries:
        if dictionary.exists():
            segmenter.load_userdict(str(dictionary))
    return segmenter
