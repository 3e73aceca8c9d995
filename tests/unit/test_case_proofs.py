"""Digit proofs (a case number and its phone's last four digits) against guessing, and what a
citizen's progress reply may show: the services and the actions against a real migrated database.

Failures count per case number from every sender and both paths (progress lookup and linking by
case); the fifth in a day locks the number against digit proofs for a day and tells the case's
citizen once. A global hourly ceiling of failures leaves one audit row an hour for supervisors.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.account import ActionLinkAccount
from actions.progress import ActionCheckProgress
from bot.proof_alarm import ProofAlarm
from crm_backend.errors import CaseProofLocked, LookupThrottled
from crm_backend.models import AuditEntry, ChannelIdentity, Conversation, Message
from crm_backend.services import linking
from crm_backend.services.conversations import current_conversation, resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.services.lookup import (
    CASE_LOCK_DURATION,
    MAX_PROOF_FAILURES_PER_CASE,
    PROOF_CEILING_ACTION,
    CaseProgress,
    lookup_progress,
    note_proof_ceiling,
)
from tests.unit.test_actions import DOMAIN, STATUS_WORDS, make_tracker, rendered, responses
from tests.unit.test_handoff_actions import SESSION_START, tracker_for, user

Sessions = async_sessionmaker[AsyncSession]

PHONE = "13812345678"
RIGHT, WRONG = PHONE[-4:], "0000"
NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
UNKNOWN = "20990101-0001"


# --- helpers --------------------------------------------------------------------------------


async def owner_with_case(sessions: Sessions, external_id: str = "owner") -> tuple[ChannelIdentity, str]:
    """A web chat citizen (identity and open conversation) who filed a case; (identity, case number)."""
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "web", external_id)
        await current_conversation(session, identity)
        case = await file_case(
            session, identity, Report(description="路灯坏了", location="A1区解放路", contact_phone=PHONE)
        )
        return identity, case.case_number


async def stranger(sessions: Sessions, external_id: str) -> ChannelIdentity:
    async with sessions.begin() as session:
        return await resolve_identity(session, "web", external_id)


async def lookup(
    sessions: Sessions,
    case_number: str,
    sender_key: str,
    digits: str | None,
    *,
    identity: ChannelIdentity | None = None,
    now: datetime | None = None,
) -> CaseProgress | None:
    """One progress query in its own committed transaction; the progress, or None."""
    async with sessions.begin() as session:
        outcome = await lookup_progress(
            session, sender_key=sender_key, case_number=case_number, phone_last4=digits, identity=identity, now=now
        )
    return outcome.progress


async def link(sessions: Sessions, external_id: str, case_number: str, digits: str, now: datetime | None = None) -> Any:
    """One link-by-case attempt from a fresh channel, committed even when refused (as the action does)."""
    identity = await stranger(sessions, external_id)
    async with sessions.begin() as session:
        found = await session.get(ChannelIdentity, identity.id)
        assert found is not None
        try:
            return await linking.link_by_case(session, found, case_number, digits, now=now)
        except linking.LinkRefused as refused:
            return refused


async def fail_from_fresh_senders(
    sessions: Sessions, case_number: str, count: int, now: datetime | None = None
) -> None:
    for i in range(count):
        assert await lookup(sessions, case_number, f"web:guesser-{i}", WRONG, now=now) is None


async def check_progress(alarm: ProofAlarm, sessions: Sessions, sender: str, number: str, digits: str | None) -> Any:
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(sender, slots={"case_number": number, "phone_last4": digits})
    await ActionCheckProgress(sessions, alarm, STATUS_WORDS).run(dispatcher, tracker, DOMAIN)
    return dispatcher


async def link_action(alarm: ProofAlarm, sessions: Sessions, sender: str, text: str) -> Any:
    await stranger(sessions, sender.partition(":")[2])  # the channel has talked to the bot before
    dispatcher = CollectingDispatcher()
    tracker = tracker_for(sender, [*SESSION_START, user("link_account", text)], None)
    await ActionLinkAccount(sessions, alarm).run(dispatcher, tracker, DOMAIN)
    return dispatcher


async def outgoing_texts(sessions: Sessions, identity: ChannelIdentity) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(Message.text)
            .join(Conversation, Message.conversation_id == Conversation.id)
            .where(Conversation.identity_id == identity.id, Message.direction == "out")
            .order_by(Message.id)
        )
        return list(rows.all())


# --- the per-case counter -------------------------------------------------------------------


async def test_five_failures_from_five_senders_lock_the_case_even_for_the_right_digits(sessions: Sessions) -> None:
    _, number = await owner_with_case(sessions)
    await fail_from_fresh_senders(sessions, number, MAX_PROOF_FAILURES_PER_CASE - 1)
    assert await lookup(sessions, number, "web:relative", RIGHT) is not None  # four failures: still open
    await fail_from_fresh_senders(sessions, number, 1)
    with pytest.raises(CaseProofLocked):
        await lookup(sessions, number, "web:fresh", RIGHT)
    with pytest.raises(CaseProofLocked):
        await link(sessions, "fresh-link", number, RIGHT)


async def test_linking_failures_and_lookup_failures_add_up(sessions: Sessions) -> None:
    _, number = await owner_with_case(sessions)
    for i in range(3):
        refused = await link(sessions, f"linker-{i}", number, WRONG)
        assert isinstance(refused, linking.LinkRefused) and refused.reason == "invalid"
    await fail_from_fresh_senders(sessions, number, 2)
    with pytest.raises(CaseProofLocked):
        await link(sessions, "linker-right", number, RIGHT)
    with pytest.raises(CaseProofLocked):
        await lookup(sessions, number, "web:looker-right", RIGHT)


async def test_the_lock_lasts_a_day_from_the_failure_that_set_it(sessions: Sessions) -> None:
    _, number = await owner_with_case(sessions)
    await fail_from_fresh_senders(sessions, number, MAX_PROOF_FAILURES_PER_CASE, now=NOW)
    with pytest.raises(CaseProofLocked):
        await lookup(sessions, number, "web:later", RIGHT, now=NOW + CASE_LOCK_DURATION - timedelta(minutes=1))
    progress = await lookup(sessions, number, "web:later", RIGHT, now=NOW + CASE_LOCK_DURATION + timedelta(minutes=1))
    assert progress is not None and progress.case_number == number


async def test_failures_older_than_a_day_do_not_count(sessions: Sessions) -> None:
    _, number = await owner_with_case(sessions)
    await fail_from_fresh_senders(sessions, number, MAX_PROOF_FAILURES_PER_CASE - 1, now=NOW - timedelta(hours=25))
    await fail_from_fresh_senders(sessions, number, 1, now=NOW)
    assert await lookup(sessions, number, "web:relative", RIGHT, now=NOW) is not None


async def test_the_owner_still_sees_a_locked_case_on_every_channel(sessions: Sessions) -> None:
    owner, number = await owner_with_case(sessions)
    async with sessions.begin() as session:
        telegram = ChannelIdentity(channel="telegram", external_id="tg-1", citizen_id=owner.citizen_id)
        session.add(telegram)
    await fail_from_fresh_senders(sessions, number, MAX_PROOF_FAILURES_PER_CASE)
    assert await lookup(sessions, number, owner.sender_id, None, identity=owner) is not None
    assert await lookup(sessions, number, "telegram:tg-1", None, identity=telegram) is not None


async def test_an_unknown_number_locks_like_a_real_one(sessions: Sessions) -> None:
    await fail_from_fresh_senders(sessions, UNKNOWN, MAX_PROOF_FAILURES_PER_CASE)
    with pytest.raises(CaseProofLocked):
        await lookup(sessions, UNKNOWN, "web:fresh", RIGHT)


async def test_a_throttled_sender_is_still_told_so_first(sessions: Sessions) -> None:
    """The per-sender 15-minute throttle stays, and keeps its own reply."""
    _, number = await owner_with_case(sessions)
    for _ in range(5):
        assert await lookup(sessions, number, "web:one", WRONG) is None
    with pytest.raises(LookupThrottled) as refused:
        await lookup(sessions, number, "web:one", RIGHT)
    assert not isinstance(refused.value, CaseProofLocked)


# --- the replies and the alert --------------------------------------------------------------


async def test_a_locked_reply_is_the_same_whether_the_case_exists_or_not(
    sessions: Sessions, proof_alarm: ProofAlarm
) -> None:
    _, number = await owner_with_case(sessions)
    for i in range(MAX_PROOF_FAILURES_PER_CASE):
        wrong = await check_progress(proof_alarm, sessions, f"web:g-{i}", number, WRONG)
        unknown = await check_progress(proof_alarm, sessions, f"web:h-{i}", UNKNOWN, RIGHT)
        assert responses(wrong) == responses(unknown) == ["utter_case_lookup_failed"]
    real = await check_progress(proof_alarm, sessions, "web:next", number, RIGHT)
    made_up = await check_progress(proof_alarm, sessions, "web:next-2", UNKNOWN, RIGHT)
    assert responses(real) == ["utter_case_proof_locked"]
    assert real.messages == made_up.messages
    linked = await link_action(proof_alarm, sessions, "web:linker", f"用工单号{number}和尾号{RIGHT}绑定")
    assert responses(linked) == ["utter_case_proof_locked"]


async def test_the_alert_is_written_once_to_the_owners_conversation(
    sessions: Sessions, proof_alarm: ProofAlarm
) -> None:
    owner, number = await owner_with_case(sessions)
    before = await outgoing_texts(sessions, owner)
    for i in range(3):
        assert responses(await check_progress(proof_alarm, sessions, f"web:g-{i}", number, WRONG)) == [
            "utter_case_lookup_failed"
        ]
    for i in range(2):
        refused = await link_action(proof_alarm, sessions, f"web:l-{i}", f"用工单号{number}和尾号{WRONG}绑定")
        assert responses(refused) == ["utter_link_invalid"]
    for i in range(3):  # refused while locked: no further failure, no second alert
        assert responses(await check_progress(proof_alarm, sessions, f"web:k-{i}", number, WRONG)) == [
            "utter_case_proof_locked"
        ]
    alert = rendered({"response": "utter_case_proof_alert", "case_number": number})
    assert await outgoing_texts(sessions, owner) == [*before, alert]
    assert responses(await check_progress(proof_alarm, sessions, owner.sender_id, number, None)) == [
        "utter_case_progress"
    ]


async def test_a_locked_unknown_number_alerts_nobody(sessions: Sessions, proof_alarm: ProofAlarm) -> None:
    owner, _ = await owner_with_case(sessions)
    before = await outgoing_texts(sessions, owner)
    for i in range(MAX_PROOF_FAILURES_PER_CASE):
        await check_progress(proof_alarm, sessions, f"web:g-{i}", UNKNOWN, RIGHT)
    assert await outgoing_texts(sessions, owner) == before


# --- the global ceiling ---------------------------------------------------------------------


async def ceiling_rows(sessions: Sessions) -> list[AuditEntry]:
    async with sessions() as session:
        rows = await session.scalars(select(AuditEntry).where(AuditEntry.action == PROOF_CEILING_ACTION))
        return list(rows.all())


async def test_the_hourly_ceiling_leaves_one_audit_row_an_hour(sessions: Sessions) -> None:
    for i in range(6):
        assert await lookup(sessions, f"20990101-{i:04d}", f"web:spray-{i}", WRONG, now=NOW) is None
        async with sessions.begin() as session:
            await note_proof_ceiling(session, failures_per_hour=3, now=NOW)
    [row] = await ceiling_rows(sessions)
    assert "3" in row.detail
    later = NOW + timedelta(minutes=61)
    assert await lookup(sessions, "20990102-0001", "web:spray-later", WRONG, now=later) is None
    async with sessions.begin() as session:
        assert not await note_proof_ceiling(session, failures_per_hour=3, now=later)  # one failure this hour
    for i in range(3):
        assert await lookup(sessions, f"20990102-{i + 2:04d}", f"web:spray-m{i}", WRONG, now=later) is None
    async with sessions.begin() as session:
        assert await note_proof_ceiling(session, failures_per_hour=3, now=later)
    assert len(await ceiling_rows(sessions)) == 2


async def test_the_actions_raise_the_ceiling_through_the_alarm(sessions: Sessions, proof_alarm: ProofAlarm) -> None:
    low = ProofAlarm(proof_alarm.followups, proof_alarm.feed, failures_per_hour=2)
    queue = proof_alarm.feed.subscribe()
    for i in range(4):
        await check_progress(low, sessions, f"web:spray-{i}", f"20990101-{i:04d}", WRONG)
    assert len(await ceiling_rows(sessions)) == 1
    event = queue.get_nowait()
    assert event is not None and event.kind == "security"
    assert queue.empty()
