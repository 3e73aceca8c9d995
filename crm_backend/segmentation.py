"""jieba segmenters of our own, for the models that segment Chinese text."""

from __future__ import annotations

import logging
import threading
from array import array
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import marisa_trie

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
    gazetteer's and the knowledge base's segmenters, `layered_segmenter`).

    Its word table is a `CompactWordTable` (about 3 MB instead of the 66 MB of jieba's dict) and
    read-only: adding a word to it raises TypeError (a model that needs its own words takes a
    `layered_segmenter` or a `private_segmenter`).
    """
    with _shared_lock:
        segmenter = private_segmenter()
        segmenter.FREQ = CompactWordTable(segmenter.FREQ)
        return segmenter


class CompactWordTable(marisa_trie.Trie):
    """jieba's word table (word or prefix of a word → frequency, 0 for a prefix only) held in a
    MARISA trie with the frequencies in an array: the same answers as jieba's dict for ``in``,
    ``[]``, ``get`` and ``len``, in about a twentieth of the memory, read-only.

    jieba's dict holds one Python string per word and prefix (498,113 of them): about 66 MB in
    every process that segments. Looking a word up costs a little more (segmenting is about 1.7
    times slower: a millisecond for 600 characters); what jieba cuts is the same
    (`tests/unit/test_segmentation.py` compares both on real messages).
    """

    def __init__(self, table: Mapping[str, int]) -> None:
        super().__init__(table.keys())
        # 4 bytes a word while jieba's counts allow it (its own dictionary's do), else 8.
        typecode = "I" if max(table.values(), default=0) < 2**32 else "Q"
        frequencies = array(typecode, bytes(array(typecode).itemsize * len(table)))
        for word, frequency in table.items():
            frequencies[self.key_id(word)] = frequency
        self._frequencies = frequencies

    def __getitem__(self, word: str) -> int:
        return self._frequencies[self.key_id(word)]

    def get(self, word: str, default: Any = None) -> Any:
        try:
            return self._frequencies[self.key_id(word)]
        except KeyError:
            return default


class _Overlay(dict[str, int]):
    """jieba's word table with words of our own on top of the shared one (a `CompactWordTable`),
    which it never changes.

    jieba reads its table with ``in``, ``[]`` and ``get``, and writes with ``[]=`` (adding a
    word and its prefixes): reads look here first, then in the shared table; writes stay here.
    """

    __slots__ = ("base",)

    def __init__(self, base: Mapping[str, int]) -> None:
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
    about 66 MB per process).

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
