"""Finding an open case that a new report repeats (same problem, same place).

Similarity is the cosine of jieba content-word counts (words of two or more characters,
stop words dropped). A new report is linked to an open case of the same district filed in
the last 30 days when the similarity is at least `DUPLICATE_THRESHOLD`.

0.6 comes from `python -m benchmarks.duplicate_threshold`, which scores every pair of
training messages naming the same district: 45 pairs score 0.6 or more, and the ones read
were all the same complaint sent again or reworded; of the 29 pairs between 0.45 and 0.6
most were different problems of the same kind (sanitation in two different estates), a
few were rewordings. At 0.6 a missed duplicate costs a second case, while a false merge
would hide a different problem, and the citizen can still insist on a new case.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.lifecycle import CaseStatus
from crm_backend.models import ServiceCase, utcnow
from crm_backend.segmentation import shared_segmenter

DUPLICATE_THRESHOLD = 0.6
LOOKBACK = timedelta(days=30)
MAX_CANDIDATES = 300
OPEN_STATUSES = tuple(
    status.value
    for status in (
        CaseStatus.RECEIVED,
        CaseStatus.DISPATCHED,
        CaseStatus.ACCEPTED,
        CaseStatus.IN_PROGRESS,
        CaseStatus.RETURNED,
    )
)
_STOP_WORDS = frozenset(
    (
        "我们 你们 他们 这个 那个 一个 没有 现在 已经 希望 领导 政府 相关 部门 问题 情况 反映 投诉 "
        "请问 谢谢 感谢 您好 你好 严重 影响 我的 我家 这里 那里 非常 一直 可以 什么 怎么 为什么 "
        "但是 而且 因为 所以 如果 还是 就是 这样 这些 那些 时候 今天 每天"
    ).split()
)


@dataclass(frozen=True)
class DuplicateMatch:
    """An open case a new report repeats."""

    case_number: str
    case_id: int
    similarity: float


def content_words(text: str) -> Counter[str]:
    """Counts of the words that carry the complaint's content (jieba's own dictionary)."""
    return Counter(
        word
        for word in shared_segmenter().lcut(text[:2000])
        if len(word) >= 2 and word not in _STOP_WORDS and not word.isdigit()
    )


def similarity(a: Counter[str], b: Counter[str]) -> float:
    """Cosine similarity of two word-count vectors (0 when either is empty)."""
    if not a or not b:
        return 0.0
    dot = sum(count * b[word] for word, count in a.items() if word in b)
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm


async def find_duplicate(
    session: AsyncSession, description: str, district: str | None, now: datetime | None = None
) -> DuplicateMatch | None:
    """The most similar open case of the same district from the last 30 days, if similar enough."""
    if not district:
        return None
    now = now or utcnow()
    rows = await session.execute(
        select(ServiceCase.id, ServiceCase.case_number, ServiceCase.description)
        .where(
            ServiceCase.district == district,
            ServiceCase.status.in_(OPEN_STATUSES),
            ServiceCase.created_at >= now - LOOKBACK,
        )
        .order_by(ServiceCase.id.desc())
        .limit(MAX_CANDIDATES)
    )
    # Segmenting up to 300 descriptions is CPU work: keep it off the event loop.
    return await asyncio.to_thread(best_match, description, list(rows.tuples()))


def best_match(description: str, candidates: list[tuple[int, str, str]]) -> DuplicateMatch | None:
    """The candidate (id, case number, description) most similar to `description`, if similar enough."""
    words = content_words(description)
    best: DuplicateMatch | None = None
    for case_id, case_number, other in candidates:
        score = similarity(words, content_words(other))
        if score >= DUPLICATE_THRESHOLD and (best is None or score > best.similarity):
            best = DuplicateMatch(case_number=case_number, case_id=case_id, similarity=round(score, 3))
    return best
