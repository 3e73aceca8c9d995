"""jieba segmenters of our own, for the models that segment Chinese text."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class _Overlay(dict[str, int]):
    """jieba's word table with words of our own on top of the shared one, which it never changes.

    jieba reads its table with ``in``, ``[]`` and ``get``, and writes with ``[]=`` (adding a
    word and its prefixes): reads look here first, then in the shared table; writes stay here.
    """

    __slots__ = ("base",)

    def __init__(self, base: dict[str, int]) -> None:
        super().__init__()
        self.base = base

    def __missing__(self, key: str) -> int:
        return self.base[key]

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self.base

    def get(self, key: str, default: Any = None) -> Any:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        return self.base.get(key, default)


def layered_segmenter(*dictionaries: Path, words: Iterable[tuple[str, int | None]] = ()) -> jieba.Tokenizer:
    """A jieba that segments exactly as `private_segmenter` with these dictionaries and words would,
    holding only its own words: the rest is read from the shared dictionary (a copy would cost
    about 60 MB per process).

    Args:
        dictionaries: jieba user dictionaries (missing ones skipped).
        words: more words and their frequencies (None: jieba's suggestion, as ``add_word`` makes it).
    """
    import jieba

    shared = shared_segmenter()
    segmenter = jieba.Tokenizer()
    segmenter.FREQ, segmenter.total = _Overlay(shared.FREQ), shared.total
    segmenter.initialized = True
    for dictionary in dictionaries:
        if dictionary.exists():
            segmenter.load_userdict(str(dictionary))
    for word, frequency in words:
        segmenter.add_word(word, frequency)
    return segmenter
