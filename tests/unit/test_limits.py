"""Limits on the public entry points: the rate limiter, the daily case limit, case numbers past 9,999.

Every test runs against a real, migrated database (SQLite here; PostgreSQL again in
tests/integration/test_postgres.py) with fixed timestamps or an injected clock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from rasa_sdk.events import FollowupAction
from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.common import reset_slots
from actions.dispatch import ActionSubmitReport
from actions.report import REPORT_SLOTS, ActionStartReport
from app.settings import Settings
from crm_backend.dispatch.service import Dispatcher
from crm_backend.errors import CaseLimitReached
from crm_backend.models import ChannelIdentity, RateEvent, ServiceCase
from crm_backend.services import limits
from crm_backend.services.conversations import resolve_identity
from crm_backend.services.intake import Report, check_daily_case_limit, file_case, next_case_number
from crm_backend.services.limits import DatabaseRateLimiter, Limit
from crm_backend.settings import LimitSettings, SettingsError
from crm_backend.validation import parse_case_number
from tests.support.stack import DATA_KEY_SECRETS
from tests.unit.test_actions import (
    DOMAIN,
    all_cases,
    cleared,
    desk,  # noqa: F401  (fixture)
    make_tracker,
    register,
    report_slots,
    responses,
    seeded,  # noqa: F401  (fixture)
    slot_state,
)
from tests.unit.test_actions import file as file_for
from tests.unit.test_services import insert_case as insert_bare_case

Sessions = async_sessionmaker[AsyncSession]

START = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
MESSAGES = Limit("message", 3, timedelta(minutes=1))
SESSIONS = Limit("web_session", 2, timedelta(minutes=10))
PHONE = "13812345678"
SECRETS = {
    name: "s" * 16 for name in ("ENGINE_TOKEN", "ACTION_TOKEN", "API_TOKEN", "REST_CHANNEL_TOKEN")
} | DATA_KEY_SECRETS


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def limiter(sessions: Sessions, clock: Clock) -> DatabaseRateLimiter:
    return DatabaseRateLimiter(sessions, clock=clock)


async def acquire_many(limiter: DatabaseRateLimiter, limit: Limit, subject: str, count: int) -> list[bool]:
    return [await limiter.acquire(limit, subject) for _ in range(count)]


async def stored_events(sessions: Sessions) -> int:
    async with sessions() as session:
        return (await session.scalar(select(func.count()).select_from(RateEvent))) or 0


# --- the rate limiter --------------------------------------------------------


async def test_events_up_to_the_limit_pass_and_the_next_one_is_refused(limiter: DatabaseRateLimiter) -> None:
    assert await acquire_many(limiter, MESSAGES, "rest:alice", 4) == [True, True, True, False]


async def test_a_refused_event_is_not_counted_and_the_window_slides(limiter: DatabaseRateLimiter, clock: Clock) -> None:
    assert await acquire_many(limiter, MESSAGES, "rest:alice", 3) == [True, True, True]
    clock.advance(seconds=30)
    assert await limiter.acquire(MESSAGES, "rest:alice") is False
    clock.advance(seconds=29, microseconds=999_999)  # the first three are still inside the minute
    assert await limiter.acquire(MESSAGES, "rest:alice") is False
    clock.advance(microseconds=1)  # now they are a full minute old
    assert await acquire_many(limiter, MESSAGES, "rest:alice", 4) == [True, True, True, False]


async def test_subjects_and_limits_are_counted_apart(limiter: DatabaseRateLimiter) -> None:
    assert await acquire_many(limiter, SESSIONS, "203.0.113.7", 3) == [True, True, False]
    assert await acquire_many(limiter, SESSIONS, "203.0.113.8", 2) == [True, True]
    assert await limiter.acquire(MESSAGES, "203.0.113.7") is True


async def test_a_limit_of_zero_is_off_and_records_nothing(limiter: DatabaseRateLimiter, sessions: Sessions) -> None:
    off = Limit("message", 0, timedelta(minutes=1))
    assert await acquire_many(limiter, off, "rest:alice", 50) == [True] * 50
    assert await stored_events(sessions) == 0


async def test_expired_events_are_pruned(limiter: DatabaseRateLimiter, sessions: Sessions, clock: Clock) -> None:
    for subject in ("a", "b", "c"):
        await limiter.acquire(MESSAGES, subject)
    await limiter.acquire(SESSIONS, "a")
    clock.advance(minutes=2)
    await limiter.acquire(MESSAGES, "a")
    assert await stored_events(sessions) == 4  # a subject's own old event goes as it is counted again
    await limiter.prune(MESSAGES)
    assert await stored_events(sessions) == 2  # the others' too; the session event is still in its window


async def test_every_so_many_acquires_a_limit_sweeps_its_expired_events(
    limiter: DatabaseRateLimiter, sessions: Sessions, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "PRUNE_EVERY", 4)
    await limiter.acquire(MESSAGES, "gone-quiet")
    await limiter.acquire(SESSIONS, "203.0.113.7")  # another limit's count is its own
    clock.advance(minutes=2)
    await acquire_many(limiter, MESSAGES, "busy", 2)
    assert await stored_events(sessions) == 4
    await limiter.acquire(MESSAGES, "busy")  # the fourth message acquire sweeps
    assert await stored_events(sessions) == 4  # three of "busy" and the session event; "gone-quiet" went


async def test_concurrent_events_never_pass_the_limit(sessions: Sessions, clock: Clock) -> None:
    limiters = [DatabaseRateLimiter(sessions, clock=clock) for _ in range(4)]  # as if four app processes
    results = await asyncio.gather(*(limiters[i % 4].acquire(MESSAGES, "rest:flood") for i in range(24)))
    assert sorted(results) == [False] * 21 + [True] * 3
    assert await stored_events(sessions) == 3


async def test_a_very_long_subject_is_counted_by_its_prefix(limiter: DatabaseRateLimiter) -> None:
    subject = "telegram:" + "9" * 400
    assert await acquire_many(limiter, SESSIONS, subject, 3) == [True, True, False]


# --- cases per citizen per day -----------------------------------------------


async def new_identity(sessions: Sessions, external_id: str, channel: str = "web") -> ChannelIdentity:
    async with sessions.begin() as session:
        return await resolve_identity(session, channel, external_id)


async def insert_case(sessions: Sessions, identity: ChannelIdentity, case_number: str, created_at: datetime) -> None:
    async with sessions.begin() as session:
        await insert_bare_case(session, identity, case_number, created_at)


async def check(sessions: Sessions, identity: ChannelIdentity, limit: int, now: datetime) -> None:
    async with sessions() as session:
        await check_daily_case_limit(session, identity.citizen_id, limit, now=now)


async def test_the_daily_case_limit_counts_the_citizens_cases_of_the_beijing_day(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "busy")
    other = await new_identity(sessions, "someone-else")
    morning = datetime(2026, 12, 4, 1, 0, tzinfo=UTC)  # 09:00 in Beijing
    await insert_case(sessions, identity, "20261203-0001", datetime(2026, 12, 3, 15, 59, tzinfo=UTC))  # 23:59 the 3rd
    await insert_case(sessions, identity, "20261204-0001", datetime(2026, 12, 3, 16, 0, tzinfo=UTC))  # 00:00 the 4th
    await insert_case(sessions, other, "20261204-0002", morning)
    await check(sessions, identity, 2, morning)  # one of two today: allowed
    await insert_case(sessions, identity, "20261204-0003", morning)
    with pytest.raises(CaseLimitReached):
        await check(sessions, identity, 2, morning)  # at the limit: the next one is refused
    await check(sessions, identity, 0, morning)  # 0: no limit
    await check(sessions, identity, 2, datetime(2026, 12, 4, 16, 0, tzinfo=UTC))  # a new Beijing day


async def test_filing_past_the_daily_limit_files_nothing(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "filer")
    report = Report(description="路灯坏了三天", location="A1区建国路", contact_phone=PHONE)
    for _ in range(2):
        async with sessions.begin() as session:
            await file_case(session, identity, report, daily_limit=2)
    with pytest.raises(CaseLimitReached):
        async with sessions.begin() as session:
            await file_case(session, identity, report, daily_limit=2)
    async with sessions.begin() as session:  # staff filing for the citizen pass no limit
        await file_case(session, identity, report)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ServiceCase)) == 3


async def test_concurrent_filings_of_one_citizen_never_pass_the_limit(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "twins")
    report = Report(description="路灯坏了三天", location="A1区建国路", contact_phone=PHONE)

    async def attempt() -> bool:
        try:
            async with sessions.begin() as session:
                await file_case(session, identity, report, daily_limit=3)
        except CaseLimitReached:
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(8)))
    assert sorted(results) == [False] * 5 + [True] * 3


# --- the report actions and the daily case limit ---------------------------


async def test_starting_a_report_past_the_daily_limit_says_so_and_opens_no_form(sessions: Sessions) -> None:
    identity = await register(sessions, "abc")
    tracker = make_tracker(identity.sender_id, text="我要反映小区门口路灯坏了", intent="report_issue")
    dispatcher = CollectingDispatcher()
    events = await ActionStartReport(sessions, daily_case_limit=1).run(dispatcher, tracker, DOMAIN)
    assert "description" in slot_state(events) and responses(dispatcher) == []  # under the limit: the form goes on
    await file_for(sessions, identity)
    dispatcher = CollectingDispatcher()
    events = await ActionStartReport(sessions, daily_case_limit=1).run(dispatcher, tracker, DOMAIN)
    assert responses(dispatcher) == ["utter_case_limit_reached"]
    assert events == [*reset_slots(*REPORT_SLOTS), FollowupAction("action_listen")]


async def test_a_new_citizen_may_start_a_report(sessions: Sessions) -> None:
    tracker = make_tracker("web:first-visit", text="我要反映问题", intent="report_issue")
    dispatcher = CollectingDispatcher()
    await ActionStartReport(sessions, daily_case_limit=1).run(dispatcher, tracker, DOMAIN)
    assert responses(dispatcher) == []


async def test_submitting_past_the_daily_limit_files_nothing_and_says_so(
    seeded: Sessions,  # noqa: F811
    desk: Dispatcher,  # noqa: F811
) -> None:
    identity = await register(seeded, "abc")
    await file_for(seeded, identity)
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(identity.sender_id, slots=report_slots("yes"))
    events = await ActionSubmitReport(seeded, desk, daily_case_limit=1).run(dispatcher, tracker, DOMAIN)
    assert responses(dispatcher) == ["utter_case_limit_reached"]
    assert slot_state(events) == cleared(*REPORT_SLOTS)
    assert len(await all_cases(seeded)) == 1


# --- case numbers past 9,999 -------------------------------------------------


async def test_the_ten_thousandth_case_of_a_day_gets_five_digits_and_numbers_keep_growing(sessions: Sessions) -> None:
    identity = await new_identity(sessions, "busy-day")
    now = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)
    await insert_case(sessions, identity, "20261204-9999", now)
    async with sessions() as session:
        assert await next_case_number(session, now) == "20261204-10000"
    await insert_case(sessions, identity, "20261204-10000", now)
    async with sessions() as session:
        assert await next_case_number(session, now) == "20261204-10001"  # numerically after 10000, not "9999"
    await insert_case(sessions, identity, "20261204-99999", now)
    async with sessions() as session:
        assert await next_case_number(session, now) == "20261204-100000"


@pytest.mark.parametrize(
    ("text", "case_number"),
    [
        ("20261204-10000", "20261204-10000"),
        ("查一下 20261204 - 123456 的进度", "20261204-123456"),
        ("２０２６１２０４－１００００", "20261204-10000"),
        ("2026120410000", "20261204-10000"),
        ("20261204-0001", "20261204-0001"),
    ],
)
def test_case_numbers_of_five_and_six_digits_are_parsed(text: str, case_number: str) -> None:
    assert parse_case_number(text) == case_number


@pytest.mark.parametrize("text", ["20261204-1234567", "20261204-01234", "20261204-001234"])
def test_seven_digits_or_a_padded_long_sequence_is_no_case_number(text: str) -> None:
    assert parse_case_number(text) is None


# --- settings ----------------------------------------------------------------


def test_limits_have_defaults_a_citizen_never_meets() -> None:
    limits = Settings.from_env(SECRETS).limits
    assert limits == LimitSettings()
    assert (limits.web_sessions_per_address, limits.web_sessions_window_seconds) == (30, 600)
    assert (limits.messages_per_sender, limits.messages_window_seconds) == (20, 60)
    assert limits.cases_per_citizen_per_day == 10


def test_each_limit_is_read_from_the_environment() -> None:
    env = {
        **SECRETS,
        "WEB_SESSIONS_PER_ADDRESS": "3",
        "WEB_SESSIONS_WINDOW_SECONDS": "30",
        "MESSAGES_PER_SENDER": "5",
        "MESSAGES_WINDOW_SECONDS": "10",
        "CASES_PER_CITIZEN_PER_DAY": "0",
    }
    assert Settings.from_env(env).limits == LimitSettings(3, 30, 5, 10, 0)


@pytest.mark.parametrize("name", ["WEB_SESSIONS_PER_ADDRESS", "MESSAGES_PER_SENDER", "CASES_PER_CITIZEN_PER_DAY"])
@pytest.mark.parametrize("value", ["many", "-1", "2.5"])
def test_a_malformed_limit_is_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**SECRETS, name: value})
