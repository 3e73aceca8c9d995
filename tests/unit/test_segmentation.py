"""One copy of jieba's dictionary for every model that needs nothing more, and nobody writes to it."""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap

import jieba
import pytest

from crm_backend.analytics import reply_quality
from crm_backend.dispatch import classifier, duplicates
from crm_backend.dispatch.location import MIN_WORD_FREQ, Gazetteer, LocationExtractor
from crm_backend.dispatch.service import GAZETTEER_DIR
from crm_backend.knowledge import retrieval
from crm_backend.segmentation import CompactWordTable, layered_segmenter, private_segmenter, shared_segmenter
from crm_backend.settings import PROJECT_ROOT


def test_the_default_dictionary_models_share_one_segmenter() -> None:
    shared = shared_segmenter()
    assert classifier._segmenter() is shared
    assert reply_quality._segmenter() is shared
    assert retrieval._segmenter() is not shared  # it adds the service vocabulary


def test_no_model_adds_words_to_the_shared_dictionary() -> None:
    shared = shared_segmenter()
    fresh = jieba.Tokenizer()
    fresh.initialize()
    locator = LocationExtractor(Gazetteer.load(GAZETTEER_DIR))
    locator.extract("A1区解放路路灯坏了")
    retrieval.words("公积金怎么提取")
    classifier.search_words("噪音扰民")
    duplicates.content_words("小区门口垃圾没人清理")
    reply_quality.warm_up()
    assert len(shared.FREQ) == len(fresh.FREQ) and shared.total == fresh.total
    assert shared.lcut("A1区解放路路灯坏了") == fresh.lcut("A1区解放路路灯坏了")


def real_messages(limit: int = 400) -> list[str]:
    path = PROJECT_ROOT / "crm_backend" / "dispatch" / "data" / "citizen_messages_train.csv"
    with path.open(encoding="utf-8") as rows:
        return [row["text"][:600] for row, _ in zip(csv.DictReader(rows), range(limit), strict=False)]


def segmentations(segmenter: jieba.Tokenizer, texts: list[str]) -> list[list[list[str]]]:
    return [[segmenter.lcut(t), segmenter.lcut(t, HMM=False), list(segmenter.cut_for_search(t))] for t in texts]


def test_a_layered_segmenter_segments_as_a_full_copy_with_the_same_words() -> None:
    texts = real_messages()
    # The knowledge base's: the service vocabulary on top.
    assert segmentations(layered_segmenter(retrieval.USER_DICTIONARY), texts) == segmentations(
        private_segmenter(retrieval.USER_DICTIONARY), texts
    )
    # The locator's: place names added one by one, each at jieba's suggested frequency.
    words = Gazetteer.load(GAZETTEER_DIR).jieba_words()
    layered, copied = layered_segmenter(), private_segmenter()
    for segmenter in (layered, copied):
        for word in words:
            segmenter.add_word(word, max(segmenter.suggest_freq(word, False), MIN_WORD_FREQ))
    assert segmentations(layered, texts) == segmentations(copied, texts)
    assert len(dict.keys(layered.FREQ)) < len(copied.FREQ) // 50  # it holds only its own words


SHARED_DICTIONARY_MEMORY = textwrap.dedent(
    """
    import ctypes, ctypes.util, gc
    from pathlib import Path

    import jieba

    from crm_backend.segmentation import shared_segmenter


    def rss_mb():
        gc.collect()
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


    before = rss_mb()
    shared_segmenter().lcut("A1区解放路路灯坏了")
    print(round(rss_mb() - before))
    """
)


def test_the_shared_dictionary_costs_a_process_little_memory() -> None:
    # jieba's own table (a dict of 498,113 words and prefixes) costs about 66 MB per process.
    done = subprocess.run(
        [sys.executable, "-c", SHARED_DICTIONARY_MEMORY], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )

    assert int(done.stdout) < 20


def test_the_shared_segmenter_segments_as_jiebas_own_table_does() -> None:
    texts = real_messages()

    assert segmentations(shared_segmenter(), texts) == segmentations(private_segmenter(), texts)
    assert shared_segmenter().suggest_freq("解放路", False) == private_segmenter().suggest_freq("解放路", False)


def test_the_compact_table_answers_as_the_dict_it_was_built_from() -> None:
    table = {"北京": 100, "北": 5, "北京大": 0, "北京大学": 2**33}
    compact = CompactWordTable(table)

    assert len(compact) == 4 and set(compact) == set(table)
    assert [compact[word] for word in table] == list(table.values())
    assert "北京大" in compact and "上海" not in compact
    assert compact.get("上海") is None and compact.get("上海", 1) == 1 and compact.get("北", 1) == 5
    with pytest.raises(KeyError):
        compact["上海"]
    with pytest.raises(TypeError):
        compact["上海"] = 1  # type: ignore[index]
