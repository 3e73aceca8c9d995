"""One copy of jieba's dictionary for every model that needs nothing more, and nobody writes to it."""

from __future__ import annotations

import jieba

from crm_backend.analytics import reply_quality
from crm_backend.dispatch import classifier, duplicates
from crm_backend.dispatch.location import Gazetteer, LocationExtractor
from crm_backend.dispatch.service import GAZETTEER_DIR
from crm_backend.knowledge import retrieval
from crm_backend.segmentation import shared_segmenter


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
