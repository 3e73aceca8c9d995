"""The monthly open dataset: exact rows from hand-made cases, no personal data, China-time months.

The cases are filed and moved by the product's own path (`open_case`, `move_case` with the
historical time as ``now``), so the dataset reads the history exactly as the life cycle writes it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.errors import InvalidInput
from crm_backend.models import AuditEntry, CaseEvent, ChannelIdentity, Citizen, Department, ImportedMessage, ServiceCase
from crm_backend.services import open_data
from crm_backend.services.moves import Actor, move_case, open_case
from crm_backend.services.open_data import COLUMN_NAMES, Period
from tests.support.cli import run_cli

Sessions = async_sessionmaker[AsyncSession]
OCTOBER = Period.month("2026-10")
NOW = datetime(2026, 11, 2, 10, 0, tzinfo=CHINA_TZ)  # when the October file is made
PHONE = "13812345678"
NAME = "张晓明"
ADDRESS = "人民路88号3单元"
SENTENCE = "我家楼下的下水道堵了三天，臭味很大"
RESULT = "已派人疏通，张晓明先生表示满意"
STAFF = "staff:li"


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A China-time moment of 2026."""
    return datetime(2026, month, day, hour, minute, tzinfo=CHINA_TZ)


async def _case(
    session: AsyncSession,
    identity: ChannelIdentity,
    number: str,
    filed: datetime,
    *moves: tuple[str, datetime],
    department: int | None = None,
    **fields: object,
) -> ServiceCase:
    """A case filed at `filed` and moved through `moves` (operation, time) by the one path."""
    values: dict[str, object] = {
        "case_number": number,
        "citizen_id": identity.citizen_id,
        "identity_id": identity.id,
        "description": SENTENCE,
        "location": ADDRESS,
        "contact_phone": PHONE,
        "created_at": filed,
    }
    values.update(fields)
    case = ServiceCase(**values)
    open_case(session, Actor.system(STAFF), case, now=filed)
    await session.flush()
    for action, moment in moves:
        await move_case(
            session,
            Actor.system(STAFF),
            case,
            action,
            note=f"{RESULT}，{NAME}，{PHONE}",
            department_id=department if action == "dispatch" else None,
            now=moment,
        )
    await session.flush()
    return case


