"""jieba segmenters of our own, for the models that segment Chinese text."""

from __future__ import annotations

import logging
import threading
from functools import cache
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


_shared_lock = threading.Lock()


@cache
def shared_segmenter() -> jieba.Tokenizer:
    """The one jieba with jieba's own dictionary and nothing added, shared by every model that
    needs no more (the category classifier, duplicates, reply quality, the start of the
    gazetteer's segmenter): each copy of the dictionary costs about 60 MB per app process.

    Read-only by convention: nothing may add words to it (a model that needs its own words
    takes a `private_segmenter`, or a copy); `tests/unit/test_segmentation.py` checks that none does.
    """
    with _shared_lock:
        return private_segmenter()
