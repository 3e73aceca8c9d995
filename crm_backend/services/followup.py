"""回访: asking a citizen whether they are satisfied once their case is 已办结, and acting on it.

A rating of 1–2 reopens the case for supervisor review (不满意重办: back to 办理中 and
marked 督办, so it heads the department's list); 3–5 moves it to 已回访. A citizen who
does not answer gets one reminder; after that the case is archived as 未回访.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import CrmError
from crm_backend.lifecycle import CaseAction, CaseStatus
from crm_backend.models import Citizen, ImportedMessage, Satisfaction, ServiceCase
from crm_backend.services.moves import Actor, move_case

FOLLOWUP_ACTOR = "回访"
SATISFIED_FROM = 3
_DIGIT = re.compile(r"(?<![\d.])([1-5])\s*(?:分|星|颗星)?(?![\d.])")
_CHINESE_DIGIT = re.compile(r"([一二三四五两])\s*(?:分|星|颗星)")
_CHINESE_VALUE = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5}
# Phrases and the rating they mean, strongest first; negations come before what they negate.
_LEXICON: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, ("很不满意", "非常不满意", "太差", "非常差", "很差", "极差", "根本没", "完全没", "糊弄", "投诉")),
    (2, ("不满意", "不太满意", "不怎么样", "没解决", "没有解决", "还没修", "敷衍", "太慢", "很慢", "差劲", "失望")),
    (5, ("非常满意", "很满意", "特别满意", "太好了", "非常好", "点赞", "超级快", "特别快", "非常感谢", "十分满意")),
    (4, ("满意", "挺好", "很好", "不错", "挺快", "很快", "及时", "辛苦了", "谢谢", "感谢", "解决了", "好评")),
    (3, ("还行", "一般", "凑合", "还可以", "马马虎虎", "过得去", "中规中矩")),
)


def rating_from_text(text: str) -> int | None:
    """A 1–5 rating from what a citizen wrote: a number if they gave one, else their words.

    Several kinds of words: any dissatisfaction wins (the case must be looked at again);
    otherwise the most positive one counts ("还行吧，挺快的" → 4).
    """
    text = text.strip()
    for pattern, value in ((_DIGIT, int), (_CHINESE_DIGIT, _CHINESE_VALUE.__getitem__)):
        found = pattern.search(text)
        if found:
            return value(found.group(1))
    remaining = text
    found_ratings: list[int] = []
    for rating, phrases in _LEXICON:
        for phrase in phrases:
            if phrase in remaining:
                found_ratings.append(rating)
                remaining = remaining.replace(phrase, "")
    if not found_ratings:
        return None
    negative = [r for r in found_ratings if r < SATISFIED_FROM]
    return min(negative) if negative else max(found_ratings)


@dataclass(frozen=True)
class FollowupResult:
    case_number: str
    rating: int
    reopened: bool


def _awaiting_rating(citizen_id: int) -> Select[tuple[ServiceCase]]:
    """The citizen's 已办结 cases that were asked and not yet rated, newest first."""
    return (
        select(ServiceCase)
        .where(
            ServiceCase.citizen_id == citizen_id,
            ServiceCase.status == CaseStatus.RESOLVED.value,
            ServiceCase.followup_asked_at.is_not(None),
        )
        .order_by(ServiceCase.id.desc())
    )


async def case_awaiting_rating(session: AsyncSession, citizen_id: int, case_number: str | None) -> ServiceCase | None:
    """The case a rating is about: the one named, if it is this citizen's and awaiting one, else the latest."""
    rows = list((await session.scalars(_awaiting_rating(citizen_id))).all())
    if case_number:
        rows = [case for case in rows if case.case_number == case_number] or rows
    return rows[0] if rows else None


async def record_rating(
    session: AsyncSession, case: ServiceCase, rating: int, comment: str, *, channel: str
) -> FollowupResult:
    """Store the rating and move the case on, in the caller's transaction.

    Raises:
        CrmError: a rating outside 1–5.
    """
    if not 1 <= rating <= 5:
        raise CrmError(f"rating {rating} outside 1-5")
    session.add(Satisfaction(case_id=case.id, rating=rating, comment=comment[:1000], channel=channel))
    reopened = rating < SATISFIED_FROM
    note = f"市民评价 {rating} 分" + (f"：{comment[:200]}" if comment else "")
    if reopened:
        note = f"不满意重办（{note}），请值班长复核"
        case.supervised = True
    await move_case(
        session, Actor.system(FOLLOWUP_ACTOR), case, CaseAction.REOPEN if reopened else CaseAction.REVIEW, note=note
    )
    case.followup_asked_at = case.followup_reminded_at = None  # a reopened case is asked again when resolved
    return FollowupResult(case.case_number, rating, reopened)


async def notices_enabled(session: AsyncSession, citizen_id: int) -> bool:
    citizen = await session.get(Citizen, citizen_id)
    return citizen is not None and citizen.notices_enabled


@dataclass(frozen=True)
class FollowupDue:
    to_ask: list[ServiceCase]
    to_remind: list[ServiceCase]
    to_archive: list[ServiceCase]


async def due_followups(
    session: AsyncSession, now: datetime, *, remind_after: timedelta, archive_after: timedelta, limit: int = 100
) -> FollowupDue:
    """What the follow-up loop has to do now: ask, remind once, or archive as 未回访."""
    resolved = ServiceCase.status == CaseStatus.RESOLVED.value
    not_asked = (ServiceCase.followup_asked_at.is_(None), ServiceCase.followup_reminded_at.is_(None))
    # History imported from a message board (`crm_backend.importer`) is nobody's to ask.
    imported = exists().where(ImportedMessage.case_id == ServiceCase.id)
    to_ask = await session.scalars(
        select(ServiceCase).where(resolved, *not_asked, ~imported).order_by(ServiceCase.id).limit(limit)
    )
    unanswered = ServiceCase.followup_reminded_at.is_(None), ServiceCase.followup_asked_at < now - remind_after
    to_remind = await session.scalars(
        select(ServiceCase).where(resolved, *unanswered).order_by(ServiceCase.id).limit(limit)
    )
    to_archive = await session.scalars(
        select(ServiceCase)
        .where(resolved, ServiceCase.followup_reminded_at < now - archive_after)
        .order_by(ServiceCase.id)
        .limit(limit)
    )
    return FollowupDue(list(to_ask.all()), list(to_remind.all()), list(to_archive.all()))


async def archive_unanswered(session: AsyncSession, case: ServiceCase) -> None:
    """No answer to the question nor to the reminder: archive the case as 未回访."""
    await move_case(
        session, Actor.system(FOLLOWUP_ACTOR), case, CaseAction.CLOSE_UNRATED, note="未回访：市民未答复满意度回访"
    )
    case.followup_asked_at = None
