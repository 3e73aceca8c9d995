"""A city's own facts (city.yml) in the knowledge base's answers: filled in, or left out cleanly."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from crm_backend.knowledge.entries import EntryData, InvalidEntry, load_file
from crm_backend.knowledge.facts import (
    FACTS,
    CityFacts,
    CityFactsError,
    load_city_facts,
    placeholders,
)
from crm_backend.knowledge.followups import aspect_answer
from crm_backend.services import knowledge
from crm_backend.settings import PROJECT_ROOT
from tests.support.stack import DATA_KEY_SECRETS

Sessions = async_sessionmaker[AsyncSession]

ENTRIES = load_file()
BY_SLUG = {entry.slug: entry for entry in ENTRIES}
NONE_FILLED = CityFacts({})
ALL_FILLED = CityFacts({name: f"〈{name}的值〉" for name in FACTS})
PUNCTUATION_START = re.compile(r"^\s*[，。、；：,.;:！？）)]")
NUMBERED = re.compile(r"^\s*\d+[.、．]")


def shown_texts(entry: EntryData) -> list[str]:
    return [entry.answer, *entry.follow_ups.values()]


def assert_clean(text: str, where: str) -> None:
    """No placeholder bracket, no line opening on punctuation, no heading left without its list."""
    assert "【" not in text and "】" not in text, where
    lines = text.split("\n")
    for position, line in enumerate(lines):
        assert line.strip(), f"{where}: empty line in {text!r}"
        assert not PUNCTUATION_START.match(line), f"{where}: {line!r}"
        assert "，。" not in line and "，；" not in line and "；。" not in line, f"{where}: {line!r}"
        assert not re.search(r"[：:]\s*[，。；、]", line), f"{where}: {line!r}"
        if line.rstrip().endswith(("：", ":")):
            following = lines[position + 1] if position + 1 < len(lines) else ""
            assert NUMBERED.match(following), f"{where}: heading {line!r} has no list under it"


# --- the configuration file ---------------------------------------------------------------------


def test_the_shipped_city_file_names_every_fact_and_fills_none() -> None:
    facts = load_city_facts(PROJECT_ROOT / "city.yml")
    assert facts.values == {}
    text = (PROJECT_ROOT / "city.yml").read_text(encoding="utf-8")
    for name in FACTS:
        assert f'\n{name}: ""' in text, name


def test_every_placeholder_in_the_data_file_is_a_known_fact() -> None:
    used = {name for entry in ENTRIES for text in shown_texts(entry) for name in placeholders(text)}
    assert used == set(FACTS)


def test_a_filled_fact_is_read_and_an_empty_one_counts_as_not_filled(tmp_path: Path) -> None:
    path = tmp_path / "city.yml"
    path.write_text('本地办事地址: "A市民中心（人民路1号）"\n本地办公时间: ""\n本市政务服务网:\n', encoding="utf-8")
    facts = load_city_facts(path)
    assert facts.values == {"本地办事地址": "A市民中心（人民路1号）"}
    assert facts.missing("【本地办事地址】【本地办公时间】【本市政务服务网】") == ["本地办公时间", "本市政务服务网"]


@pytest.mark.parametrize(
    "content",
    [
        "本地办事地址: [一, 二]\n",  # not text
        "- 本地办事地址\n",  # not a mapping
        "本地办事地址: 'A\n",  # not YAML
        '本地办事地址: "第一行\\n第二行"\n',  # two lines
        '本地办事地址: "【本地办公时间】"\n',  # a placeholder in a value
    ],
)
def test_a_malformed_city_file_stops_the_start_with_its_path(tmp_path: Path, content: str) -> None:
    path = tmp_path / "city.yml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CityFactsError, match=r"city\.yml"):
        load_city_facts(path)


def test_a_missing_city_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(CityFactsError, match=r"nothing\.yml"):
        load_city_facts(tmp_path / "nothing.yml")


def test_an_unknown_key_is_reported_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "city.yml"
    path.write_text('本地办事地点: "人民路1号"\n本地办事地址: "人民路1号"\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        facts = load_city_facts(path)
    assert facts.values == {"本地办事地址": "人民路1号"}
    assert "本地办事地点" in caplog.text


def test_the_city_file_path_comes_from_the_environment(tmp_path: Path) -> None:
    secrets = {name: "s" * 16 for name in ("ENGINE_TOKEN", "ACTION_TOKEN", "REST_CHANNEL_TOKEN")} | DATA_KEY_SECRETS
    assert Settings.from_env(secrets).city_facts_path == PROJECT_ROOT / "city.yml"
    own = tmp_path / "facts.yml"
    assert Settings.from_env(secrets | {"CITY_FACTS_FILE": str(own)}).city_facts_path == own


# --- rendering: one line at a time --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # A place-holder clause of its own goes with the comma before it.
        ("办理地点：居住地派出所，【本地办事地址】。", "办理地点：居住地派出所。"),
        # A labelled line left with nothing is dropped.
        ("申请材料：身份证。\n办理地点：【本地办事地址】。\n收费：免费。", "申请材料：身份证。\n收费：免费。"),
        ("办理时间：法定工作日【本地办公时间】。", ""),
        ("办理时间：法定工作日【本地办公时间】；节日以公告为准。", "办理时间：节日以公告为准。"),
        ("办理地点：社保经办窗口，【本地办事地址】；法定工作日【本地办公时间】。", "办理地点：社保经办窗口。"),
        # One of several alternatives goes with its 或 / 、.
        ("线上办理：可通过【本市政务服务网】或公安政务小程序预约。", "线上办理：可通过公安政务小程序预约。"),
        ("线上：本省人社App、【本市政务服务网】或“掌上12333”App。", "线上：本省人社App或“掌上12333”App。"),
        ("营业厅，【本地供水/燃气服务电话】、【本地办事地址】。", "营业厅。"),
        # A sentence that names a missing fact in its first clause goes whole; a later clause alone.
        ("可先咨询。也可登录【本市政务服务网】在线办理。", "可先咨询。"),
        ("故障报修拨95598，供水燃气拨【本地供水/燃气服务电话】。", "故障报修拨95598。"),
        ("在【本市义务教育招生入学服务平台】报名。", ""),
        # A numbered list closes its gap, and a heading whose whole list went goes too.
        (
            "查询方式：\n1. 小程序；\n2. 【本地公积金服务热线】（全国为12329，部分已并入12345）；\n"
            "3. 网点，【本地办事地址】。",
            "查询方式：\n1. 小程序；\n2. 网点。",
        ),
        ("查询方式：\n1. 【本市政务服务网】。\n其他：无。", "其他：无。"),
        # Something in brackets that is not a fact at all is left out the same way.
        ("办理地点：窗口，【…】。", "办理地点：窗口。"),
    ],
)
def test_a_missing_fact_is_left_out_without_a_trace(text: str, shown: str) -> None:
    assert NONE_FILLED.render(text) == shown


def test_a_filled_fact_takes_its_placeholder_s_place() -> None:
    facts = CityFacts({"本地办事地址": "A市民中心（人民路1号）", "本市政务服务网": "A市政务服务网（www.a.gov.cn）"})
    text = (
        "办理地点：派出所，【本地办事地址】；法定工作日【本地办公时间】。\n线上：可通过【本市政务服务网】或小程序申请。"
    )
    assert facts.render(text) == (
        "办理地点：派出所，A市民中心（人民路1号）。\n线上：可通过A市政务服务网（www.a.gov.cn）或小程序申请。"
    )


# --- rendering: every entry of the data file ----------------------------------------------------


@pytest.mark.parametrize("facts", [NONE_FILLED, ALL_FILLED], ids=["none-filled", "all-filled"])
def test_every_entry_reads_cleanly_with_no_facts_and_with_all(facts: CityFacts) -> None:
    for entry in ENTRIES:
        shown = facts.render_entry(entry)
        assert shown.answer.strip(), entry.slug
        for where, text in [("answer", shown.answer), *shown.follow_ups.items()]:
            if text:
                assert_clean(text, f"{entry.slug} {where}")


def test_with_every_fact_filled_every_value_appears_where_its_placeholder_was() -> None:
    for entry in ENTRIES:
        shown = ALL_FILLED.render_entry(entry)
        for original, text in zip(shown_texts(entry), shown_texts(shown), strict=True):
            for name in placeholders(original):
                assert f"〈{name}的值〉" in text, (entry.slug, name)


def test_a_follow_up_left_empty_falls_back_like_one_never_written() -> None:
    entry = BY_SLUG["compulsory-school-enrollment"]
    assert entry.follow_ups["线上"] == "在【本市义务教育招生入学服务平台】网上报名。"
    shown = NONE_FILLED.render_entry(entry)
    assert "线上" not in shown.follow_ups
    assert aspect_answer(shown, "线上") is None
    filled = CityFacts({"本市义务教育招生入学服务平台": "A市招生平台"}).render_entry(entry)
    assert aspect_answer(filled, "线上") == "在A市招生平台网上报名。"


def test_the_entries_missing_facts_are_named_in_first_use_order() -> None:
    entry = BY_SLUG["residence-permit-apply"]
    assert NONE_FILLED.missing_in(entry) == ["本地办事地址", "本地办公时间", "本市政务服务网"]
    assert CityFacts({"本地办公时间": "9:00"}).missing_in(entry) == ["本地办事地址", "本市政务服务网"]


# --- everything that shows an answer ------------------------------------------------------------


async def test_the_bot_s_knowledge_base_shows_rendered_entries(sessions: Sessions) -> None:
    await knowledge.seed_knowledge_once(sessions)
    facts = CityFacts({"本地办事地址": "A市民中心"})
    base = knowledge.KnowledgeBase(sessions, facts)
    entry = await base.entry("residence-permit-apply")
    assert entry is not None
    assert "A市民中心" in entry.answer and "【" not in entry.answer
    assert "【" not in "".join(entry.follow_ups.values())


def test_an_edit_naming_an_unknown_fact_is_refused() -> None:
    entry = EntryData(
        slug="star-card",
        title="星光卡",
        category="民政",
        department="A市民政局",
        questions=("星光卡怎么办",),
        answer="办理地点：【本地办事地点】。",
        follow_ups={"时间": "【本地办公时间】"},
        last_reviewed=date(2026, 11, 20),
    )
    with pytest.raises(InvalidEntry) as refused:
        entry.checked()
    assert any("【本地办事地点】" in problem and "city.yml" in problem for problem in refused.value.problems)
    replace(entry, answer="办理地点：【本地办事地址】。").checked()


async def test_the_console_list_names_missing_facts_and_keeps_only_those_entries(sessions: Sessions) -> None:
    await knowledge.seed_knowledge_once(sessions)
    filled = CityFacts({name: "已填写" for name in FACTS if name != "本地检测站信息"})
    async with sessions() as session:
        rows = await knowledge.list_entries(session, facts=filled, missing_only=True)
        every = await knowledge.list_entries(session, facts=filled)
    assert {row.entry.slug for row in rows} == {
        entry.slug for entry in ENTRIES if "【本地检测站信息】" in "".join(shown_texts(entry))
    }
    assert all(row.missing_facts == ("本地检测站信息",) for row in rows)
    assert len(every) == len(ENTRIES)