async def build_cases(sessions: Sessions) -> None:
    """September, October and November cases; October's are the dataset's."""
    async with sessions.begin() as session:
        department = Department(code="A1-housing", name="A1区住建局", district="A1区")
        session.add(department)
        citizen = Citizen(phone=PHONE)
        session.add(citizen)
        await session.flush()
        web = ChannelIdentity(channel="web", external_id=f"web:{NAME}", citizen_id=citizen.id)
        telegram = ChannelIdentity(channel="telegram", external_id="tg:4242", citizen_id=citizen.id)
        rest = ChannelIdentity(channel="rest", external_id="api:grid", citizen_id=citizen.id)
        board = ChannelIdentity(channel="board", external_id="board:77", citizen_id=citizen.id)
        session.add_all([web, telegram, rest, board])
        await session.flush()
        d = department.id
        # 00:10 on 1 October in Beijing is still 30 September in UTC: October's. Filed on the
        # National Day holiday, answered and 办结 after it: 8, 9, 10 (a Saturday worked) and 12 October.
        holiday = await _case(
            session, web, "20261001-0001", at(10, 1, 0, 10),
            ("dispatch", at(10, 1, 9)), ("accept", at(10, 8, 9)), ("start", at(10, 8, 10)),
            ("resolve", at(10, 12, 15)), ("review", at(10, 13, 10)), ("archive", at(10, 14, 10)),
            department=d, category="城乡建设", case_type="投诉", district="A1区", due_at=at(10, 15, 18),
        )  # fmt: skip
        session.add(
            CaseEvent(
                case_id=holiday.id, from_status="in_progress", to_status="in_progress", kind="reply",
                note=f"{NAME}您好，已联系物业", actor=STAFF, created_at=at(10, 9, 11),
            )
        )  # fmt: skip
        # 办结 after its deadline (4 working days: 21, 22, 23 and 26 October).
        await _case(
            session, web, "20261020-0001", at(10, 20, 9),
            ("dispatch", at(10, 20, 10)), ("accept", at(10, 21, 9)), ("start", at(10, 21, 10)),
            ("resolve", at(10, 26, 10)),
            department=d, category="城乡建设", case_type="投诉", district="A1区", due_at=at(10, 22, 18),
        )  # fmt: skip
        # Signed for, still open on 2 November, past its deadline.
        await _case(
            session, telegram, "20261015-0001", at(10, 15, 9),
            ("dispatch", at(10, 15, 10)), ("accept", at(10, 16, 9)),
            department=d, category="交通运输", case_type="建议", district="A2区", due_at=at(10, 20, 18),
        )  # fmt: skip
        # 重办: 办结 once, reopened, so open again and without a 办结 date; not yet due.
        await _case(
            session, web, "20261010-0001", at(10, 10, 9),
            ("dispatch", at(10, 10, 10)), ("accept", at(10, 12, 9)), ("start", at(10, 12, 10)),
            ("resolve", at(10, 13, 10)), ("reopen", at(10, 14, 10)),
            department=d, category="城乡建设", case_type="求助", district="A1区", due_at=at(11, 20, 18),
        )  # fmt: skip
        # 23:50 on 31 October in Beijing: October's. No type, no district, no category yet.
        await _case(session, rest, "20261031-0001", at(10, 31, 23, 50))
        # A message-board reply imported as history: only 受理 and 办结 are known; never late.
        imported = await _case(
            session, board, "20261005-0001", at(10, 5, 8),
            ("dispatch", at(10, 5, 8)), ("accept", at(10, 9, 17)), ("start", at(10, 9, 17)),
            ("resolve", at(10, 9, 17)),
            department=d, category="环境保护", case_type="投诉", district="A3区", due_at=at(10, 6, 18),
        )  # fmt: skip
        session.add(ImportedMessage(source="board", msg_id="77", case_id=imported.id, source_file="board.csv"))
        # 23:30 on 30 September and 00:05 on 1 November in Beijing: not October's.
        await _case(session, web, "20260930-0001", at(9, 30, 23, 30), category="城乡建设", district="A1区")
        await _case(session, web, "20261101-0001", at(11, 1, 0, 5), category="城乡建设", district="A1区")


COLUMNS_ORDER = (
    "case_number,filed_date,channel,case_type,category,district,dispatched_date,accepted_date,first_answer_date,"
    "resolved_date,reviewed_date,archived_date,due_date,status,status_label,open311_status,working_days,overdue"
)
EXPECTED_CSV = f"""\ufeff{COLUMNS_ORDER}
20261001-0001,2026-10-01,web,投诉,城乡建设,A1区,2026-10-01,2026-10-08,2026-10-09,2026-10-12,2026-10-13,2026-10-14,2026-10-15,archived,已归档,closed,4,false
20261005-0001,2026-10-05,board,投诉,环境保护,A3区,,,2026-10-09,2026-10-09,,,2026-10-06,resolved,已办结,closed,2,
20261010-0001,2026-10-10,web,求助,城乡建设,A1区,2026-10-10,2026-10-12,2026-10-13,,,,2026-11-20,in_progress,办理中,open,,false
20261015-0001,2026-10-15,telegram,建议,交通运输,A2区,2026-10-15,2026-10-16,,,,,2026-10-20,accepted,已签收,open,,true
20261020-0001,2026-10-20,web,投诉,城乡建设,A1区,2026-10-20,2026-10-21,2026-10-26,2026-10-26,,,2026-10-22,resolved,已办结,closed,4,true
20261031-0001,2026-10-31,rest,未分类,,,,,,,,,,received,已受理,open,,false
""".replace("\n", "\r\n")


async def export(sessions: Sessions, out: Path, period: Period = OCTOBER, min_cell: int = 1) -> open_data.Written:
    return await open_data.write_dataset(sessions, period, out, exported_by="tester", min_cell=min_cell, now=NOW)


