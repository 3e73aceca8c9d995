"""Linking channels into one citizen, and the 回访 rules, against a real migrated database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.errors import LookupThrottled
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import AuditEntry, CaseEvent, ChannelIdentity, Satisfaction, ServiceCase, utcnow
from crm_backend.services import followup, linking
from crm_backend.services.conversations import resolve_identity
from crm_backend.services.intake import Report, file_case

Sessions = async_sessionmaker[AsyncSession]


async def web_case(sessions: Sessions, sender: str = "web-1", phone: str = "13812345678") -> tuple[int, str]:
    """A web chat identity with a filed case; (identity id, case number)."""
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", sender)
        case = await file_case(
            session, identity, Report(description="路灯坏了", location="A1区解放路", contact_phone=phone)
        )
        return identity.id, case.case_number


async def identity(session: AsyncSession, identity_id: int) -> ChannelIdentity:
    found = await session.get(ChannelIdentity, identity_id)
    assert found is not None
    return found


# --- linking ------------------------------------------------------------------------------


async def test_a_code_from_the_web_links_telegram_and_brings_the_web_cases(sessions: Sessions) -> None:
    web_id, number = await web_case(sessions)
    async with sessions.begin() as session:
        code = (await linking.issue_code(session, await identity(session, web_id))).code
        telegram = await resolve_identity(session, "telegram", "424242")
        assert len(code) == 6 and code.isdigit()
    async with sessions.begin() as session:
        citizen = await linking.redeem_code(session, await identity(session, telegram.id), code)
        web = await identity(session, web_id)
        assert citizen.id == web.citizen_id == (await identity(session, telegram.id)).citizen_id
        assert [case.case_number for case in await linking.citizen_cases(session, citizen.id)] == [number]
        logged = (await session.scalars(select(AuditEntry).where(AuditEntry.action == "citizen.link"))).all()
        assert len(logged) == 1 and "telegram channel linked by code" in logged[0].detail


async def test_a_code_works_once_and_not_after_ten_minutes(sessions: Sessions) -> None:
    web_id, _ = await web_case(sessions)
    now = utcnow()
    async with sessions.begin() as session:
        code = (await linking.issue_code(session, await identity(session, web_id), now=now)).code
        first = await resolve_identity(session, "telegram", "1")
        second = await resolve_identity(session, "telegram", "2")
    async with sessions.begin() as session:
        await linking.redeem_code(session, await identity(session, first.id), code, now=now + timedelta(minutes=1))
    async with sessions.begin() as session:
        with pytest.raises(linking.LinkRefused) as used:
            await linking.redeem_code(session, await identity(session, second.id), code, now=now + timedelta(minutes=2))
    assert used.value.reason == "invalid"
    async with sessions.begin() as session:
        late = (await linking.issue_code(session, await identity(session, web_id), now=now)).code
    async with sessions.begin() as session:
        with pytest.raises(linking.LinkRefused):
            await linking.redeem_code(
                session, await identity(session, second.id), late, now=now + timedelta(minutes=11)
            )


async def test_a_new_code_cancels_the_old_one_and_a_channel_cannot_link_to_itself(sessions: Sessions) -> None:
    web_id, _ = await web_case(sessions)
    async with sessions.begin() as session:
        web = await identity(session, web_id)
        old = (await linking.issue_code(session, web)).code
        new = (await linking.issue_code(session, web)).code
        telegram = await resolve_identity(session, "telegram", "9")
    async with sessions.begin() as session:
        with pytest.raises(linking.LinkRefused) as same:
            await linking.redeem_code(session, await identity(session, web_id), new)
        assert same.value.reason == "same_citizen"
    if old != new:
        async with sessions.begin() as session:
            with pytest.raises(linking.LinkRefused):
                await linking.redeem_code(session, await identity(session, telegram.id), old)


async def test_guessing_codes_is_throttled(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        telegram = await resolve_identity(session, "telegram", "guesser")
    for guess in range(5):
        async with sessions.begin() as session:
            with pytest.raises(linking.LinkRefused):
                await linking.redeem_code(session, await identity(session, telegram.id), f"{guess:06d}")
    async with sessions.begin() as session:
        with pytest.raises(LookupThrottled):
            await linking.redeem_code(session, await identity(session, telegram.id), "000009")


async def test_a_case_number_and_the_phones_last_four_digits_link_too(sessions: Sessions) -> None:
    web_id, number = await web_case(sessions, phone="13912345678")
    async with sessions.begin() as session:
        telegram = await resolve_identity(session, "telegram", "77")
    async with sessions.begin() as session:
        with pytest.raises(linking.LinkRefused):
            await linking.link_by_case(session, await identity(session, telegram.id), number, "0000")
    async with sessions.begin() as session:
        with pytest.raises(linking.LinkRefused):
            await linking.link_by_case(session, await identity(session, telegram.id), "20990101-0001", "5678")
    async with sessions.begin() as session:
        citizen = await linking.link_by_case(session, await identity(session, telegram.id), number, "5678")
        assert citizen.id == (await identity(session, web_id)).citizen_id


# --- 回访 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("5", 5),
        ("给4分吧", 4),
        ("三分", 3),
        ("一星", 1),
        ("非常满意，处理得很及时", 5),
        ("还行吧，挺快的", 4),
        ("一般般", 3),
        ("不满意，问题根本没解决", 1),
        ("不太满意，太慢了", 2),
        ("谢谢你们", 4),
        ("明天下雨吗", None),
        ("13812345678", None),
    ],
)
def test_ratings_are_read_from_numbers_and_from_words(text: str, rating: int | None) -> None:
    assert followup.rating_from_text(text) == rating


async def resolved_case(sessions: Sessions) -> str:
    _, number = await web_case(sessions, sender="rated")
    async with sessions.begin() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
        assert case is not None
        case.status, case.followup_asked_at = CaseStatus.RESOLVED.value, utcnow()
    return number


async def test_a_good_rating_moves_the_case_to_reviewed(sessions: Sessions) -> None:
    number = await resolved_case(sessions)
    async with sessions.begin() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
        assert case is not None
        awaiting = await followup.case_awaiting_rating(session, case.citizen_id, None)
        assert awaiting is not None and awaiting.case_number == number
        result = await followup.record_rating(session, case, 4, "挺快的", channel="web")
        assert not result.reopened
    async with sessions() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
        assert case is not None and case.status == "reviewed" and not case.supervised
        assert (await session.scalar(select(Satisfaction.rating))) == 4
        assert await followup.case_awaiting_rating(session, case.citizen_id, None) is None


async def test_a_bad_rating_reopens_the_case_for_supervisor_review(sessions: Sessions) -> None:
    number = await resolved_case(sessions)
    async with sessions.begin() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
        assert case is not None
        assert (await followup.record_rating(session, case, 1, "根本没修", channel="web")).reopened
    async with sessions() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
        assert case is not None and case.status == "in_progress" and case.supervised
        event = await session.scalar(select(CaseEvent).order_by(CaseEvent.id.desc()).limit(1))
        assert event is not None and event.actor == "回访" and "不满意重办" in event.note and "根本没修" in event.note


async def test_no_answer_gets_one_reminder_then_the_case_is_archived_unreviewed(sessions: Sessions) -> None:
    number = await resolved_case(sessions)
    hour = timedelta(hours=1)
    rules = {"remind_after": 24 * hour, "archive_after": 24 * hour}
    start = utcnow()
    async with sessions.begin() as session:
        due = await followup.due_followups(session, start + hour, **rules)
        assert (due.to_ask, due.to_remind, due.to_archive) == ([], [], [])
        due = await followup.due_followups(session, start + 25 * hour, **rules)
        assert [c.case_number for c in due.to_remind] == [number] and due.to_archive == []
        due.to_remind[0].followup_reminded_at = start + 25 * hour
    async with sessions.begin() as session:
        due = await followup.due_followups(session, start + 30 * hour, **rules)
        assert due.to_remind == [] and due.to_archive == []
        due = await followup.due_followups(session, start + 50 * hour, **rules)
        assert [c.case_number for c in due.to_archive] == [number]
        await followup.archive_unanswered(session, due.to_archive[0])
    async with sessions() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
        assert case is not None and case.status == "archived"
        event = await session.scalar(select(CaseEvent).order_by(CaseEvent.id.desc()).limit(1))
        assert event is not None and event.note.startswith("未回访")


async def test_a_resolved_case_not_yet_asked_is_due_to_be_asked(sessions: Sessions) -> None:
    _, number = await web_case(sessions, sender="to-ask")
    async with sessions.begin() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
        assert case is not None
        case.status = CaseStatus.RESOLVED.value
    async with sessions() as session:
        due = await followup.due_followups(
            session, utcnow(), remind_after=timedelta(hours=24), archive_after=timedelta(hours=24)
        )
        assert [c.case_number for c in due.to_ask] == [number]
