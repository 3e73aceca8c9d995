"""The CRM services against a real, migrated SQLite database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.errors import CaseProofLocked, InvalidInput, InvalidTransition, LookupThrottled, NotFound
from crm_backend.lifecycle import CaseStatus, Role
from crm_backend.models import (
    AuditEntry,
    Base,
    CaseEvent,
    ChannelIdentity,
    Citizen,
    Conversation,
    LookupAttempt,
    Message,
    ServiceCase,
    utcnow,
)
from crm_backend.services.cases import get_case
from crm_backend.services.conversations import (
    OutgoingMessage,
    conversation_history,
    current_conversation,
    find_identity,
    find_logged_message,
    log_incoming,
    log_outgoing,
    resolve_identity,
)
from crm_backend.services.handoff import release_to_bot, request_handoff, waiting_conversations
from crm_backend.services.intake import CHINA_TZ, MAX_DESCRIPTION_CHARS, Report, file_case, next_case_number
from crm_backend.services.lookup import (
    MAX_FAILURES_PER_SENDER,
    MAX_PROOF_FAILURES_PER_CASE,
    THROTTLE_WINDOW,
    CaseProgress,
    lookup_progress,
)
from crm_backend.services.moves import Actor, ActorKind, move_case
from crm_backend.services.stats import collect_stats
from tests.support.moves import advance

Sessions = async_sessionmaker[AsyncSession]

PHONE = "13812345678"
NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


# --- helpers -----------------------------------------------------------------


def make_report(
    phone: str = PHONE, description: str = "小区门口的路灯坏了三天了", location: str = "朝阳区建国路88号"
) -> Report:
    return Report(description=description, location=location, contact_phone=phone, district="朝阳区")


async def new_identity(sessions: Sessions, external_id: str, channel: str = "web") -> ChannelIdentity:
    """A channel identity (and its new citizen), committed."""
    async with sessions.begin() as session:
        return await resolve_identity(session, channel, external_id)


async def other_identity_of(sessions: Sessions, identity: ChannelIdentity, external_id: str) -> ChannelIdentity:
    """A second channel of the same citizen (say, their Telegram account), committed."""
    async with sessions.begin() as session:
        other = ChannelIdentity(channel="telegram", external_id=external_id, citizen_id=identity.citizen_id)
        session.add(other)
    return other


async def file(sessions: Sessions, identity: ChannelIdentity, report: Report | None = None) -> ServiceCase:
    """File a case for `identity` in its own committed transaction."""
    async with sessions.begin() as session:
        return await file_case(session, identity, report or make_report())


async def insert_case(
    session: AsyncSession, identity: ChannelIdentity, case_number: str, created_at: datetime | None = None
) -> None:
    """A bare case row with a chosen number (and filing time), to set up numbering and limit scenarios."""
    session.add(
        ServiceCase(
            case_number=case_number,
            citizen_id=identity.citizen_id,
            identity_id=identity.id,
            description="井盖缺失",
            location="海淀区",
            contact_phone=PHONE,
            status=CaseStatus.RECEIVED.value,
            **({"created_at": created_at, "updated_at": created_at} if created_at else {}),
        )
    )
    await session.flush()


async def lookup(
    sessions: Sessions,
    case_number: str,
    *,
    sender_key: str,
    phone_last4: str | None = None,
    identity: ChannelIdentity | None = None,
    now: datetime | None = None,
) -> CaseProgress | None:
    """One progress query in its own committed transaction, as the action makes it."""
    async with sessions.begin() as session:
        outcome = await lookup_progress(
            session,
            sender_key=sender_key,
            case_number=case_number,
            phone_last4=phone_last4,
            identity=identity,
            now=now,
        )
    return outcome.progress


async def fail_lookups(
    sessions: Sessions, count: int, case_number: str, *, sender_keys: list[str], now: datetime | None = None
) -> None:
    """`count` failed lookups (wrong digits) of `case_number`, cycling through `sender_keys`."""
    for i in range(count):
        result = await lookup(
            sessions, case_number, sender_key=sender_keys[i % len(sender_keys)], phone_last4="0000", now=now
        )
        assert result is None


async def count_rows(sessions: Sessions, model: type[Base]) -> int:
    async with sessions() as session:
        return (await session.scalar(select(func.count()).select_from(model))) or 0


# --- intake ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "day"),
    [
        (datetime(2026, 11, 23, 15, 59, tzinfo=UTC), "20261123"),
        (datetime(2026, 11, 23, 16, 0, tzinfo=UTC), "20261124"),
        (datetime(2026, 11, 23, 17, 0, tzinfo=UTC), "20261124"),
        (datetime(2026, 12, 31, 16, 30, tzinfo=UTC), "20270101"),
        (datetime(2026, 11, 24, 0, 30, tzinfo=CHINA_TZ), "20261124"),
    ],
)
async def test_case_number_carries_the_beijing_date(sessions: Sessions, now: datetime, day: str) -> None:
    async with sessions() as session:
        assert await next_case_number(session, now) == f"{day}-0001"


async def test_case_numbers_are_sequential_within_a_day_and_restart_the_next(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "numbering")
    evening = datetime(2026, 11, 23, 17, 0, tzinfo=UTC)  # 01:00 on the 24th in Beijing
    async with sessions.begin() as session:
        await insert_case(session, identity, "20261123-0041")
        await insert_case(session, identity, "20261124-0001")
        await insert_case(session, identity, "20261124-0002")
        await insert_case(session, identity, "20261125-0099")
        assert await next_case_number(session, evening) == "20261124-0003"
        assert await next_case_number(session, evening - timedelta(hours=2)) == "20261123-0042"
        assert await next_case_number(session, evening + timedelta(days=2)) == "20261126-0001"


async def test_a_day_never_hands_out_a_number_twice_and_goes_on_past_9999(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "busy-day")
    now = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    async with sessions.begin() as session:
        await insert_case(session, identity, "20261124-0998")
        await insert_case(session, identity, "20261124-9998")
        assert await next_case_number(session, now) == "20261124-9999"
        await insert_case(session, identity, "20261124-9999")
        assert await next_case_number(session, now) == "20261124-10000"


async def test_filed_cases_get_consecutive_numbers_for_today(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "filer")
    days = {utcnow().astimezone(CHINA_TZ).strftime("%Y%m%d")}
    first = await file(sessions, identity)
    second = await file(sessions, identity)
    days.add(utcnow().astimezone(CHINA_TZ).strftime("%Y%m%d"))
    assert first.case_number[:8] in days
    assert first.case_number == f"{first.case_number[:8]}-0001"
    assert second.case_number == f"{first.case_number[:8]}-0002"


async def test_twenty_citizens_filing_at_once_all_get_a_case_with_its_own_number(sessions: Sessions) -> None:
    # Thirty citizens confirming their reports in one minute, on several app processes: on
    # PostgreSQL (test_postgres.py runs this again) they all read the same latest number.
    identities = [await new_identity(sessions, f"rush-{number:02d}") for number in range(20)]

    async def file_and_route(identity: ChannelIdentity) -> str:
        async with sessions.begin() as session:
            case = await file_case(session, identity, make_report())
            await session.flush()  # the rest of the assistant's transaction (routing) before the commit
            return case.case_number

    numbers = await asyncio.gather(*(file_and_route(identity) for identity in identities))
    assert sorted(int(number[9:]) for number in numbers) == list(range(1, 21))


async def test_filing_writes_the_case_and_its_first_event(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "filer")
    async with sessions.begin() as session:
        conversation = await current_conversation(session, identity)
        case = await file_case(
            session,
            identity,
            make_report(phone="138 1234 5678"),
            conversation_id=conversation.id,
            actor=Actor.system("web-bot"),
        )
    async with sessions() as session:
        stored = await get_case(session, case.case_number, with_events=True)
    assert stored.status == "received"
    assert stored.citizen_id == identity.citizen_id
    assert stored.identity_id == identity.id
    assert stored.conversation_id == conversation.id
    assert stored.contact_phone == "13812345678"
    assert (stored.description, stored.location, stored.district) == (
        "小区门口的路灯坏了三天了",
        "朝阳区建国路88号",
        "朝阳区",
    )
    assert [(e.from_status, e.to_status, e.actor, e.note) for e in stored.events] == [(None, "received", "web-bot", "")]


async def test_filing_strips_description_and_location(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "filer")
    case = await file(sessions, identity, make_report(description="  井盖丢了很危险  ", location="  海淀区中关村  "))
    assert (case.description, case.location) == ("井盖丢了很危险", "海淀区中关村")


async def test_filing_truncates_a_huge_description(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "filer")
    case = await file(sessions, identity, make_report(description="噪" * (MAX_DESCRIPTION_CHARS + 500)))
    async with sessions() as session:
        stored = await get_case(session, case.case_number)
    assert len(stored.description) == MAX_DESCRIPTION_CHARS == 5000


@pytest.mark.parametrize(("phone", "reason"), [("12345", "phone_length"), ("12345678901", "phone_prefix")])
async def test_filing_refuses_an_invalid_phone_and_writes_nothing(sessions: Sessions, phone: str, reason: str) -> None:
    identity = await new_identity(sessions, "filer")
    with pytest.raises(InvalidInput) as caught:
        await file(sessions, identity, make_report(phone=phone))
    assert caught.value.reason == reason
    assert await count_rows(sessions, ServiceCase) == 0
    assert await count_rows(sessions, CaseEvent) == 0


async def test_filing_gives_the_citizen_their_first_phone_and_keeps_it(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "filer")
    await file(sessions, identity, make_report(phone="+86 139 0000 1111"))
    await file(sessions, identity, make_report(phone="13722223333"))
    async with sessions() as session:
        citizen = await session.get(Citizen, identity.citizen_id)
    assert citizen is not None
    assert citizen.phone == "13900001111"


# --- lookup ------------------------------------------------------------------


async def test_the_filer_gets_progress_without_digits(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    progress = await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner)
    assert progress is not None
    assert progress.case_number == case.case_number
    assert progress.status is CaseStatus.RECEIVED
    assert progress.department is None
    assert (progress.latest_reply, progress.result) == (None, None)


async def test_another_channel_of_the_same_citizen_gets_progress_without_digits(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    telegram = await other_identity_of(sessions, owner, "tg-42")
    case = await file(sessions, owner)
    progress = await lookup(sessions, case.case_number, sender_key="telegram:tg-42", identity=telegram)
    assert progress is not None
    assert progress.case_number == case.case_number


async def test_a_stranger_with_the_right_digits_gets_progress(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    stranger = await new_identity(sessions, "stranger")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        await advance(session, case.case_number, "dispatch", note="已派至市政", department="市政")
    progress = await lookup(
        sessions, case.case_number, sender_key="web:stranger", phone_last4="5678", identity=stranger
    )
    assert progress is not None
    assert (progress.status, progress.department, progress.latest_reply) == (CaseStatus.DISPATCHED, "市政", None)


async def test_a_stranger_without_digits_gets_nothing(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    assert await lookup(sessions, case.case_number, sender_key="web:stranger") is None


async def test_wrong_digits_and_unknown_case_get_the_same_answer(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    wrong_digits = await lookup(sessions, case.case_number, sender_key="web:s1", phone_last4="0000")
    unknown_case = await lookup(sessions, "20990101-0001", sender_key="web:s2", phone_last4="5678")
    assert wrong_digits is None
    assert unknown_case is None


async def test_every_lookup_is_recorded_with_its_outcome(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    await lookup(sessions, case.case_number, sender_key="web:s1", phone_last4="0000")
    await lookup(sessions, case.case_number, sender_key="web:s1", phone_last4="5678")
    await lookup(sessions, "20990101-0001", sender_key="web:s1", phone_last4="5678")
    async with sessions() as session:
        rows = (await session.scalars(select(LookupAttempt).order_by(LookupAttempt.id))).all()
    assert [(r.sender_key, r.case_number, r.succeeded) for r in rows] == [
        ("web:s1", case.case_number, False),
        ("web:s1", case.case_number, True),
        ("web:s1", "20990101-0001", False),
    ]


async def test_a_sender_is_throttled_after_too_many_failures_even_with_the_right_digits(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    await fail_lookups(sessions, MAX_FAILURES_PER_SENDER - 1, case.case_number, sender_keys=["web:guesser"])
    assert await lookup(sessions, case.case_number, sender_key="web:guesser", phone_last4="5678") is not None
    await fail_lookups(sessions, 1, "20990101-0001", sender_keys=["web:guesser"])
    with pytest.raises(LookupThrottled):
        await lookup(sessions, case.case_number, sender_key="web:guesser", phone_last4="5678")
    assert await lookup(sessions, case.case_number, sender_key="web:someone-else", phone_last4="5678") is not None


async def test_successful_lookups_do_not_count_towards_the_throttle(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    for _ in range(MAX_FAILURES_PER_SENDER + 2):
        assert await lookup(sessions, case.case_number, sender_key="web:relative", phone_last4="5678") is not None


async def test_failures_older_than_the_window_no_longer_throttle(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    earlier = NOW - THROTTLE_WINDOW - timedelta(minutes=1)
    for i in range(MAX_FAILURES_PER_SENDER):  # other numbers: the case's own counter would lock it
        await fail_lookups(sessions, 1, f"20990101-{i:04d}", sender_keys=["web:g"], now=earlier)
    progress = await lookup(sessions, case.case_number, sender_key="web:g", phone_last4="5678", now=NOW)
    assert progress is not None
    with pytest.raises(LookupThrottled):
        await lookup(sessions, case.case_number, sender_key="web:g", phone_last4="5678", now=earlier)


async def test_failures_spread_over_senders_lock_the_case_for_strangers_but_not_the_owner(
    sessions: Sessions,
) -> None:
    owner = await new_identity(sessions, "owner")
    telegram = await other_identity_of(sessions, owner, "tg-7")
    case = await file(sessions, owner)
    senders = [f"web:fresh-{i}" for i in range(MAX_PROOF_FAILURES_PER_CASE)]
    await fail_lookups(sessions, MAX_PROOF_FAILURES_PER_CASE - 1, case.case_number, sender_keys=senders)
    assert await lookup(sessions, case.case_number, sender_key="web:new", phone_last4="5678") is not None
    await fail_lookups(sessions, 1, case.case_number, sender_keys=senders[-1:])

    with pytest.raises(CaseProofLocked):
        await lookup(sessions, case.case_number, sender_key="web:newer", phone_last4="5678")
    assert await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner) is not None
    assert await lookup(sessions, case.case_number, sender_key="telegram:tg-7", identity=telegram) is not None


async def test_the_owner_is_not_throttled_by_their_own_failures_elsewhere(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    await fail_lookups(sessions, MAX_FAILURES_PER_SENDER, "20990101-0001", sender_keys=["web:owner"])
    assert await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner) is not None


async def add_event(sessions: Sessions, case: ServiceCase, kind: str, note: str, at: datetime) -> None:
    async with sessions.begin() as session:
        session.add(
            CaseEvent(
                case_id=case.id,
                from_status=CaseStatus.DISPATCHED.value,
                to_status=CaseStatus.DISPATCHED.value,
                kind=kind,
                note=note,
                actor="staff:li",
                created_at=at,
            )
        )


@pytest.mark.parametrize("kind", ["note", "extension", "supervise"])
async def test_progress_never_reads_out_an_internal_event(sessions: Sessions, kind: str) -> None:
    """Internal notes, 延期 reasons and 督办 remarks stay inside; the last status change is shown."""
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    await add_event(sessions, case, "status", "已派至区市政", NOW)
    await add_event(sessions, case, kind, "内部：投诉人情绪激动，注意沟通", NOW + timedelta(hours=1))
    progress = await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner)
    assert progress is not None
    assert (progress.latest_reply, progress.updated_at) == (None, NOW)


async def test_progress_reads_out_a_staff_reply_to_the_citizen(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    await add_event(sessions, case, "reply", "已联系施工队，明天修复", NOW)
    await add_event(sessions, case, "note", "施工队电话 010-1234", NOW + timedelta(minutes=5))
    progress = await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner)
    assert progress is not None and progress.latest_reply == "已联系施工队，明天修复"


async def test_a_status_note_never_reaches_the_citizen(sessions: Sessions) -> None:
    """A 退回 reason is the department's word to the dispatcher, not to the citizen."""
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        await advance(session, case.case_number, "dispatch", department="市政")
        await advance(session, case.case_number, "return", note="不属于本单位职责，请改派")
    progress = await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner)
    assert progress is not None
    assert (progress.status, progress.latest_reply, progress.result) == (CaseStatus.RETURNED, None, None)


