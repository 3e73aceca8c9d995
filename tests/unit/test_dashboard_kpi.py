"""The dashboard's figures on a hand-made set of cases whose answers are worked out by hand.

The period is 2026-09-28 .. 2026-10-11 (China time); "now" is Monday 2026-10-12 10:00. It spans
the 2026 National Day holiday (10-01 .. 10-07 off, Saturday 10-10 worked), so working days and
calendar days differ. Five cases fall in the period, one (F) before it:

- A 住建局 城乡建设 A1区 web, citizen 1: filed Wed 09-30 09:00, dispatched by a supervisor 10:00,
  signed for 10-08 09:00 (the next working day: on time), 办结 10-09 09:00 (due 10-09 18:00: on
  time), 回访 10-10 09:00, rated 5. 受理→办结 9 calendar days, 2 working days (10-08, 10-09).
- B 住建局 城乡建设 A1区 web, citizen 1, same place: filed 10-09 09:00, dispatched 09:30, 改派 10:00,
  signed for Mon 10-12 09:00 (deadline was the worked Saturday 10-10: late); due 10-10 18:00, so
  overdue now by 40 hours; one 延期 approved. A repeat of A (same citizen within 30 days).
- C 交通局 交通运输 A2区 telegram, citizen 2: filed 10-01 (holiday) 10:00, dispatched by the system
  11:00, never signed for (deadline 10-08: late); due 10-20; a linked duplicate of A; a repeat
  of F (same citizen within 30 days).
- D 交通局 交通运输 A2区 telegram, citizen 2: filed 10-05 10:00, dispatched 12:00, signed for 13:00,
  办结 10-06 13:00, rated 1 at 14:00, 重办 at 15:00 (so in progress again); due 10-20.
- E no department, citizen 3: filed 10-11, waiting in the dispatch queue.
- F 交通局, citizen 2: filed 09-20, outside the period.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs

import pytest
from sqlalchemy import select

from crm_backend.analytics import kpi
from crm_backend.errors import InvalidInput
from crm_backend.models import ServiceCase, StaffLabel, StaffUser
from crm_backend.services import casework
from crm_backend.services.intake import CHINA_TZ
from tests.support.dashboard import NOW, PERIOD, Sessions, World, add_history, build_world


@pytest.fixture
async def world(sessions: Sessions) -> World:
    return await build_world(sessions)


def by_id(tables: list[kpi.Table]) -> dict[str, kpi.Table]:
    return {table.id: table for table in tables}


def texts(table: kpi.Table) -> list[list[str]]:
    return [[cell.text for cell in row] for row in table.rows]


async def figures(sessions: Sessions, user: StaffUser, filters: kpi.Filters = PERIOD) -> dict[str, kpi.Table]:
    async with sessions() as session:
        return by_id(await kpi.dashboard(session, user, filters, now=NOW))


async def test_volume_counts_cases_conversations_and_messages_per_day(sessions: Sessions, world: World) -> None:
    tables = await figures(sessions, world.supervisor)
    days = {row[0]: row[1:] for row in texts(tables["volume_day"])}
    assert len(days) == 14
    assert days["2026-09-30"] == ["1", "1", "0"]  # case A, the conversation it was filed from
    assert days["2026-10-01"] == ["1", "0", "0"]
    assert days["2026-10-02"] == ["0", "1", "2"]
    assert sum(int(values[0]) for values in days.values()) == 5
    channel = {row[0]: row[1:] for row in texts(tables["volume_channel"])}
    assert tables["volume_channel"].columns == ["日期", "网页", "Telegram", "接口"]
    assert channel["2026-10-01"] == ["0", "1", "0"]
    assert tables["volume_category"].columns == ["日期", "交通运输", "城乡建设"]
    link = tables["volume_day"].rows[2][1].href
    assert link == "/console/cases?since=2026-09-30&until=2026-09-30"
    assert tables["volume_day"].rows[0][1].href is None  # no cases behind a 0, so no link


async def test_timeliness_per_department(sessions: Sessions, world: World) -> None:
    rows = {row[0]: row[1:] for row in texts((await figures(sessions, world.supervisor))["timeliness"])}
    # 签收 on time, 办结 on time, overdue now, mean and worst days late, 延期 approved.
    assert rows["住建局"] == ["50.0%", "50.0%", "1", "1.7", "1.7", "1"]
    assert rows["交通局"] == ["50.0%", "–", "0", "–", "–", "0"]
    assert rows["未派单"] == ["–", "–", "0", "–", "–", "0"]  # E, still in the queue, has nothing to judge yet


async def test_stage_times_in_calendar_and_working_days_across_the_holiday(sessions: Sessions, world: World) -> None:
    tables = await figures(sessions, world.supervisor)
    stages = {row[1]: row[2:] for row in texts(tables["stage_overall"])}
    # 受理→派单: 0.5 h, 1 h, 1 h, 2 h: median (2nd of 4) 1 h, P90 (4th) 2 h; all the same day.
    assert stages["受理→派单"] == ["4", "0.0", "0.1", "0.0", "0.0"]
    assert tables["stage_overall"].rows[0][3].value == pytest.approx(1 / 24, abs=0.01)
    # 受理→办结: only A is 办结 (D was reopened): 9 calendar days, 2 working days over National Day.
    assert stages["受理→办结"] == ["1", "9.0", "9.0", "2.0", "2.0"]
    # 派单→签收: A 7.96 days / 1 working day, B 2.98 / 2 (Sat 10-10 worked, 10-12), D 1 h / 0.
    assert stages["派单→签收"][0] == "3"
    assert stages["派单→签收"][3] == "1.0"
    trend = texts(tables["stage_trend"])
    assert trend[0] == ["2026-09-28", "9.0", "9.0", "2.0", "2.0"]


async def test_satisfaction_per_department(sessions: Sessions, world: World) -> None:
    rows = {row[0]: row[1:] for row in texts((await figures(sessions, world.supervisor))["satisfaction"])}
    assert rows["住建局"] == ["1", "100.0%", "1", "100.0%", "0", "–"]
    # D was 办结, rated 1 and 重办: it was asked, so it counts for 回访率 though it is open again.
    assert rows["交通局"] == ["1", "100.0%", "1", "0.0%", "1", "100.0%"]


async def test_repeat_demand_and_linked_duplicates(sessions: Sessions, world: World) -> None:
    rows = {row[0]: row[1:] for row in texts((await figures(sessions, world.supervisor))["repeats"])}
    assert rows["住建局"] == ["2", "1", "50.0%", "0"]
    assert rows["交通局"] == ["2", "2", "100.0%", "1"]
    assert rows["未派单"] == ["1", "0", "0.0%", "0"]


async def test_bot_figures(sessions: Sessions, world: World) -> None:
    tables = await figures(sessions, world.supervisor)
    overview = dict((row[0], row[1]) for row in texts(tables["bot_overview"]))
    assert overview == {
        "对话数": "3",
        "机器人独立解决": "1",
        "机器人独立解决率": "33.3%",
        "转人工": "1",
        "转人工率": "33.3%",
        "生成工单的对话": "1",
        "未能回答的问题": "3",
    }
    assert texts(tables["bot_handoffs"]) == [["多次未理解", "1"]]
    assert texts(tables["bot_misses"]) == [["公积金怎么提取", "2"], ["护照去哪办", "1"]]
    routing = {row[0]: row[1:] for row in texts(tables["routing"])}
    assert routing["城乡建设"] == ["2", "50.0%", "50.0%"]
    assert routing["交通运输"] == ["2", "0.0%", "0.0%"]


async def test_model_accuracy_compares_each_version_with_the_people_s_decisions_of_the_period(
    sessions: Sessions, world: World
) -> None:
    def label(case: ServiceCase, version: str | None, model: str, staff: str, day: date) -> StaffLabel:
        when = datetime(day.year, day.month, day.day, 9, 0, tzinfo=CHINA_TZ).astimezone(UTC)
        return StaffLabel(
            case_id=case.id, text="问题", model_version=version, model_category=model, model_confidence=0.5,
            staff_category=staff, decision="dispatch", channel="console", actor="王", created_at=when,
        )  # fmt: skip

    async with sessions.begin() as session:
        cases = {case.case_number: case for case in (await session.scalars(select(ServiceCase))).all()}
        session.add_all(
            [
                label(cases["A"], "cat-v1", "城乡建设", "城乡建设", date(2026, 10, 1)),  # agreed
                label(cases["C"], "cat-v1", "城乡建设", "交通运输", date(2026, 10, 2)),  # corrected
                label(cases["D"], "cat-v2", "交通运输", "交通运输", date(2026, 10, 6)),
                label(cases["D"], "cat-v2", "城乡建设", "交通运输", date(2026, 9, 20)),  # before the period
                label(cases["E"], None, "", "交通运输", date(2026, 10, 11)),  # no model answer to judge
            ]
        )
    tables = await figures(sessions, world.supervisor)
    assert texts(tables["model_accuracy"]) == [["cat-v1", "2", "1", "50.0%"], ["cat-v2", "1", "1", "100.0%"]]
    # A city-wide figure: an agent's dashboard does not show it.
    assert "model_accuracy" not in await figures(sessions, world.agent)


async def test_shortfalls_flag_the_worst_cells(
    sessions: Sessions, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kpi, "WORST_MIN_CASES", 2)
    table = (await figures(sessions, world.supervisor))["shortfalls"]
    rows = {(row[0].text, row[1].text): row for row in table.rows}
    housing = rows[("A1区", "城乡建设")]
    assert [cell.text for cell in housing[2:]] == ["2", "50.0%", "9.0", "短板"]
    assert housing[3].flag
    path, _, query = (housing[2].href or "").partition("?")
    assert (path, parse_qs(query)) == (
        "/console/cases",
        {"since": ["2026-09-28"], "until": ["2026-10-11"], "district": ["A1区"], "category": ["城乡建设"]},
    )
    transport = rows[("A2区", "交通运输")]
    assert [cell.text for cell in transport[2:]] == ["2", "–", "–", ""]


async def test_channel_filter_keeps_only_that_channels_cases(sessions: Sessions, world: World) -> None:
    filters = kpi.Filters("custom", PERIOD.since, PERIOD.until, channel="telegram")
    tables = await figures(sessions, world.supervisor, filters)
    assert sum(int(row[1]) for row in texts(tables["volume_day"])) == 2
    assert [row[0] for row in texts(tables["repeats"])] == ["交通局"]


async def test_agent_cannot_see_another_departments_figures(sessions: Sessions, world: World) -> None:
    asking_for_transport = kpi.Filters("custom", PERIOD.since, PERIOD.until, department_id=world.transport)
    tables = await figures(sessions, world.agent, asking_for_transport)
    assert [row[0] for row in texts(tables["timeliness"])] == ["住建局"]
    assert [row[0] for row in texts(tables["repeats"])] == ["住建局"]
    assert sum(int(row[1]) for row in texts(tables["volume_day"])) == 2
    assert texts(tables["bot_misses"]) == []  # the bot's conversations are not the department's
    async with sessions() as session:
        rows = [row async for row in kpi.case_rows(session, world.agent, asking_for_transport, now=NOW)]
    assert [row[0] for row in rows] == ["A", "B"]


async def test_case_rows_for_export(sessions: Sessions, world: World) -> None:
    async with sessions() as session:
        rows = [row async for row in kpi.case_rows(session, world.supervisor, PERIOD, now=NOW)]
    assert [row[0] for row in rows] == ["A", "B", "C", "D", "E"]
    assert rows[1] == ["B", "2026-10-09", "网页", "未分类", "城乡建设", "A1区", "住建局", "已签收", "2026-10-10", "是"]


async def test_headline_totals_the_tables_below(sessions: Sessions, world: World) -> None:
    table = (await figures(sessions, world.supervisor))["headline"]
    assert dict(texts(table)) == {
        "工单量": "5",
        "按时签收率": "50.0%",  # A on time, B and C late, D on time
        "按时办结率": "50.0%",  # A on time, B open past its deadline
        "当前超期": "1",  # B
        "回访率": "100.0%",  # A and D, both rated
        "满意率": "50.0%",  # 5 and 1
        "机器人独立解决率": "33.3%",
    }
    cells = dict((row[0].text, row[1]) for row in table.rows)
    assert cells["工单量"].href == PERIOD.case_link()
    assert cells["当前超期"].href == "/console/cases?overdue=1" and cells["当前超期"].flag
    assert table.rows == (await one(sessions, world.supervisor, "headline")).rows  # the export's figures


async def one(sessions: Sessions, user: StaffUser, table_id: str) -> kpi.Table:
    async with sessions() as session:
        return await kpi.one_table(session, user, PERIOD, table_id, now=NOW)


async def test_imported_history_counts_as_demand_but_not_as_work_or_unmeasured_stages(
    sessions: Sessions, world: World
) -> None:
    await add_history(sessions, world)
    tables = await figures(sessions, world.supervisor)
    headline = dict(texts(tables["headline"]))
    assert headline["工单量"] == "8"
    assert headline["其中历史导入"] == "3"
    assert parse_qs(tables["headline"].rows[-1][1].href.partition("?")[2])["channel"] == ["board"]  # type: ignore[union-attr]
    assert headline["当前超期"] == "1"  # H is past its deadline, but nobody's work: B only
    assert headline["按时签收率"] == "50.0%"  # the board does not say when G or H was signed for
    assert headline["按时办结率"] == "66.7%"  # G's reply came before its deadline; H is not judged
    assert headline["回访率"] == "100.0%"  # G was never asked
    assert tables["volume_channel"].columns == ["日期", "网页", "Telegram", "接口", "留言板（历史导入）"]
    transport = {row[0]: row[1:] for row in texts(tables["timeliness"])}["交通局"]
    assert transport == ["50.0%", "100.0%", "0", "–", "–", "0"]
    stages = {row[1]: row[2] for row in texts(tables["stage_overall"])}
    assert stages == {"受理→派单": "4", "派单→签收": "3", "签收→办结": "1", "办结→回访": "1", "受理→办结": "2"}
    async with sessions() as session:
        queue = await casework.dispatch_queue(session)
        overdue, _ = await casework.list_cases(session, world.supervisor, casework.CaseFilters(overdue=True), now=NOW)
        history, _ = await casework.list_cases(session, world.supervisor, casework.CaseFilters(channel="board"))
    assert [case.case_number for case, _ in queue] == ["E"]  # Q stays out of 待派单
    assert [case.case_number for case in overdue] == ["B"]
    assert sorted(case.case_number for case in history) == ["G", "H", "Q"]


def test_filters_periods_and_bad_ranges() -> None:
    today = date(2026, 10, 14)  # a Wednesday
    week = kpi.Filters.from_query({"period": "week"}, today)
    assert (week.since, week.until) == (date(2026, 10, 12), today)
    month = kpi.Filters.from_query({}, today)
    assert (month.since, month.until) == (today - timedelta(days=29), today)
    custom = kpi.Filters.from_query({"period": "custom", "since": "2026-09-01", "until": "2026-09-30"}, today)
    assert custom.start == datetime(2026, 8, 31, 16, tzinfo=UTC)
    assert custom.params()["since"] == "2026-09-01"
    with pytest.raises(InvalidInput):
        kpi.Filters.from_query({"period": "custom", "since": "2026-09-30", "until": "2026-09-01"}, today)
    with pytest.raises(InvalidInput):
        kpi.Filters.from_query({"period": "custom", "since": "x"}, today)
    odd = kpi.Filters.from_query({"department": "1 OR 1", "channel": "fax", "category": "?"}, today)
    assert (odd.department_id, odd.channel, odd.category) == (None, None, None)


def test_working_days_between_counts_holidays_off_and_adjusted_weekends_on() -> None:
    assert kpi.working_days_between("2026-09-30", "2026-10-09") == 2
    assert kpi.working_days_between("2026-10-09", "2026-10-12") == 2  # Saturday 10-10 is worked
    assert kpi.working_days_between("2026-10-09", "2026-10-09") == 0
    assert kpi.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert kpi.percentile([1.0, 2.0, 3.0, 4.0], 0.9) == 4.0
    assert kpi.percentile([], 0.5) is None


async def test_case_list_shows_the_cases_behind_a_figures_link(sessions: Sessions, world: World) -> None:
    """The dashboard's links filter the case list by filing day and channel; the list honours both."""
    tables = await figures(sessions, world.supervisor)
    holiday = next(row for row in tables["volume_channel"].rows if row[0].text == "2026-10-01")
    assert holiday[2].text == "1"
    query = parse_qs((holiday[2].href or "").partition("?")[2])
    filters = casework.CaseFilters(
        since=date.fromisoformat(query["since"][0]),
        until=date.fromisoformat(query["until"][0]),
        channel=query["channel"][0],
    )
    async with sessions() as session:
        rows, _ = await casework.list_cases(session, world.supervisor, filters)
        everything, _ = await casework.list_cases(
            session, world.supervisor, casework.CaseFilters(since=PERIOD.since, until=PERIOD.until)
        )
        on_web, _ = await casework.list_cases(session, world.supervisor, casework.CaseFilters(channel="web"))
    assert [case.case_number for case in rows] == ["C"]
    assert sorted(case.case_number for case in everything) == ["A", "B", "C", "D", "E"]
    assert sorted(case.case_number for case in on_web) == ["A", "B", "E"]