async def test_october_csv_has_exactly_the_expected_rows(sessions: Sessions, tmp_path: Path) -> None:
    await build_cases(sessions)
    written = await export(sessions, tmp_path)
    assert written.paths == (tmp_path / "cases-2026-10.csv", tmp_path / "cases-2026-10.json")
    assert (written.rows, written.generalised) == (6, 0)
    raw = (tmp_path / "cases-2026-10.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with a BOM: Excel reads the Chinese right
    assert raw.decode("utf-8") == EXPECTED_CSV


async def test_october_json_has_metadata_and_the_same_rows(sessions: Sessions, tmp_path: Path) -> None:
    await build_cases(sessions)
    await export(sessions, tmp_path)
    raw = (tmp_path / "cases-2026-10.json").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")
    document = json.loads(raw.decode("utf-8"))
    assert document["month"] == "2026-10"
    assert document["generated_at"] == "2026-11-02T10:00:00+08:00"
    assert document["period"] == {"start": "2026-10-01T00:00:00+08:00", "end": "2026-11-01T00:00:00+08:00"}
    assert document["licence"] == open_data.LICENCE
    assert (document["row_count"], document["min_cell"], document["generalised_rows"]) == (6, 1, 0)
    assert [column["name"] for column in document["columns"]] == COLUMNS_ORDER.split(",")
    assert all(column["title"] and column["description"] for column in document["columns"])
    expected = list(csv.DictReader(io.StringIO(EXPECTED_CSV.lstrip("\ufeff"))))
    as_text = [
        {
            key: "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in row.items()
        }
        for row in document["rows"]
    ]
    assert as_text == expected
    holiday, imported = document["rows"][0], document["rows"][1]
    assert (holiday["working_days"], holiday["overdue"]) == (4, False)
    assert (imported["dispatched_date"], imported["overdue"]) == (None, None)
    unknown = document["rows"][5]  # no category or district yet: null, not ""
    assert (unknown["category"], unknown["district"], unknown["case_type"]) == (None, None, "未分类")


async def test_no_personal_data_appears_in_either_file(sessions: Sessions, tmp_path: Path) -> None:
    await build_cases(sessions)
    await export(sessions, tmp_path)
    for name in ("cases-2026-10.csv", "cases-2026-10.json"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        for personal in (
            PHONE,
            PHONE[-4:],
            NAME,
            ADDRESS,
            "人民路",
            SENTENCE,
            "下水道",
            RESULT,
            "4242",
            STAFF,
            "住建局",
        ):
            assert personal not in text, (name, personal)
        assert json.dumps(PHONE) not in text


async def test_small_cells_lose_their_district_and_case_number(sessions: Sessions, tmp_path: Path) -> None:
    await build_cases(sessions)
    written = await export(sessions, tmp_path, min_cell=2)
    assert (written.rows, written.generalised) == (6, 4)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cases-2026-10.csv").read_text(encoding="utf-8-sig"))))
    kept = [(row["case_number"], row["district"]) for row in rows]
    assert kept == [
        ("20261001-0001", "A1区"),  # two A1区 城乡建设 投诉 cases in October: kept
        ("", "其他"),
        ("", "其他"),
        ("", "其他"),
        ("20261020-0001", "A1区"),
        ("", "其他"),
    ]
    assert rows[3]["category"] == "交通运输"  # the rest of a generalised row is published
    document = json.loads((tmp_path / "cases-2026-10.json").read_text(encoding="utf-8"))
    assert (document["min_cell"], document["generalised_rows"]) == (2, 4)


async def test_the_default_generalises_cells_under_five(sessions: Sessions, tmp_path: Path) -> None:
    await build_cases(sessions)
    written = await open_data.write_dataset(sessions, OCTOBER, tmp_path, exported_by="tester", now=NOW)
    assert (written.min_cell, written.generalised) == (5, 6)


async def test_months_are_beijing_months(sessions: Sessions, tmp_path: Path) -> None:
    await build_cases(sessions)
    await export(sessions, tmp_path, Period.month("2026-09"))
    await export(sessions, tmp_path, Period.month("2026-11"))
    september = (tmp_path / "cases-2026-09.csv").read_text(encoding="utf-8-sig").splitlines()
    november = (tmp_path / "cases-2026-11.csv").read_text(encoding="utf-8-sig").splitlines()
    assert [line.split(",")[:2] for line in september[1:]] == [["20260930-0001", "2026-09-30"]]
    assert [line.split(",")[:2] for line in november[1:]] == [["20261101-0001", "2026-11-01"]]
    assert OCTOBER.start.astimezone(UTC) == datetime(2026, 9, 30, 16, 0, tzinfo=UTC)


async def test_an_empty_month_writes_a_header_and_an_empty_list(sessions: Sessions, tmp_path: Path) -> None:
    await export(sessions, tmp_path, Period.month("2025-02"))
    assert (tmp_path / "cases-2025-02.csv").read_bytes().decode("utf-8") == f"\ufeff{COLUMNS_ORDER}\r\n"
    document = json.loads((tmp_path / "cases-2025-02.json").read_text(encoding="utf-8"))
    assert (document["rows"], document["row_count"]) == ([], 0)


async def test_the_export_is_audited_with_period_counts_and_who(sessions: Sessions, tmp_path: Path) -> None:
    await build_cases(sessions)
    await export(sessions, tmp_path)
    async with sessions() as session:
        entry = (await session.scalars(select(AuditEntry).where(AuditEntry.action == "open_data.export"))).one()
    assert (entry.actor, entry.target) == ("cli", "2026-10")
    assert entry.detail == f"6 rows (0 generalised, min_cell 1) to {tmp_path.resolve()} by tester"


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "November", "", "2026-11-01"])
def test_a_malformed_month_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput, match="YYYY-MM"):
        Period.month(text)


