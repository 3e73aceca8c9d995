"""Hot issues: grouping the real board messages, the heat index and 预警, decisions, the CLI."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from crm_backend.__main__ import main
from crm_backend.data.history import HOT_ISSUES_FILE, history_file
from crm_backend.db import create_engine, create_sessionmaker
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.errors import InvalidInput
from crm_backend.hotissues import service
from crm_backend.hotissues.core import (
    ALERT_MIN_RECENT,
    Decisions,
    Group,
    HotIssue,
    HotRecord,
    IssueMessage,
    hot_issues,
    summarise,
)
from crm_backend.hotissues.sources import gazetteer_locate, in_window, read_board_csv
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import ChannelIdentity, Citizen, HotIssueSnapshot, ServiceCase, utcnow
from crm_backend.settings import SettingsError, normalise_database_url
from tests.unit.test_settings_and_cli import make_env

Sessions = async_sessionmaker[AsyncSession]
REAL_UNTIL = date(2020, 1, 26)  # the real file's last message
# Messages a reader can open in citizen_messages_hot_issues.csv: the concrete mixing plant
# built beside 丽发新城 (Nov 2019 – Jan 2020) ...
MIXING_PLANT = ("267050", "264944", "189950", "281943", "225217", "243692", "203393")
# ... and the parking spaces sold bundled with the railway staff's flats at 伊景园滨河苑 (Jul – Sep 2019).
BUNDLED_PARKING = ("289950", "283879", "223247", "224767", "188801", "285897")


@pytest.fixture(scope="module")
def board() -> list[HotRecord]:
    return read_board_csv(history_file(HOT_ISSUES_FILE))


@pytest.fixture(scope="module")
def real_ranking(board: list[HotRecord]) -> list[HotIssue]:
    return hot_issues(board, until=REAL_UNTIL)


def issue_of(ranking: list[HotIssue], key: str) -> tuple[int, HotIssue]:
    for place, issue in enumerate(ranking, 1):
        if any(m.key == key for m in issue.members):
            return place, issue
    raise AssertionError(f"message {key} is in no issue")


def test_the_real_file_is_read_whole_with_both_time_formats(board: list[HotRecord]) -> None:
    assert len(board) == 4326
    by_key = {record.key: record for record in board}
    assert by_key["188006"].time == datetime(2019, 2, 28, 11, 25, 5, tzinfo=CHINA_TZ)
    assert by_key["360107"].time == datetime(2019, 7, 21, tzinfo=CHINA_TZ).replace(hour=10, minute=29, second=36)
    assert by_key["208636"].likes == 2097


def test_the_mixing_plant_beside_lifa_xincheng_is_the_hottest_issue_of_the_real_board(
    real_ranking: list[HotIssue],
) -> None:
    place, issue = issue_of(real_ranking, MIXING_PLANT[0])
    assert place == 1
    assert set(MIXING_PLANT) <= {m.key for m in issue.members}
    assert issue.citizens >= 40
    about_it = [m for m in issue.members if "丽发" in m.title or "搅拌" in m.title]
    assert len(about_it) >= 0.8 * issue.messages


def test_the_bundled_parking_at_yijingyuan_is_one_issue_in_the_top_three_apart_from_the_plant(
    real_ranking: list[HotIssue],
) -> None:
    place, issue = issue_of(real_ranking, BUNDLED_PARKING[0])
    assert place <= 3
    assert set(BUNDLED_PARKING) <= {m.key for m in issue.members}
    assert not set(MIXING_PLANT) & {m.key for m in issue.members}
    assert issue.first_at.date() >= date(2019, 7, 1) and issue.last_at.date() <= date(2019, 9, 30)


def test_one_citizen_posting_many_times_is_not_a_hot_issue(real_ranking: list[HotIssue]) -> None:
    assert all(issue.citizens >= 2 for issue in real_ranking)


def message(key: str, citizen: str, when: datetime, likes: int = 0) -> IssueMessage:
    return IssueMessage(key=key, citizen=citizen, title=f"留言{key}", time=when, likes=likes)


UNTIL = date(2026, 3, 31)
END = datetime(2026, 3, 31, 12, tzinfo=CHINA_TZ)


def burst(recent: int, previous: int) -> Group:
    """An issue with `recent` messages in the 7 days up to UNTIL and `previous` in the 7 before."""
    members = [message(f"r{i}", f"c{i}", END - timedelta(days=i % 6)) for i in range(recent)]
    members += [message(f"p{i}", f"d{i}", END - timedelta(days=8 + i % 6)) for i in range(previous)]
    return Group(members=tuple(members))


@pytest.mark.parametrize(
    ("recent", "previous", "alert"),
    [
        (ALERT_MIN_RECENT, 0, True),  # appears from nothing with five messages in a week
        (6, 3, True),  # doubles
        (6, 4, False),  # grows, not fast
        (ALERT_MIN_RECENT - 1, 0, False),  # too few to warn about
        (0, 8, False),  # dying down
    ],
)
def test_an_issue_warns_when_its_last_week_at_least_doubles_the_week_before(
    recent: int, previous: int, alert: bool
) -> None:
    issue = summarise(burst(recent, previous), until=UNTIL)
    assert (issue.recent, issue.previous, issue.alert) == (recent, previous, alert)


def test_heat_counts_citizens_more_than_repeats_and_rewards_support_and_growth() -> None:
    many_citizens = summarise(burst(0, 6), until=UNTIL)
    one_citizen_repeating = summarise(
        Group(members=tuple(message(f"x{i}", "same", END - timedelta(days=9)) for i in range(6))), until=UNTIL
    )
    liked = summarise(
        Group(members=tuple(message(f"l{i}", f"c{i}", END - timedelta(days=9), likes=100) for i in range(6))),
        until=UNTIL,
    )
    growing = summarise(burst(6, 0), until=UNTIL)
    assert one_citizen_repeating.heat < many_citizens.heat < liked.heat
    assert many_citizens.heat < growing.heat
    assert many_citizens.concentration == 1.0


def record(key: str, citizen: str, title: str, day: int) -> HotRecord:
    return HotRecord(key=key, citizen=citizen, title=title, text=title, time=datetime(2026, 3, day, 9, tzinfo=CHINA_TZ))


HAND_MADE = [
    record("a1", "u1", "幸福路菜市场门口垃圾堆积发臭", 2),
    record("a2", "u2", "幸福路菜市场垃圾堆积无人清运", 3),
    record("a3", "u3", "幸福路菜市场门口的垃圾好几天没人清运", 4),
    record("b1", "u4", "光明小区电梯频繁故障困人", 5),
    record("b2", "u5", "光明小区电梯又坏了困住老人", 6),
    record("z1", "u6", "咨询居住证办理需要什么材料", 7),
]


def test_hand_made_messages_group_by_problem_and_place() -> None:
    issues = hot_issues(HAND_MADE, until=date(2026, 3, 7))
    assert [sorted(m.key for m in issue.members) for issue in issues] == [["a1", "a2", "a3"], ["b1", "b2"]]


def test_decisions_join_issues_and_drop_unrelated_messages() -> None:
    decisions = Decisions(unrelated=frozenset({"a3"}), merges=(("b2", "a1"),))
    issues = hot_issues(HAND_MADE, until=date(2026, 3, 7), decisions=decisions)
    assert [sorted(m.key for m in issue.members) for issue in issues] == [["a1", "a2", "b1", "b2"]]


async def add_cases(sessions: Sessions, records: list[HotRecord]) -> None:
    """The records as bare cases, numbered by their keys, one citizen per distinct writer."""
    async with sessions.begin() as session:
        identities: dict[str, ChannelIdentity] = {}
        for item in records:
            if item.citizen not in identities:
                citizen = Citizen()
                session.add(citizen)
                await session.flush()
                identity = ChannelIdentity(channel="web", external_id=f"board-{item.citizen}", citizen_id=citizen.id)
                session.add(identity)
                await session.flush()
                identities[item.citizen] = identity
            identity = identities[item.citizen]
            session.add(
                ServiceCase(
                    case_number=item.key,
                    citizen_id=identity.citizen_id,
                    identity_id=identity.id,
                    description=f"{item.title}\n{item.text}",
                    location="",
                    contact_phone="13800000000",
                    status=CaseStatus.RECEIVED.value,
                    created_at=item.time,
                    updated_at=item.time,
                )
            )


async def test_supervisors_decisions_survive_recomputation_of_the_cached_ranking(sessions: Sessions) -> None:
    await add_cases(sessions, HAND_MADE)
    since, until = date(2026, 3, 1), date(2026, 3, 7)
    await service.refresh_snapshot(sessions, since, until)
    async with sessions() as session:
        before = await service.top_issues(session, since=since, until=until)
    assert [issue.messages for issue in before] == [3, 2]

    async with sessions.begin() as session:
        await service.merge_issues(session, None, "b1", "a2")
        await service.mark_unrelated(session, None, "a3")
    async with sessions() as session:  # at once, on the cached ranking
        corrected = await service.top_issues(session, since=since, until=until)
    await service.refresh_snapshot(sessions, since, until)  # and after the job recomputes it
    async with sessions() as session:
        recomputed = await service.top_issues(session, since=since, until=until)
        snapshots = await session.scalar(select(func.count()).select_from(HotIssueSnapshot))
    for ranking in (corrected, recomputed):
        assert [sorted(m.key for m in issue.members) for issue in ranking] == [["a1", "a2", "b1", "b2"]]
    assert snapshots == 1  # a window's new ranking replaces its old one


async def test_a_window_never_computed_has_no_cached_issues(sessions: Sessions) -> None:
    async with sessions() as session:
        assert await service.top_issues(session, since=date(2026, 1, 1), until=date(2026, 1, 31)) == []


async def test_merging_an_issue_with_itself_is_refused(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        with pytest.raises(InvalidInput):
            await service.merge_issues(session, None, "a1", "a1")
        with pytest.raises(InvalidInput):
            await service.mark_unrelated(session, None, "  ")


def board_file() -> list[str]:
    return ["hot-issues", "--file", str(history_file(HOT_ISSUES_FILE))]


def test_cli_prints_the_ranking_of_a_board_file_as_json(
    board: list[HotRecord], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'unused.db'}")
    code = main(
        [*board_file(), "--since", "2019-11-01", "--until", "2019-12-31", "--top", "2", "--json", "--no-places"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["messages"] == len(in_window(board, date(2019, 11, 1), date(2019, 12, 31)))
    assert len(printed["issues"]) == 2
    top = printed["issues"][0]
    assert set(MIXING_PLANT) <= {m["key"] for m in top["members"]}
    assert top["description"] and top["messages"] == len(top["members"])
    assert not (tmp_path / "unused.db").exists()  # a file is ranked without the database


def test_cli_prints_a_readable_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*board_file(), "--since", "2019-07-01", "--until", "2019-09-30", "--top", "3", "--no-places"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert "伊景园" in lines[1]  # line 0 is the header
    assert len(lines) == 4


def test_cli_refuses_a_window_that_ends_before_it_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main([*board_file(), "--since", "2019-09-01", "--until", "2019-08-01"])
    assert refused.value.code == 2
    assert "--until" in capsys.readouterr().err


async def test_the_job_caches_the_ranking_of_the_last_days_for_the_dashboard(sessions: Sessions) -> None:
    now = utcnow()
    recent = [replace(item, key=f"j{item.key}", time=now - timedelta(hours=1 + i)) for i, item in enumerate(HAND_MADE)]
    await add_cases(sessions, recent)
    snapshot = await service.HotIssueJob(sessions, window_days=30, interval_seconds=0).run_once()
    since, until = service.default_window(30)
    async with sessions() as session:
        issues = await service.top_issues(session, since=since, until=until, limit=1)
    assert (snapshot.since, snapshot.until, snapshot.message_count) == (since, until, len(HAND_MADE))
    assert [sorted(m.key for m in issue.members) for issue in issues] == [["ja1", "ja2", "ja3"]]


def test_the_job_runs_every_fifteen_minutes_over_thirty_days_unless_told_otherwise() -> None:
    defaults = Settings.from_env(make_env())
    tuned = Settings.from_env(make_env(HOT_ISSUES_REFRESH_SECONDS="0", HOT_ISSUES_WINDOW_DAYS="7"))
    assert (defaults.hot_issues_refresh_seconds, defaults.hot_issues_window_days) == (900.0, 30)
    assert (tuned.hot_issues_refresh_seconds, tuned.hot_issues_window_days) == (0.0, 7)
    with pytest.raises(SettingsError):
        Settings.from_env(make_env(HOT_ISSUES_WINDOW_DAYS="0"))


def test_cli_ranks_the_cases_of_the_database_and_caches_the_ranking_for_the_page(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["migrate"]) == 0
    assert capsys.readouterr().out.startswith("database at revision ")  # what migrate did, before the JSON

    async def fill_then_read_cache(fill: bool) -> list[HotIssue]:
        engine = create_engine(normalise_database_url(url))
        try:
            sessions = create_sessionmaker(engine)
            if fill:
                await add_cases(sessions, HAND_MADE)
            async with sessions() as session:
                return await service.top_issues(session, since=date(2026, 3, 1), until=date(2026, 3, 7))
        finally:
            await engine.dispose()

    assert asyncio.run(fill_then_read_cache(True)) == []
    code = main(["hot-issues", "--since", "2026-03-01", "--until", "2026-03-07", "--json", "--no-places"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["source"], printed["messages"]) == ("cases", len(HAND_MADE))
    assert [issue["messages"] for issue in printed["issues"]] == [3, 2]
    assert [issue.messages for issue in asyncio.run(fill_then_read_cache(False))] == [3, 2]


def test_an_issue_is_placed_by_the_gazetteer(board: list[HotRecord]) -> None:
    plant = [record for record in board if record.time.date() >= date(2019, 10, 25)]
    top = hot_issues(plant, until=REAL_UNTIL, limit=1, locate=gazetteer_locate())[0]
    assert top.place is not None and "丽发新城" in top.place
    assert "搅拌站" in top.terms
