"""Grouping messages into hot issues (热点问题) and ranking them by a heat index.

The method, on plain records (`HotRecord`: key, citizen, title, text, time, likes):

1. **Vectors.** TF-IDF over character 2- and 3-grams (Chinese needs no segmenter for this),
   one matrix for the titles and one for the first `DETAIL_CHARS` characters of the text;
   n-grams in one message only or in more than `MAX_DF` of them are dropped (the words
   every message uses: 小区, 问题, 反映). The n-grams are hashed and counted with numpy over
   the whole corpus at once (`_tfidf`), so 100,000 messages vectorise in seconds. The two
   are joined with weights √w and √(1−w), so the dot product of two messages is
   ``w·cos(titles) + (1−w)·cos(texts)``.
2. **Linking.** Two messages are linked when that similarity is at least `THRESHOLD` and
   they were written at most `LINK_DAYS` apart; an issue is a connected component of the
   links (nearest-neighbour linking with a threshold: the number of issues is not known in
   advance, and single messages stay alone). Messages are sorted by time and compared in
   blocks with the ones up to `LINK_DAYS` later only, so the work grows with the messages in
   a window, not with the square of all of them.
3. **Supervisors' decisions** (`Decisions`) are applied to the components: a message marked
   unrelated leaves its issue; two issues marked as one are joined.
4. **Issues and heat.** A component is an issue when at least `MIN_CITIZENS` different
   citizens wrote in it (one person posting thirty times is not a hot issue). Its heat:

   ``heat = volume × (1 + 0.5·concentration) × (1 + 0.1·ln(1 + likes)) × (1 + 0.25·growth)``

   - volume = distinct citizens + `REPEAT_WEIGHT` × the messages beyond one per citizen;
   - concentration = the largest share of its messages inside any `BURST_DAYS` days (1.0
     when all came in one week);
   - likes = the support other residents gave (0 where the source has none);
   - growth = (recent − previous) / max(previous, 1), clipped to 0..3, where recent and
     previous count its messages in the last `ALERT_DAYS` days up to ``until`` and in the
     `ALERT_DAYS` before.

   预警 (``alert``): recent ≥ `ALERT_MIN_RECENT` and recent ≥ `ALERT_GROWTH` × previous.

How the parameters were chosen (``python -m benchmarks.hot_issues_benchmark --sweep``): on
the 4,326 real messages, six issues were marked by keywords a reader can check (伊景园滨河苑
车位捆绑, 丽发新城搅拌站, 魅力之城油烟/夜宵, 58车贷, 魅力之城开裂, 泉星公园), and every
setting was scored by the mean F1 of the issue holding most of each. Titles alone reach
0.79 at best (threshold 0.3): they miss messages with generic titles (「投诉小区附近搅拌站噪音
扰民」, 「环境污染」) and at lower thresholds join different places with the same complaint.
Titles and 200 characters of text with w = 0.5 and threshold 0.2 score 0.812, the two big
issues at 0.91–0.98 recall and precision; 0.15 starts chaining (丽发新城 precision 0.82),
0.25–0.3 cut the big issues apart (丽发新城 recall 0.80, then 0.40). Linking across 60
days scores higher on those six (0.851) but chains restaurant smoke at five different
places into one issue; 7–14 days split issues that lasted a month (0.60–0.73); 30 days is
the compromise. `MAX_DF` 0.05 or 0.1 scores 0.815, 0.02 0.812 and is the fastest (the
common n-grams are what makes the products expensive). The 魅力之城 smoke and night-stall
complaints stay split in two or three issues (recall 0.27): the messages describe it in
different words, which is what the supervisors' "these are one" is for.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.feature_extraction.text import TfidfTransformer

from crm_backend.dispatch.deadlines import CHINA_TZ

TITLE_WEIGHT = 0.5
DETAIL_CHARS = 200
THRESHOLD = 0.2
LINK_DAYS = 30
MAX_DF = 0.02
# Below this many messages the document-frequency cut is off: in a handful of messages
# every n-gram is "frequent".
MAX_DF_MIN_MESSAGES = 1000
MIN_CITIZENS = 2
REPEAT_WEIGHT = 0.1
BURST_DAYS = 7
ALERT_DAYS = 7
ALERT_MIN_RECENT = 5
ALERT_GROWTH = 2.0
BLOCK_ROWS = 2000
HASH_BUCKETS = 2**22
TITLE_CHARS = 60

# (text, the district already known) -> the place it names, e.g. "A2区丽发新城"
# The source's anonymised place codes (A市, K9县) say nothing as key terms.
_CODED_PLACE = re.compile(r"[A-Za-z0-9]")

Locate = Callable[[str, str | None], str | None]


@dataclass(frozen=True)
class HotRecord:
    """One message or case as hot-issue discovery sees it.

    Attributes:
        key: what names it to staff and in decisions (the board's msg_id, a case number).
        citizen: who wrote it (the board's user id, a citizen id), for distinct citizens.
        title: its title, or the first words of a message that has none.
        text: its body (may repeat the title).
        time: when it was written, timezone-aware.
        likes: support from other residents (0 where the source has none).
        district: the district the CRM already knows for it, if any.
    """

    key: str
    citizen: str
    title: str
    text: str
    time: datetime
    likes: int = 0
    district: str | None = None


@dataclass(frozen=True)
class Decisions:
    """Supervisors' corrections: messages that are unrelated, and pairs of issues that are one.

    Messages are named by their keys; an issue by any message key in it.
    """

    unrelated: frozenset[str] = frozenset()
    merges: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IssueMessage:
    """A message behind an issue, with its closeness to the issue's centre (for the description)."""

    key: str
    citizen: str
    title: str
    time: datetime
    likes: int
    centrality: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "citizen": self.citizen,
            "title": self.title,
            "time": self.time.isoformat(),
            "likes": self.likes,
            "centrality": round(self.centrality, 4),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> IssueMessage:
        return cls(
            key=str(data["key"]),
            citizen=str(data["citizen"]),
            title=str(data["title"]),
            time=datetime.fromisoformat(str(data["time"])),
            likes=int(data["likes"]),  # type: ignore[call-overload]
            centrality=float(data.get("centrality", 0.0)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class HotIssue:
    """A ranked hot issue: what, where, when, how hot, and every message behind it."""

    issue_id: str  # the key of its earliest message
    description: str
    place: str | None
    terms: tuple[str, ...]
    first_at: datetime
    last_at: datetime
    messages: int
    citizens: int
    likes: int
    concentration: float
    recent: int
    previous: int
    growth: float
    heat: float
    alert: bool
    members: tuple[IssueMessage, ...] = field(repr=False, default=())

    def to_json(self, *, with_members: bool = True) -> dict[str, object]:
        data: dict[str, object] = {
            "issue_id": self.issue_id,
            "description": self.description,
            "place": self.place,
            "terms": list(self.terms),
            "first_at": self.first_at.isoformat(),
            "last_at": self.last_at.isoformat(),
            "messages": self.messages,
            "citizens": self.citizens,
            "likes": self.likes,
            "concentration": self.concentration,
            "recent": self.recent,
            "previous": self.previous,
            "growth": self.growth,
            "heat": self.heat,
            "alert": self.alert,
        }
        if with_members:
            data["members"] = [member.to_json() for member in self.members]
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> HotIssue:
        members = data.get("members") or []
        assert isinstance(members, list)
        return cls(
            issue_id=str(data["issue_id"]),
            description=str(data["description"]),
            place=None if data.get("place") is None else str(data["place"]),
            terms=tuple(str(term) for term in data.get("terms") or ()),  # type: ignore[attr-defined]
            first_at=datetime.fromisoformat(str(data["first_at"])),
            last_at=datetime.fromisoformat(str(data["last_at"])),
            messages=int(data["messages"]),  # type: ignore[call-overload]
            citizens=int(data["citizens"]),  # type: ignore[call-overload]
            likes=int(data["likes"]),  # type: ignore[call-overload]
            concentration=float(data["concentration"]),  # type: ignore[arg-type]
            recent=int(data["recent"]),  # type: ignore[call-overload]
            previous=int(data["previous"]),  # type: ignore[call-overload]
            growth=float(data["growth"]),  # type: ignore[arg-type]
            heat=float(data["heat"]),  # type: ignore[arg-type]
            alert=bool(data["alert"]),
            members=tuple(IssueMessage.from_json(member) for member in members),
        )


@dataclass(frozen=True)
class Group:
    """A set of messages found to be about one problem, before it is summarised and ranked."""

    members: tuple[IssueMessage, ...]
    place: str | None = None
    terms: tuple[str, ...] = ()


def window_bounds(since: date, until: date) -> tuple[datetime, datetime]:
    """The instants of a window of China dates, ``since`` and ``until`` both included."""
    start = datetime.combine(since, datetime.min.time(), tzinfo=CHINA_TZ)
    end = datetime.combine(until + timedelta(days=1), datetime.min.time(), tzinfo=CHINA_TZ)
    return start, end


def _vectors(records: Sequence[HotRecord]) -> sp.csr_matrix:
    max_df = MAX_DF if len(records) >= MAX_DF_MIN_MESSAGES else 1.0
    titles = _tfidf([_squeeze(record.title) for record in records], max_df)
    texts = _tfidf([_squeeze(record.text)[:DETAIL_CHARS] for record in records], max_df)
    return sp.hstack(
        [titles * math.sqrt(TITLE_WEIGHT), texts * math.sqrt(1.0 - TITLE_WEIGHT)], format="csr", dtype=np.float32
    )


def _tfidf(texts: Sequence[str], max_df: float) -> sp.csr_matrix:
    """TF-IDF rows of hashed character 2- and 3-grams, each row of unit length (or zero).

    Equivalent to scikit-learn's ``TfidfVectorizer(analyzer="char", ngram_range=(2, 3),
    sublinear_tf=True, min_df=2, max_df=max_df)`` with the n-grams hashed into `HASH_BUCKETS`
    buckets, but the n-grams are computed with numpy over the whole corpus at once: 100,000
    messages take about a second instead of a minute and a half of Python string slicing.
    """
    n = len(texts)
    joined = "\x00".join(texts).lower() + "\x00"
    chars = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    doc = np.repeat(np.arange(n, dtype=np.int32), [len(text) + 1 for text in texts])
    rows: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    for size in (2, 3):
        if len(chars) < size:
            continue
        span = len(chars) - size + 1
        valid = np.ones(span, dtype=bool)
        code = np.full(span, size, dtype=np.uint64)
        for offset in range(size):
            window = chars[offset : offset + span]
            valid &= window != 0
            code = code * np.uint64(1_000_003) ^ window
        rows.append(doc[:span][valid])
        codes.append((code[valid] % np.uint64(HASH_BUCKETS)).astype(np.int32))
    if not rows or not sum(len(r) for r in rows):
        return sp.csr_matrix((n, HASH_BUCKETS), dtype=np.float32)
    row = np.concatenate(rows)
    col = np.concatenate(codes)
    counts = sp.csr_matrix((np.ones(len(row), dtype=np.float32), (row, col)), shape=(n, HASH_BUCKETS))
    counts.sum_duplicates()
    df = np.bincount(counts.indices, minlength=HASH_BUCKETS)
    uninformative = (df > max_df * n) | (df < 2)  # in (nearly) every message, or in one only
    counts.data[uninformative[counts.indices]] = 0
    counts.eliminate_zeros()
    transformer = TfidfTransformer(sublinear_tf=True)
    result: sp.csr_matrix = transformer.fit_transform(counts).astype(np.float32)
    return result


def _components(records: Sequence[HotRecord]) -> tuple[np.ndarray, sp.csr_matrix]:
    n = len(records)
    if n == 0:
        return np.zeros(0, dtype=np.int32), sp.csr_matrix((0, 1), dtype=np.float32)
    days = np.array([record.time.timestamp() / 86400.0 for record in records])
    order = np.argsort(days, kind="stable")
    vectors = _vectors(records)
    sorted_vectors = vectors[order]
    sorted_days = days[order]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        reach = int(np.searchsorted(sorted_days, sorted_days[stop - 1] + LINK_DAYS, side="right"))
        block = (sorted_vectors[start:stop] @ sorted_vectors[start:reach].T).tocoo()
        row = block.row + start
        col = block.col + start
        keep = (col > row) & (block.data >= THRESHOLD) & (sorted_days[col] - sorted_days[row] <= LINK_DAYS)
        rows.append(order[row[keep]])
        cols.append(order[col[keep]])
    row_all = np.concatenate(rows)
    col_all = np.concatenate(cols)
    graph = sp.coo_matrix((np.ones(len(row_all), dtype=np.int8), (row_all, col_all)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels, vectors


def find_groups(records: Sequence[HotRecord], decisions: Decisions = Decisions()) -> list[Group]:
    """Link the records into groups and apply the supervisors' decisions.

    Only groups of two or more messages are returned; each member carries its centrality
    (cosine to its group's mean vector), which picks the issue's description.
    """
    labels, vectors = _components(records)
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        by_label.setdefault(label, []).append(index)
    groups = []
    for indices in by_label.values():
        if len(indices) < 2:
            groups.append([_message(records[indices[0]], 1.0)])
            continue
        scores = _centrality(vectors[indices])
        groups.append([_message(records[i], float(score)) for i, score in zip(indices, scores, strict=True)])
    district_of = {record.key: record.district for record in records if record.district}
    return [
        Group(members=tuple(members), place=_majority(district_of.get(m.key) for m in members))
        for members in apply_decisions(groups, decisions)
        if len(members) > 1
    ]


def _centrality(block: sp.csr_matrix) -> np.ndarray:
    """Each row's cosine to the rows' sum (its group's centre), without touching the empty columns."""
    used, compact_indices = np.unique(block.indices, return_inverse=True)
    compact = sp.csr_matrix((block.data, compact_indices, block.indptr), shape=(block.shape[0], len(used)))
    dots = (compact @ compact.T).toarray()  # row·centre = the sum of its dot products with every row
    norm = float(np.sqrt(max(dots.sum(), 0.0))) or 1.0
    return np.asarray(dots.sum(axis=1) / norm).ravel()


def apply_decisions(groups: Iterable[Sequence[IssueMessage]], decisions: Decisions) -> list[list[IssueMessage]]:
    """Groups with unrelated messages taken out and the groups marked as one joined.

    Idempotent: applying the same decisions to groups that already reflect them changes
    nothing, so a cached ranking can be corrected at once, before the next recomputation.
    """
    lists = [[m for m in members if m.key not in decisions.unrelated] for members in groups]
    parent = list(range(len(lists)))
    where = {m.key: index for index, members in enumerate(lists) for m in members}

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for first, second in decisions.merges:
        if first in where and second in where:
            a, b = root(where[first]), root(where[second])
            if a != b:
                parent[max(a, b)] = min(a, b)
    joined: dict[int, list[IssueMessage]] = {}
    for index, members in enumerate(lists):
        joined.setdefault(root(index), []).extend(members)
    return [members for members in joined.values() if members]


def rank(groups: Iterable[Group], *, until: date, min_citizens: int = MIN_CITIZENS) -> list[HotIssue]:
    """Summarise the groups as issues and sort them by heat, hottest first."""
    issues = [
        summarise(group, until=until) for group in groups if len({m.citizen for m in group.members}) >= min_citizens
    ]
    issues.sort(key=lambda issue: (-issue.heat, -issue.messages, issue.issue_id))
    return issues


def summarise(group: Group, *, until: date) -> HotIssue:
    """One group's figures and heat (the formula is in the module's docstring)."""
    members = tuple(sorted(group.members, key=lambda m: (m.time, m.key)))
    citizens = len({m.citizen for m in members})
    count = len(members)
    likes = sum(max(m.likes, 0) for m in members)
    _, end = window_bounds(until, until)
    recent_start = end - timedelta(days=ALERT_DAYS)
    previous_start = recent_start - timedelta(days=ALERT_DAYS)
    recent = sum(1 for m in members if recent_start <= m.time < end)
    previous = sum(1 for m in members if previous_start <= m.time < recent_start)
    growth = min(max((recent - previous) / max(previous, 1), 0.0), 3.0)
    concentration = _largest_burst(members) / count
    volume = citizens + REPEAT_WEIGHT * (count - citizens)
    heat = volume * (1 + 0.5 * concentration) * (1 + 0.1 * math.log1p(likes)) * (1 + 0.25 * growth)
    central = max(members, key=lambda m: (m.centrality, -m.time.timestamp()))
    return HotIssue(
        issue_id=members[0].key,
        description=central.title[:TITLE_CHARS],
        place=group.place,
        terms=group.terms,
        first_at=members[0].time,
        last_at=members[-1].time,
        messages=count,
        citizens=citizens,
        likes=likes,
        concentration=round(concentration, 3),
        recent=recent,
        previous=previous,
        growth=round(growth, 3),
        heat=round(heat, 2),
        alert=recent >= ALERT_MIN_RECENT and recent >= ALERT_GROWTH * previous,
        members=members,
    )


def rerank(issues: Iterable[HotIssue], decisions: Decisions, *, until: date) -> list[HotIssue]:
    """Apply decisions to issues already ranked (a cached ranking) and rank them again."""
    issues = list(issues)
    owner = {m.key: issue for issue in issues for m in issue.members}
    groups = []
    for members in apply_decisions((issue.members for issue in issues), decisions):
        keep = owner[max(members, key=lambda m: m.centrality).key]
        groups.append(Group(members=tuple(members), place=keep.place, terms=keep.terms))
    return rank(groups, until=until)


def _largest_burst(members: Sequence[IssueMessage]) -> int:
    times = [m.time for m in members]  # sorted
    best = 0
    start = 0
    for stop, moment in enumerate(times):
        while moment - times[start] >= timedelta(days=BURST_DAYS):
            start += 1
        best = max(best, stop - start + 1)
    return best


def _message(record: HotRecord, centrality: float) -> IssueMessage:
    return IssueMessage(
        key=record.key,
        citizen=record.citizen,
        title=record.title[:TITLE_CHARS],
        time=record.time,
        likes=record.likes,
        centrality=centrality,
    )


def _majority(values: Iterable[str | None]) -> str | None:
    counts = Counter(value for value in values if value)
    return counts.most_common(1)[0][0] if counts else None


def _squeeze(text: str) -> str:
    return "".join(text.split())


def describe(issues: Sequence[HotIssue], records: dict[str, HotRecord], locate: Locate | None = None) -> list[HotIssue]:
    """Give issues their place and key terms (run on the top of a ranking only: it costs a few ms each).

    Args:
        issues: ranked issues.
        records: the records by key, for the text of each issue's central message.
        locate: finds the place a text names (with the district the CRM knows as a hint);
            None leaves the place to the districts the records carry.
    """
    described = []
    for issue in issues:
        central = max(issue.members, key=lambda m: m.centrality)
        place = issue.place
        record = records.get(central.key)
        if locate is not None and record is not None:
            place = locate(f"{record.title} {record.text}", issue.place) or place
        terms = issue.terms or key_terms(m.title for m in issue.members)
        described.append(replace(issue, place=place, terms=terms))
    return described


def key_terms(titles: Iterable[str], count: int = 3) -> tuple[str, ...]:
    """The content words most of the titles share (jieba, the duplicate finder's stop words)."""
    from crm_backend.dispatch.duplicates import content_words  # jieba: loaded only when describing

    seen: Counter[str] = Counter()
    for title in titles:
        seen.update(word for word in content_words(title) if not _CODED_PLACE.search(word))
    ranked = sorted(seen.items(), key=lambda item: (-item[1], item[0]))
    return tuple(word for word, n in ranked[:count] if n >= 2)


def hot_issues(
    records: Sequence[HotRecord],
    *,
    until: date,
    decisions: Decisions = Decisions(),
    limit: int | None = None,
    locate: Locate | None = None,
) -> list[HotIssue]:
    """The whole pipeline: group, apply decisions, rank, and describe the top `limit` issues."""
    ranked = rank(find_groups(records, decisions), until=until)
    top = ranked if limit is None else ranked[:limit]
    return describe(top, {record.key: record for record in records}, locate)