def test_december_ends_at_the_new_year_in_beijing() -> None:
    december = Period.month("2026-12")
    assert (december.start, december.end) == (at(12, 1, 0), datetime(2027, 1, 1, tzinfo=CHINA_TZ))


def test_last_month_is_counted_in_beijing_time() -> None:
    # 1 December 00:30 in Beijing is still 30 November in UTC: last month is November.
    assert open_data.last_month(datetime(2026, 11, 30, 16, 30, tzinfo=UTC)).label == "2026-11"
    assert open_data.last_month(datetime(2027, 1, 1, 0, 30, tzinfo=CHINA_TZ)).label == "2026-12"


def test_every_column_is_documented_once() -> None:
    assert len(set(COLUMN_NAMES)) == len(COLUMN_NAMES) == len(open_data.COLUMNS)


# --- the command ---------------------------------------------------------------------------


async def test_the_command_writes_both_files_and_audits_it_without_the_data_keys(
    sessions: Sessions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await build_cases(sessions)
    for name in ("DATA_KEYS", "DATA_KEY_CURRENT", "DATA_HMAC_KEY"):  # it reads no encrypted column
        monkeypatch.delenv(name)
    out = tmp_path / "published" / "2026"
    result = await asyncio.to_thread(
        run_cli, "open-data", "--month", "2026-10", "--out", str(out), "--min-cell", "1", database=tmp_path / "crm.db"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == ["cases-2026-10.csv", "cases-2026-10.json"]
    assert f"wrote {out / 'cases-2026-10.csv'} and {out / 'cases-2026-10.json'}: 6 cases" in result.stdout
    rows = (out / "cases-2026-10.csv").read_bytes().decode("utf-8").splitlines()
    assert rows[1] == EXPECTED_CSV.splitlines()[1]
    assert json.loads((out / "cases-2026-10.json").read_text(encoding="utf-8"))["row_count"] == 6
    async with sessions() as session:
        entry = (await session.scalars(select(AuditEntry).where(AuditEntry.action == "open_data.export"))).one()
    assert (entry.actor, entry.target) == ("cli", "2026-10")


@pytest.mark.parametrize("month", ["2026-13", "11/2026"])
def test_the_command_refuses_a_bad_month_with_exit_code_2(tmp_path: Path, month: str) -> None:
    result = run_cli("open-data", "--month", month, "--out", str(tmp_path / "out"), database=tmp_path / "crm.db")
    assert result.returncode == 2
    assert "month must be YYYY-MM, e.g. 2026-11" in result.stderr
    assert not (tmp_path / "out").exists()