async def test_progress_of_a_resolved_case_gives_the_result_not_the_rating(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        await advance(session, case.case_number, "dispatch", department="市政")
        await advance(session, case.case_number, "accept")
        await advance(session, case.case_number, "start")
        await advance(session, case.case_number, "resolve", note="路灯已于今日更换，恢复照明")
    resolved = await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner)
    assert resolved is not None and resolved.result == "路灯已于今日更换，恢复照明"
    async with sessions.begin() as session:
        await advance(session, case.case_number, "review", note="市民评价：5 分")
    reviewed = await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner)
    assert reviewed is not None
    assert (reviewed.status, reviewed.result) == (CaseStatus.REVIEWED, "路灯已于今日更换，恢复照明")
    assert reviewed.updated_at == resolved.updated_at  # when the result was given, not the rating


async def test_a_reopened_case_has_no_result_until_resolved_again(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        for action in ("dispatch", "accept", "start", "resolve", "reopen"):
            await advance(session, case.case_number, action, note="说明", department="市政")
    progress = await lookup(sessions, case.case_number, sender_key="web:owner", identity=owner)
    assert progress is not None and (progress.status, progress.result) == (CaseStatus.IN_PROGRESS, None)


# --- conversations -----------------------------------------------------------


async def test_resolve_identity_is_idempotent(sessions: Sessions) -> None:
    first = await new_identity(sessions, "abc")
    again = await new_identity(sessions, "abc")
    assert (again.id, again.citizen_id) == (first.id, first.citizen_id)
    assert first.sender_id == "web:abc"
    assert await count_rows(sessions, ChannelIdentity) == 1
    assert await count_rows(sessions, Citizen) == 1


async def test_the_same_external_id_on_another_channel_is_another_citizen(sessions: Sessions) -> None:
    web = await new_identity(sessions, "abc", channel="web")
    rest = await new_identity(sessions, "abc", channel="rest")
    assert web.id != rest.id
    assert web.citizen_id != rest.citizen_id


@pytest.mark.parametrize(
    ("sender_id", "found"), [("web:abc", True), ("rest:abc", False), ("abc", False), ("web:", False)]
)
async def test_find_identity_parses_sender_ids(sessions: Sessions, sender_id: str, found: bool) -> None:
    identity = await new_identity(sessions, "abc")
    async with sessions() as session:
        result = await find_identity(session, sender_id)
    assert (result.id if result else None) == (identity.id if found else None)


@pytest.mark.parametrize(
    ("silence", "same"),
    [
        (timedelta(minutes=5), True),
        (timedelta(hours=23, minutes=59), True),
        (timedelta(hours=24), False),
        (timedelta(days=3), False),
    ],
)
async def test_current_conversation_is_kept_for_a_day_of_silence(
    sessions: Sessions, silence: timedelta, same: bool
) -> None:
    identity = await new_identity(sessions, "abc")
    async with sessions.begin() as session:
        first = await current_conversation(session, identity, now=NOW)
    async with sessions.begin() as session:
        later = await current_conversation(session, identity, now=NOW + silence)
    assert (later.id == first.id) is same
    assert await count_rows(sessions, Conversation) == (1 if same else 2)
    assert later.channel == "web"


async def test_a_conversation_waiting_for_staff_stays_current_however_long(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "abc")
    async with sessions.begin() as session:
        first = await current_conversation(session, identity, now=NOW)
        await request_handoff(session, first)
    async with sessions.begin() as session:
        later = await current_conversation(session, identity, now=NOW + timedelta(days=3))
    assert later.id == first.id


async def test_log_incoming_truncates_and_records_the_original_length(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "abc")
    an_hour_ago = utcnow() - timedelta(hours=1)
    async with sessions.begin() as session:
        conversation = await current_conversation(session, identity, now=an_hour_ago)
        long_one = log_incoming(session, conversation, "路" * 50, max_chars=10)
        short_one = log_incoming(session, conversation, "你好", max_chars=10)
    assert conversation.last_message_at > an_hour_ago
    async with sessions() as session:
        stored = {m.id: m for m in (await session.scalars(select(Message))).all()}
    long_stored, short_stored = stored[long_one.id], stored[short_one.id]
    assert (long_stored.text, long_stored.original_length, long_stored.truncated) == ("路" * 10, 50, True)
    assert (short_stored.text, short_stored.original_length, short_stored.truncated) == ("你好", 2, False)
    assert (long_stored.direction, long_stored.sender_kind, long_stored.channel) == ("in", "citizen", "web")


async def test_find_logged_message_dedupes_by_client_msg_id_within_a_conversation(sessions: Sessions) -> None:
    alice = await new_identity(sessions, "alice")
    bob = await new_identity(sessions, "bob")
    async with sessions.begin() as session:
        alice_conv = await current_conversation(session, alice)
        bob_conv = await current_conversation(session, bob)
        logged = log_incoming(session, alice_conv, "井盖丢了", max_chars=100, client_msg_id="m-1")
    async with sessions() as session:
        found = await find_logged_message(session, alice_conv, "m-1")
        assert found is not None
        assert (found.id, found.text) == (logged.id, "井盖丢了")
        assert await find_logged_message(session, alice_conv, "m-2") is None
        assert await find_logged_message(session, bob_conv, "m-1") is None


async def test_conversation_history_is_oldest_first_and_limited(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "abc")
    async with sessions.begin() as session:
        conversation = await current_conversation(session, identity)
        log_incoming(session, conversation, "一", max_chars=100)
        log_outgoing(
            session, conversation, [OutgoingMessage(text="二"), OutgoingMessage(text="三", sender_kind="staff")]
        )
        log_incoming(session, conversation, "四", max_chars=100)
    async with sessions() as session:
        everything = await conversation_history(session, conversation)
        latest_two = await conversation_history(session, conversation, limit=2)
    assert [m.text for m in everything] == ["一", "二", "三", "四"]
    assert [m.direction for m in everything] == ["in", "out", "out", "in"]
    assert [m.text for m in latest_two] == ["三", "四"]


# --- cases -------------------------------------------------------------------


async def test_an_allowed_move_writes_an_event_and_an_audit_row_with_from_to_actor_and_note(
    sessions: Sessions,
) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        await advance(session, case.case_number, "dispatch", actor="staff:wang", note="转城管", department="城管执法局")
    async with sessions() as session:
        stored = await get_case(session, case.case_number, with_events=True)
        audit_rows = (await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
    assert (stored.status, stored.department) == ("dispatched", "城管执法局")
    assert [(e.from_status, e.to_status, e.actor, e.note) for e in stored.events] == [
        (None, "received", "bot", ""),
        ("received", "dispatched", "staff:wang", "城管执法局。转城管"),
    ]
    assert [(row.action, row.actor, row.target) for row in audit_rows] == [
        ("case.file", "bot", case.case_number),
        ("case.dispatch", "staff:wang", case.case_number),
    ]
    assert stored.updated_at >= case.updated_at


async def test_a_refused_move_raises_and_leaves_the_case_unchanged(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    with pytest.raises(InvalidTransition):
        async with sessions.begin() as session:
            await advance(session, case.case_number, "resolve", note="已处理")
    async with sessions() as session:
        stored = await get_case(session, case.case_number, with_events=True)
    assert stored.status == "received"
    assert len(stored.events) == 1


async def test_an_unknown_operation_is_invalid_input(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions() as session:
        with pytest.raises(InvalidInput) as caught:
            await advance(session, case.case_number, "done")
    assert caught.value.reason == "bad_action"


async def test_a_system_only_operation_is_refused_to_staff_and_api_clients(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        await advance(
            session, case.case_number, "dispatch", "accept", "start", "resolve", note="已处理", department="市政"
        )
    async with sessions() as session:
        stored = await get_case(session, case.case_number)
        with pytest.raises(InvalidTransition, match="只能由系统自动进行"):
            await move_case(session, Actor.api_client("integration"), stored, "close_unrated")


async def test_an_agent_cannot_move_another_departments_case(sessions: Sessions) -> None:
    owner = await new_identity(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        await advance(session, case.case_number, "dispatch", department="市政")
    agent = Actor(ActorKind.STAFF, "坐席小王", Role.AGENT, department_id=None)
    async with sessions() as session:
        stored = await get_case(session, case.case_number)
        with pytest.raises(NotFound):
            await move_case(session, agent, stored, "accept")


# --- handoff -----------------------------------------------------------------


async def test_request_handoff_sets_waiting_and_the_time_once(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "abc")
    before = utcnow()
    async with sessions.begin() as session:
        conversation = await current_conversation(session, identity)
        await request_handoff(session, conversation)
    requested_at = conversation.handoff_requested_at
    assert conversation.handoff_status == "waiting"
    assert requested_at is not None
    assert before <= requested_at <= utcnow()
    async with sessions.begin() as session:
        again = await session.get(Conversation, conversation.id)
        assert again is not None
        await request_handoff(session, again)
        assert (again.handoff_status, again.handoff_requested_at) == ("waiting", requested_at)


async def test_waiting_conversations_are_oldest_first_and_exclude_the_bots(sessions: Sessions) -> None:
    ids: dict[str, int] = {}
    async with sessions.begin() as session:
        for name, waited in [("recent", 1), ("bot-only", None), ("oldest", 30), ("middle", 10)]:
            identity = await resolve_identity(session, "web", name)
            conversation = await current_conversation(session, identity)
            if waited is not None:
                await request_handoff(session, conversation)
                conversation.handoff_requested_at = NOW - timedelta(minutes=waited)
            ids[name] = conversation.id
    async with sessions() as session:
        waiting = await waiting_conversations(session)
        first_two = await waiting_conversations(session, limit=2)
    assert [c.id for c in waiting] == [ids["oldest"], ids["middle"], ids["recent"]]
    assert [c.id for c in first_two] == [ids["oldest"], ids["middle"]]


async def test_release_to_bot_clears_the_handoff(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "abc")
    async with sessions.begin() as session:
        conversation = await current_conversation(session, identity)
        await request_handoff(session, conversation)
    async with sessions.begin() as session:
        released = await release_to_bot(session, conversation.id)
    assert (released.handoff_status, released.handoff_requested_at) == ("bot", None)
    async with sessions() as session:
        assert await waiting_conversations(session) == []


async def test_releasing_an_unknown_conversation_is_not_found(sessions: Sessions) -> None:
    async with sessions() as session:
        with pytest.raises(NotFound):
            await release_to_bot(session, 9999)


# --- stats -------------------------------------------------------------------


async def test_stats_of_an_empty_database_are_zero_for_every_status(sessions: Sessions) -> None:
    async with sessions() as session:
        stats = await collect_stats(session)
    assert stats == {
        "citizens": 0,
        "conversations": 0,
        "messages": 0,
        "cases": 0,
        "cases_by_status": {status.value: 0 for status in CaseStatus},
    }
    assert len(stats["cases_by_status"]) == 8


async def test_stats_count_citizens_conversations_messages_and_cases_by_status(sessions: Sessions) -> None:
    alice = await new_identity(sessions, "alice")
    await other_identity_of(sessions, alice, "tg-alice")  # a second channel, not a second citizen
    bob = await new_identity(sessions, "bob")
    async with sessions.begin() as session:
        for identity in (alice, bob):
            conversation = await current_conversation(session, identity)
            log_incoming(session, conversation, "你好", max_chars=100)
        log_outgoing(session, conversation, [OutgoingMessage(text="您好")])
    first = await file(sessions, alice)
    await file(sessions, alice)
    await file(sessions, bob)
    async with sessions.begin() as session:
        await advance(session, first.case_number, "dispatch", department="市政")
    async with sessions() as session:
        stats = await collect_stats(session)
    assert (stats["citizens"], stats["conversations"], stats["messages"], stats["cases"]) == (2, 2, 3, 3)
    assert stats["cases_by_status"] == {status.value: 0 for status in CaseStatus} | {"received": 2, "dispatched": 1}
