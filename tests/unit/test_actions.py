"""The custom actions, driven with real trackers and dispatchers against a real database.

The report actions get one real dispatch desk (the trained category classifier and the
gazetteer, loaded once per session) and, where they route, a database seeded with the
real routing tables.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions import build_actions
from actions.dispatch import (
    ActionAskCategoryChoice,
    ActionAskDistrict,
    ActionAskReportConfirmed,
    ActionSubmitReport,
    readback_description,
)
from actions.progress import ActionAskCaseNumber, ActionCheckProgress, ActionStartProgress, ValidateProgressForm
from actions.report import REPORT_SLOTS, ActionCancelRequest, ActionStartReport, ValidateReportForm
from bot.responses import Responses
from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.deadlines import due_at
from crm_backend.dispatch.routing import seed_routing
from crm_backend.dispatch.service import Dispatcher
from crm_backend.models import (
    CaseEvent,
    CategoryPolicy,
    ChannelIdentity,
    Conversation,
    Department,
    RoutingDecision,
    ServiceCase,
    StaffLabel,
    utcnow,
)
from crm_backend.services.conversations import current_conversation, resolve_identity
from crm_backend.services.intake import CHINA_TZ, Report, file_case
from crm_backend.services.knowledge import KnowledgeBase
from crm_backend.services.lookup import MAX_FAILURES_PER_SENDER
from tests.support.models import case_type_model
from tests.support.moves import advance
from tests.support.proofs import proof_alarm_for

Sessions = async_sessionmaker[AsyncSession]

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = yaml.safe_load((ROOT / "domain.yml").read_text(encoding="utf-8"))
STATUS_WORDS = Responses.load(ROOT / "domain.yml").status  # the citizen's words for each status
CATEGORY_MODEL = ROOT / "models" / "category_classifier.joblib"
PROGRESS_SLOTS = ["case_number", "phone_last4"]
REPORT_FORM_SLOTS: list[str] = DOMAIN["forms"]["report_form"]["required_slots"]
PHONE = "13812345678"
# The home city's districts and counties, in the order of data/gazetteer/districts.csv.
A_CITY = ["A1区", "A2区", "A3区", "A4区", "A5区", "A6区", "A7县", "A8县", "A9市"]

# From ../shared/data/citizen_messages_train.csv (label 城乡建设).
HOUSING = (
    "A2区山水嘉园1栋三单元群租房扰民 A市A2区黄谷路368号山水嘉园1栋三单元706房被改建成6户，分别出租给不同人员，"
    "存在严重的消防、治安等隐患，投诉给物业公司，未见处理，给居民的生活带来很大负面影响，恳请相关部门处理此类现象，"
    "给居民一个良好的生活环境。"
)
HOUSING_PLACE = "A2区黄谷路368号山水嘉园"
GAS_LEAK = "楼道里有很浓的煤气味，好像是燃气泄漏了，大家都不敢开灯"
DRAIN = "菜市场门口的下水道堵了，污水流得满地都是，臭得不行"
DRAIN_AGAIN = "菜市场门口下水道堵了，污水流得满地都是，太臭了"
# Says nothing a category can be told from: the classifier is unsure, the case goes to the manual queue.
UNCLEAR = "你好，我有个事情想问问，麻烦尽快回复，谢谢"

CONFIRM_BUTTONS = [
    {"title": "确认提交", "payload": "/affirm"},
    {"title": "更正类别", "payload": "/correct_category"},
    {"title": "更正类型", "payload": "/correct_case_type"},
    {"title": "更正地点", "payload": "/correct_location"},
    {"title": "取消", "payload": "/deny"},
]
DUPLICATE_BUTTONS = [{"title": "仍然提交", "payload": "/affirm"}, {"title": "不用了", "payload": "/deny"}]

# Source bugs these tests found (see the xfail tests).
BUG_DISTRICT_ANSWER_NOT_VALIDATED = (
    "actions/report.py ValidateReportForm.required_slots lists 'district' only while the slot is empty, and "
    "rasa_sdk validates only the slots required_slots returns: the district the citizen answers is never passed "
    "to validate_district (no canonical name, no location prefix, an unknown place accepted)"
)
BUG_CATEGORY_ANSWER_NOT_VALIDATED = (
    "actions/report.py ValidateReportForm.required_slots lists 'category_choice' only while the slot is empty: "
    "a typed category answer is never passed to validate_category_choice and is accepted as it is"
)
BUG_ALIAS_PREFIXED_AGAIN = (
    "actions/report.py with_district() looks for the canonical district name only: a location naming the "
    "district by an alias or in full-width characters gets the district prefixed a second time"
)
BUG_CITY_AS_DISTRICT = (
    "actions/report.py validate_district takes any name Gazetteer.canonical_district knows, cities included: "
    "'A市' is accepted as the district"
)


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="session")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Dispatcher:
    """The dispatch desk as the app builds it: the classifier bin/setup trained, and the gazetteer."""
    model = CATEGORY_MODEL
    if not model.exists():
        model = tmp_path_factory.mktemp("classifier") / "category_classifier.joblib"
        subprocess.run(
            [sys.executable, "-m", "crm_backend.dispatch", "train", "--out", str(model)], cwd=ROOT, check=True
        )
    return Dispatcher.load(model, case_type_model_path=case_type_model(tmp_path_factory.mktemp("case_types")))


@pytest.fixture
async def seeded(sessions: Sessions) -> Sessions:
    """The database with the departments, category policies and routing rules the app loads at start."""
    async with sessions.begin() as session:
        assert await seed_routing(session)
    return sessions


@pytest.fixture
def dispatcher() -> CollectingDispatcher:
    return CollectingDispatcher()


# --- helpers -----------------------------------------------------------------


def make_tracker(
    sender_id: str = "web:abc",
    *,
    slots: dict[str, Any] | None = None,
    text: str = "",
    intent: str | None = None,
    entities: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None,
    active_loop: str | None = None,
    metadata: dict[str, Any] | None = None,
    message_id: str | None = None,
) -> Tracker:
    """A tracker as the engine sends it to the action server."""
    return Tracker.from_dict(
        {
            "sender_id": sender_id,
            "slots": slots or {},
            "latest_message": {
                "text": text,
                "intent": {"name": intent, "confidence": 0.97} if intent else {},
                "entities": entities or [],
                "metadata": metadata or {},
                "message_id": message_id,
            },
            "events": events or [],
            "active_loop": {"name": active_loop} if active_loop else {},
            "latest_action_name": "action_listen",
        }
    )


def entity(name: str, value: str) -> dict[str, Any]:
    return {"entity": name, "value": value, "start": 0, "end": len(value), "extractor": "DIETClassifier"}


def slot_state(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The slot values the events leave behind (a later SlotSet wins)."""
    return {event["name"]: event["value"] for event in events if event["event"] == "slot"}


def responses(dispatcher: CollectingDispatcher) -> list[str | None]:
    return [message["response"] for message in dispatcher.messages]


def rendered(message: dict[str, Any]) -> str:
    """A message as the citizen reads it: its domain text filled with the values the action passed.

    Raises KeyError when the action left a placeholder of the text unfilled.
    """
    return str(DOMAIN["responses"][message["response"]][0]["text"]).format(**message)


def cleared(*names: str) -> dict[str, None]:
    return dict.fromkeys(names)


def day_text(moment: datetime) -> str:
    """A date as the bot writes it to citizens: 12月8日 (Beijing time)."""
    local = moment.astimezone(CHINA_TZ)
    return f"{local.month}月{local.day}日"


def payload_intent(payload: str) -> str:
    """The intent a button payload triggers: /give_location{"district": "A1区"} -> give_location."""
    match = re.fullmatch(r"/(\w+)(\{.*\})?", payload)
    assert match, payload
    return match.group(1)


async def register(sessions: Sessions, external_id: str, channel: str = "web") -> ChannelIdentity:
    """A citizen who has opened a chat (identity and conversation), committed."""
    async with sessions.begin() as session:
        identity = await resolve_identity(session, channel, external_id)
        await current_conversation(session, identity)
    return identity


async def second_channel(sessions: Sessions, identity: ChannelIdentity, external_id: str) -> ChannelIdentity:
    """The same citizen on Telegram, committed."""
    async with sessions.begin() as session:
        other = ChannelIdentity(channel="telegram", external_id=external_id, citizen_id=identity.citizen_id)
        session.add(other)
    return other


async def file(sessions: Sessions, identity: ChannelIdentity, phone: str = PHONE) -> ServiceCase:
    async with sessions.begin() as session:
        return await file_case(
            session, identity, Report(description="路灯坏了三天", location="朝阳区建国路", contact_phone=phone)
        )


async def file_in(sessions: Sessions, identity: ChannelIdentity, description: str, district: str) -> ServiceCase:
    """An open case filed (not routed) in a district, committed."""
    async with sessions.begin() as session:
        report = Report(
            description=description, location=f"{district}桂花路菜市场", contact_phone=PHONE, district=district
        )
        return await file_case(session, identity, report)


async def all_cases(sessions: Sessions) -> list[ServiceCase]:
    async with sessions() as session:
        return list((await session.scalars(select(ServiceCase).order_by(ServiceCase.id))).all())


async def all_decisions(sessions: Sessions) -> list[RoutingDecision]:
    async with sessions() as session:
        return list((await session.scalars(select(RoutingDecision).order_by(RoutingDecision.id))).all())


# --- the domain and the actions agree -----------------------------------------


async def test_every_action_is_declared_in_the_domain(sessions: Sessions, desk: Dispatcher) -> None:
    async with proof_alarm_for(sessions) as alarm:
        actions = build_actions(sessions, desk, KnowledgeBase(sessions), alarm, STATUS_WORDS)
    assert {action.name() for action in actions} == set(DOMAIN["actions"])


@pytest.mark.parametrize(
    "response",
    [
        "utter_phone_missing",
        "utter_phone_length",
        "utter_phone_prefix",
        "utter_description_too_short",
        "utter_location_too_short",
        "utter_choose_district",
        "utter_district_invalid",
        "utter_choose_category",
        "utter_category_invalid",
        "utter_report_summary",
        "utter_dispatch_preview",
        "utter_dispatch_preview_urgent",
        "utter_dispatch_preview_manual",
        "utter_duplicate_found",
        "utter_duplicate_not_filed",
        "utter_confirm_please",
        "utter_case_created_routed",
        "utter_case_created_queued",
        "utter_case_failed",
        "utter_report_cancelled",
        "utter_progress_cancelled",
        "utter_case_number_invalid",
        "utter_phone_last4_invalid",
        "utter_ask_case_number",
        "utter_ask_case_number_choices",
        "utter_case_progress",
        "utter_case_lookup_failed",
        "utter_lookup_throttled",
        "utter_handoff_on_duty",
        "utter_handoff_off_duty",
        "utter_answer_rejected",
        "utter_default",
        "utter_goodbye",
        "utter_anything_else",
    ],
)
def test_responses_the_actions_utter_exist_in_the_domain(response: str) -> None:
    assert response in DOMAIN["responses"]


def test_every_response_named_in_the_actions_code_exists_in_the_domain() -> None:
    code = "\n".join(path.read_text(encoding="utf-8") for path in sorted((ROOT / "actions").glob("*.py")))
    # "utter_action" is the engine's metadata key naming the response a bot message came from.
    named = set(re.findall(r"""["'](utter_\w+)["']""", code)) - {"utter_action"}
    assert {"utter_report_summary", "utter_dispatch_preview", "utter_dispatch_preview_urgent"} <= named
    assert sorted(named - set(DOMAIN["responses"])) == []


@pytest.mark.parametrize("slot", REPORT_FORM_SLOTS)
def test_each_report_form_slot_is_asked_one_way(slot: str) -> None:
    """A question the form asks comes from one action_ask_<slot> or one utter_ask_<slot>, never both."""
    ways = [f"action_ask_{slot}" in DOMAIN["actions"], f"utter_ask_{slot}" in DOMAIN["responses"]]
    assert ways.count(True) == 1, ways


def test_report_slots_are_domain_slots() -> None:
    assert set(REPORT_SLOTS) <= set(DOMAIN["slots"])
    assert set(REPORT_FORM_SLOTS) <= set(REPORT_SLOTS)
    assert DOMAIN["forms"]["progress_form"]["required_slots"] == PROGRESS_SLOTS


async def test_every_category_offered_has_a_routing_policy(seeded: Sessions) -> None:
    async with seeded() as session:
        policies = set((await session.scalars(select(CategoryPolicy.category))).all())
    assert len(CATEGORIES) == 7
    assert policies == set(CATEGORIES)


# --- ActionStartReport -------------------------------------------------------


async def run_start_report(dispatcher: CollectingDispatcher, tracker: Tracker) -> dict[str, Any]:
    events = await ActionStartReport().run(dispatcher, tracker, {})
    assert slot_state(events[: len(REPORT_SLOTS)]) == cleared(*REPORT_SLOTS)
    return slot_state(events)


async def test_start_report_keeps_a_substantive_first_message_as_description(dispatcher: CollectingDispatcher) -> None:
    tracker = make_tracker(text=" 我要投诉小区门口的路灯坏了三天了 ", intent="report_issue")
    state = await run_start_report(dispatcher, tracker)
    assert state == cleared(*REPORT_SLOTS) | {"description": "我要投诉小区门口的路灯坏了三天了"}
    assert dispatcher.messages == []


@pytest.mark.parametrize("text", ["我要投诉", "我想反映一个问题", "你好，我要报修", "hello 投诉一下", "我要投诉噪音"])
async def test_start_report_drops_a_filler_only_opening(dispatcher: CollectingDispatcher, text: str) -> None:
    state = await run_start_report(dispatcher, make_tracker(text=text, intent="report_issue"))
    assert state == cleared(*REPORT_SLOTS)


async def test_start_report_from_the_greeting_button_asks_for_the_description(dispatcher: CollectingDispatcher) -> None:
    state = await run_start_report(dispatcher, make_tracker(text="/report_issue", intent="report_issue"))
    assert state["description"] is None


async def test_start_report_ignores_text_of_another_intent(dispatcher: CollectingDispatcher) -> None:
    state = await run_start_report(dispatcher, make_tracker(text="小区门口的路灯坏了三天了", intent="greet"))
    assert state["description"] is None


@pytest.mark.parametrize(
    ("entities", "district", "location"),
    [
        ([entity("district", "朝阳区"), entity("address", "建国路88号")], "朝阳区", "朝阳区建国路88号"),
        ([entity("district", "朝阳区"), entity("address", "朝阳区建国路88号")], "朝阳区", "朝阳区建国路88号"),
        ([entity("address", "建国路88号")], None, "建国路88号"),
        ([entity("district", "海淀区")], "海淀区", None),
    ],
)
async def test_start_report_sets_location_from_address_and_district(
    dispatcher: CollectingDispatcher, entities: list[dict[str, Any]], district: str | None, location: str | None
) -> None:
    tracker = make_tracker(text="建国路88号的井盖丢了", intent="report_issue", entities=entities)
    state = await run_start_report(dispatcher, tracker)
    assert (state["district"], state["location"]) == (district, location)
    assert state["description"] == "建国路88号的井盖丢了"


LETTER = (
    "A5区曲塘路渣土车噪音扰民\n曲塘路与京港澳高速辅道交叉口，每到下午六七点开始就有大量渣土车经过，"
    "噪音巨大，灰尘弥漫，严重影响附近居民的休息和健康，恳请有关部门管一管。"
)


async def test_start_report_reads_a_letters_place_with_the_gazetteer(
    dispatcher: CollectingDispatcher, desk: Dispatcher
) -> None:
    tracker = make_tracker(text=LETTER, intent="report_issue")
    events = await ActionStartReport(desk=desk).run(dispatcher, tracker, {})
    state = slot_state(events)
    assert (state["district"], state["location"]) == ("A5区", "A5区曲塘路")
    assert state["description"] == LETTER


async def test_start_report_leaves_a_short_messages_place_to_the_nlu(
    dispatcher: CollectingDispatcher, desk: Dispatcher
) -> None:
    tracker = make_tracker(text="A5区曲塘路渣土车噪音扰民", intent="report_issue")
    state = slot_state(await ActionStartReport(desk=desk).run(dispatcher, tracker, {}))
    assert (state["district"], state["location"]) == (None, None)


@pytest.mark.parametrize(
    ("description", "quoted"),
    [
        ("路灯坏了三天了", "路灯坏了三天了"),
        ("标题\n正文" + "很" * 300, ("标题 正文" + "很" * 300)[:200] + "…"),
        ("很" * 200, "很" * 200),
    ],
)
def test_the_read_back_quotes_a_long_letter_on_one_line_and_shortened(description: str, quoted: str) -> None:
    assert readback_description(description) == quoted


# --- ValidateReportForm: description, phone, location ----------------------------


@pytest.mark.parametrize(
    ("typed", "response"),
    [
        ("1381234567", "utter_phone_length"),
        ("138 1234 567", "utter_phone_length"),
        ("12345678901", "utter_phone_prefix"),
        ("23812345678", "utter_phone_prefix"),
        ("不想留", "utter_phone_missing"),
        ("", "utter_phone_missing"),
    ],
)
async def test_an_invalid_phone_is_refused_with_the_reason(
    desk: Dispatcher, dispatcher: CollectingDispatcher, typed: str, response: str
) -> None:
    result = await ValidateReportForm(desk).validate_contact_phone(typed, dispatcher, make_tracker(), {})
    assert result == {"contact_phone": None}
    assert responses(dispatcher) == [response]


@pytest.mark.parametrize("typed", ["138 1234 5678", "+86-138-1234-5678", "１３８１２３４５６７８", "电话13812345678"])
async def test_a_valid_phone_is_kept_normalised(desk: Dispatcher, dispatcher: CollectingDispatcher, typed: str) -> None:
    result = await ValidateReportForm(desk).validate_contact_phone(typed, dispatcher, make_tracker(), {})
    assert result == {"contact_phone": PHONE}
    assert dispatcher.messages == []


async def test_a_filler_description_is_refused(desk: Dispatcher, dispatcher: CollectingDispatcher) -> None:
    form = ValidateReportForm(desk)
    assert await form.validate_description("我要投诉", dispatcher, make_tracker(), {}) == {"description": None}
    assert await form.validate_description("井盖丢了很危险", dispatcher, make_tracker(), {}) == {
        "description": "井盖丢了很危险"
    }
    assert responses(dispatcher) == ["utter_description_too_short"]


@pytest.mark.parametrize("typed", ["北", "  ", "，。！", "a"])
async def test_a_location_too_short_is_refused(desk: Dispatcher, dispatcher: CollectingDispatcher, typed: str) -> None:
    result = await ValidateReportForm(desk).validate_location(typed, dispatcher, make_tracker(), {})
    assert result == {"location": None}
    assert responses(dispatcher) == ["utter_location_too_short"]


@pytest.mark.parametrize(
    ("typed", "slots", "location", "district"),
    [
        (" A3区阳光花园小区东门 ", {}, "A3区阳光花园小区东门", "A3区"),
        ("A市A2区黄谷路", {}, "A市A2区黄谷路", "A2区"),
        ("黄谷路368号", {}, "A2区黄谷路368号", "A2区"),
        ("火星街道办事处对面", {}, "A1区火星街道办事处对面", "A1区"),
        ("阳光花园小区东门", {"description": "A3区阳光花园的路灯坏了"}, "A3区阳光花园小区东门", "A3区"),
        ("人民路23号", {"district": "A1区"}, "A1区人民路23号", "A1区"),
        ("K8县丁字街", {}, "K8县丁字街", "K8县"),
    ],
    ids=[
        "district named",
        "city and district",
        "known street",
        "street alias",
        "in the description",
        "chosen before",
        "county",
    ],
)
async def test_a_location_that_settles_the_district_sets_it(
    desk: Dispatcher,
    dispatcher: CollectingDispatcher,
    typed: str,
    slots: dict[str, Any],
    location: str,
    district: str,
) -> None:
    tracker = make_tracker(slots={"description": "路灯坏了一个多星期了", **slots})
    result = await ValidateReportForm(desk).validate_location(typed, dispatcher, tracker, {})
    assert result == {"location": location, "district": district}
    assert dispatcher.messages == []


@pytest.mark.parametrize(
    ("typed", "candidates"),
    [
        ("A市", A_CITY),
        ("A市中心广场", A_CITY),
        ("阳光花园小区东门", A_CITY),
        ("北京朝阳区建国路88号", A_CITY),
        ("A1区和A2区交界处", ["A1区", "A2区"]),
    ],
    ids=["city only", "city and a place", "unknown place", "outside the gazetteer", "two districts"],
)
async def test_a_location_that_does_not_settle_the_district_offers_candidates(
    desk: Dispatcher, dispatcher: CollectingDispatcher, typed: str, candidates: list[str]
) -> None:
    tracker = make_tracker(slots={"description": "路灯坏了一个多星期了", "district": None})
    result = await ValidateReportForm(desk).validate_location(typed, dispatcher, tracker, {})
    assert result == {"location": typed, "district": None, "district_candidates": candidates}
    assert dispatcher.messages == []


async def test_a_very_long_location_is_cut(desk: Dispatcher, dispatcher: CollectingDispatcher) -> None:
    typed = "A3区阳光花园小区" + "东" * 300
    result = await ValidateReportForm(desk).validate_location(typed, dispatcher, make_tracker(), {})
    assert result == {"location": typed[:200], "district": "A3区"}


@pytest.mark.parametrize("typed", ["A1 区人民路23号", "Ａ１区人民路23号"], ids=["alias", "full-width"])
async def test_a_district_written_another_way_is_not_prefixed_again(
    desk: Dispatcher, dispatcher: CollectingDispatcher, typed: str
) -> None:
    result = await ValidateReportForm(desk).validate_location(typed, dispatcher, make_tracker(), {})
    assert result["district"] == "A1区"
    assert result["location"] in (typed, "A1区人民路23号")


# --- ValidateReportForm: district, category ------------------------------------


@pytest.mark.parametrize(
    ("typed", "district"),
    [("A1区", "A1区"), ("A1 区", "A1区"), (" a7县 ", "A7县"), ("A9市", "A9市")],
)
async def test_a_district_answer_is_kept_by_its_canonical_name(
    desk: Dispatcher, dispatcher: CollectingDispatcher, typed: str, district: str
) -> None:
    tracker = make_tracker(slots={"location": "阳光花园小区东门", "requested_slot": "district"})
    result = await ValidateReportForm(desk).validate_district(typed, dispatcher, tracker, {})
    assert result == {"district": district, "location": f"{district}阳光花园小区东门"}
    assert dispatcher.messages == []


@pytest.mark.parametrize(
    ("location", "expected"),
    [("A1区阳光花园", "A1区阳光花园"), (None, None)],
    ids=["location names it", "no location yet"],
)
async def test_a_district_answer_prefixes_the_location_only_when_needed(
    desk: Dispatcher, dispatcher: CollectingDispatcher, location: str | None, expected: str | None
) -> None:
    tracker = make_tracker(slots={"location": location, "requested_slot": "district"})
    result = await ValidateReportForm(desk).validate_district("A1区", dispatcher, tracker, {})
    assert result == {"district": "A1区", "location": expected}


@pytest.mark.parametrize(
    ("requested", "response"),
    [("district", ["utter_district_invalid"]), ("description", [])],
    ids=["asked for", "picked up on the way"],
)
async def test_an_unknown_district_is_refused(
    desk: Dispatcher, dispatcher: CollectingDispatcher, requested: str, response: list[str]
) -> None:
    tracker = make_tracker(slots={"location": "阳光花园小区东门", "requested_slot": requested})
    result = await ValidateReportForm(desk).validate_district("朝阳区", dispatcher, tracker, {})
    assert result == {"district": None}
    assert responses(dispatcher) == response


@pytest.mark.parametrize("typed", ["A市", "B市"])
async def test_a_city_is_not_accepted_as_the_district(
    desk: Dispatcher, dispatcher: CollectingDispatcher, typed: str
) -> None:
    tracker = make_tracker(slots={"location": "阳光花园小区东门", "requested_slot": "district"})
    result = await ValidateReportForm(desk).validate_district(typed, dispatcher, tracker, {})
    assert result == {"district": None}
    assert responses(dispatcher) == ["utter_district_invalid"]


@pytest.mark.parametrize("category", CATEGORIES)
async def test_a_category_choice_is_kept_and_ends_the_correction(
    desk: Dispatcher, dispatcher: CollectingDispatcher, category: str
) -> None:
    tracker = make_tracker(slots={"category_requested": True, "requested_slot": "category_choice"})
    result = await ValidateReportForm(desk).validate_category_choice(category, dispatcher, tracker, {})
    assert result == {"category_choice": category, "category_requested": False}
    assert dispatcher.messages == []


@pytest.mark.parametrize("typed", ["交通", "其他", "城乡建设类", ""])
async def test_an_unknown_category_is_refused(desk: Dispatcher, dispatcher: CollectingDispatcher, typed: str) -> None:
    tracker = make_tracker(slots={"category_requested": True, "requested_slot": "category_choice"})
    result = await ValidateReportForm(desk).validate_category_choice(typed, dispatcher, tracker, {})
    assert result == {"category_choice": None}
    assert responses(dispatcher) == ["utter_category_invalid"]


# --- ValidateReportForm: the read-back -------------------------------------------


@pytest.mark.parametrize(("answer", "intent"), [("yes", "affirm"), ("no", "deny")])
async def test_confirmation_yes_or_no_is_kept(
    desk: Dispatcher, dispatcher: CollectingDispatcher, answer: str, intent: str
) -> None:
    tracker = make_tracker(intent=intent, text=f"/{intent}")
    result = await ValidateReportForm(desk).validate_report_confirmed(answer, dispatcher, tracker, {})
    assert result == {"report_confirmed": answer}
    assert dispatcher.messages == []


@pytest.mark.parametrize(
    ("text", "entities", "expected"),
    [
        ("/correct_category", [], {"category_requested": True, "category_choice": None}),
        ("类别不对", [], {"category_requested": True, "category_choice": None}),
        ("应该是环保", [entity("category", "环保")], {"category_requested": True, "category_choice": None}),
        (
            "这是交通运输的问题",
            [entity("category", "交通运输")],
            {"category_choice": "交通运输", "category_requested": False},
        ),
        (
            '/correct_category{"category": "环境保护"}',
            [entity("category", "环境保护")],
            {"category_choice": "环境保护", "category_requested": False},
        ),
    ],
    ids=["button", "words", "unknown category named", "category named", "category button"],
)
async def test_correcting_the_category_at_the_read_back(
    desk: Dispatcher,
    dispatcher: CollectingDispatcher,
    text: str,
    entities: list[dict[str, Any]],
    expected: dict[str, Any],
) -> None:
    tracker = make_tracker(
        slots={"category_choice": "城乡建设"}, text=text, intent="correct_category", entities=entities
    )
    result = await ValidateReportForm(desk).validate_report_confirmed(text, dispatcher, tracker, {})
    assert result == expected | {"report_confirmed": None}
    assert dispatcher.messages == []


@pytest.mark.parametrize("text", ["/correct_location", "地址不对"])
async def test_correcting_the_location_at_the_read_back_asks_for_it_again(
    desk: Dispatcher, dispatcher: CollectingDispatcher, text: str
) -> None:
    tracker = make_tracker(
        slots={"location": "A3区阳光花园小区东门", "district": "A3区"}, text=text, intent="correct_location"
    )
    result = await ValidateReportForm(desk).validate_report_confirmed(text, dispatcher, tracker, {})
    assert result == {"location": None, "district": None, "report_confirmed": None}
    assert dispatcher.messages == []


async def test_a_phone_number_at_confirmation_replaces_the_contact_phone(
    desk: Dispatcher, dispatcher: CollectingDispatcher
) -> None:
    tracker = make_tracker(slots={"contact_phone": PHONE}, text="号码改成 139 0000 1111", intent="give_phone")
    result = await ValidateReportForm(desk).validate_report_confirmed("号码改成 139 0000 1111", dispatcher, tracker, {})
    assert result == {"contact_phone": "13900001111", "report_confirmed": None}
    assert dispatcher.messages == []


@pytest.mark.parametrize("answer", ["嗯……再想想", "", "1234", "好的吧"])
async def test_other_text_at_confirmation_asks_to_confirm(
    desk: Dispatcher, dispatcher: CollectingDispatcher, answer: str
) -> None:
    result = await ValidateReportForm(desk).validate_report_confirmed(answer, dispatcher, make_tracker(), {})
    assert result == {"report_confirmed": None}
    assert responses(dispatcher) == ["utter_confirm_please"]


@pytest.mark.parametrize(
    "slot", ["description", "location", "district", "contact_phone", "category_choice", "report_confirmed"]
)
async def test_a_cleared_report_slot_is_not_validated(
    desk: Dispatcher, dispatcher: CollectingDispatcher, slot: str
) -> None:
    validate = getattr(ValidateReportForm(desk), f"validate_{slot}")
    assert await validate(None, dispatcher, make_tracker(), {}) == {}
    assert dispatcher.messages == []


# --- ValidateReportForm: which slots the form asks ---------------------------------

BASE_SLOTS = ["description", "location", "contact_phone", "report_confirmed"]


@pytest.mark.parametrize(
    ("slots", "required"),
    [
        ({}, BASE_SLOTS),
        ({"district": "A1区"}, BASE_SLOTS),
        (
            {"location": "阳光花园小区东门"},
            ["description", "location", "district", "contact_phone", "report_confirmed"],
        ),
        (
            {"location": "A1区阳光花园", "district": "A1区"},
            ["description", "location", "district", "contact_phone", "report_confirmed"],
        ),
        (
            {"category_requested": True},
            ["description", "location", "contact_phone", "category_choice", "report_confirmed"],
        ),
        (
            {"category_requested": True, "category_choice": "交通运输"},
            ["description", "location", "contact_phone", "category_choice", "report_confirmed"],
        ),
        (
            {"category_requested": False, "category_choice": "交通运输"},
            ["description", "location", "contact_phone", "category_choice", "report_confirmed"],
        ),
        (
            {"location": "阳光花园小区东门", "category_requested": True},
            ["description", "location", "district", "contact_phone", "category_choice", "report_confirmed"],
        ),
    ],
    ids=[
        "nothing yet",
        "district only",
        "place without district",
        "place with district",
        "category correction",
        "category chosen",
        "category chosen at the read-back",
        "both",
    ],
)
async def test_district_and_category_are_listed_once_in_play(
    desk: Dispatcher, slots: dict[str, Any], required: list[str]
) -> None:
    tracker = make_tracker(slots=slots, active_loop="report_form")
    form = ValidateReportForm(desk)
    assert await form.required_slots(list(REPORT_FORM_SLOTS), CollectingDispatcher(), tracker, DOMAIN) == required


def slot_event(name: str, value: Any) -> dict[str, Any]:
    return {"event": "slot", "timestamp": None, "name": name, "value": value}


async def run_report_form(
    desk: Dispatcher,
    dispatcher: CollectingDispatcher,
    slots: dict[str, Any],
    answer: dict[str, Any],
    *,
    text: str = "",
    intent: str | None = None,
    entities: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """What validate_report_form returns when the engine hands it the slots an answer filled.

    The engine sends the tracker with the extracted slots already set and their SlotSet events
    after the form's own action event, which is how rasa_sdk knows what to validate.
    """
    tracker = make_tracker(
        slots=slots | answer,
        text=text,
        intent=intent,
        entities=entities,
        events=[
            {"event": "action", "timestamp": None, "name": "report_form"},
            *(slot_event(name, value) for name, value in answer.items()),
        ],
        active_loop="report_form",
    )
    return slot_state(await ValidateReportForm(desk).run(dispatcher, tracker, DOMAIN))


def next_slot(state: dict[str, Any], slots: dict[str, Any]) -> str | None:
    """The slot the form asks next. rasa_sdk leaves the choice to the engine when the slots it
    requires are exactly the domain's; the engine then asks the first empty one in domain order."""
    if "requested_slot" in state:
        return state["requested_slot"]  # type: ignore[no-any-return]
    merged = slots | state
    return next((slot for slot in REPORT_FORM_SLOTS if merged.get(slot) is None), None)


FILLED = {"description": "路灯坏了一个多星期了", "contact_phone": None, "report_confirmed": None}


async def test_the_form_asks_for_the_district_when_the_place_does_not_settle_it(
    desk: Dispatcher, dispatcher: CollectingDispatcher
) -> None:
    slots = FILLED | {"requested_slot": "location"}
    state = await run_report_form(desk, dispatcher, slots, {"location": "阳光花园小区东门"})
    assert state == {
        "location": "阳光花园小区东门",
        "district": None,
        "district_candidates": A_CITY,
        "requested_slot": "district",
    }
    assert dispatcher.messages == []


async def test_the_form_goes_on_to_the_phone_when_the_place_settles_the_district(
    desk: Dispatcher, dispatcher: CollectingDispatcher
) -> None:
    slots = FILLED | {"requested_slot": "location"}
    state = await run_report_form(desk, dispatcher, slots, {"location": "A3区阳光花园小区东门"})
    assert state == {"location": "A3区阳光花园小区东门", "district": "A3区", "requested_slot": "contact_phone"}


@pytest.mark.parametrize(
    ("answer", "expected", "response"),
    [
        (
            "A1 区",
            {"district": "A1区", "location": "A1区阳光花园小区东门", "requested_slot": "contact_phone"},
            [],
        ),
        ("朝阳区", {"district": None, "requested_slot": "district"}, ["utter_district_invalid"]),
    ],
    ids=["alias", "unknown"],
)
async def test_the_form_checks_the_district_the_citizen_answers(
    desk: Dispatcher, dispatcher: CollectingDispatcher, answer: str, expected: dict[str, Any], response: list[str]
) -> None:
    slots = FILLED | {"location": "阳光花园小区东门", "district_candidates": A_CITY, "requested_slot": "district"}
    state = await run_report_form(desk, dispatcher, slots, {"district": answer}, text=answer, intent="give_location")
    assert {name: state.get(name, "not validated") for name in expected} == expected
    assert responses(dispatcher) == response


async def test_a_category_button_leads_back_to_the_read_back(
    desk: Dispatcher, dispatcher: CollectingDispatcher
) -> None:
    slots = FILLED | {
        "location": "A3区阳光花园小区东门",
        "district": "A3区",
        "contact_phone": PHONE,
        "category_requested": True,
        "requested_slot": "category_choice",
    }
    state = await run_report_form(
        desk,
        dispatcher,
        slots,
        {"category_choice": "交通运输"},
        text='/correct_category{"category": "交通运输"}',
        intent="correct_category",
        entities=[entity("category", "交通运输")],
    )
    assert next_slot(state, slots | {"category_choice": "交通运输"}) == "report_confirmed"
    assert state.get("category_choice", "交通运输") == "交通运输"
    assert dispatcher.messages == []


async def test_the_form_checks_the_category_the_citizen_types(
    desk: Dispatcher, dispatcher: CollectingDispatcher
) -> None:
    slots = FILLED | {
        "location": "A3区阳光花园小区东门",
        "district": "A3区",
        "contact_phone": PHONE,
        "category_requested": True,
        "requested_slot": "category_choice",
    }
    state = await run_report_form(desk, dispatcher, slots, {"category_choice": "交通"}, text="交通", intent="chitchat")
    assert state.get("category_choice", "not validated") is None
    assert next_slot(state, slots | {"category_choice": "交通"}) == "category_choice"
    assert responses(dispatcher) == ["utter_category_invalid"]


@pytest.mark.parametrize(
    ("text", "intent", "requested"),
    [
        ("/correct_location", "correct_location", "location"),
        ("/correct_category", "correct_category", "category_choice"),
    ],
)
async def test_a_correction_at_the_read_back_asks_the_corrected_question(
    desk: Dispatcher, dispatcher: CollectingDispatcher, text: str, intent: str, requested: str
) -> None:
    slots = FILLED | {
        "location": "A3区阳光花园小区东门",
        "district": "A3区",
        "contact_phone": PHONE,
        "requested_slot": "report_confirmed",
    }
    state = await run_report_form(desk, dispatcher, slots, {"report_confirmed": text}, text=text, intent=intent)
    assert state["report_confirmed"] is None
    assert next_slot(state, slots | {"report_confirmed": text}) == requested
    assert dispatcher.messages == []


# --- ActionAskDistrict, ActionAskCategoryChoice ------------------------------------


@pytest.mark.parametrize(
    ("candidates", "offered"),
    [(["A1区", "A2区"], ["A1区", "A2区"]), (None, A_CITY), ([], A_CITY)],
    ids=["the places named", "no candidates", "empty candidates"],
)
async def test_ask_district_offers_the_candidates_as_buttons(
    desk: Dispatcher, dispatcher: CollectingDispatcher, candidates: list[str] | None, offered: list[str]
) -> None:
    tracker = make_tracker(slots={"district_candidates": candidates, "requested_slot": "district"})
    assert await ActionAskDistrict(desk).run(dispatcher, tracker, DOMAIN) == []
    assert responses(dispatcher) == ["utter_choose_district"]
    buttons = dispatcher.messages[0]["buttons"]
    assert [button["title"] for button in buttons] == offered
    assert buttons[0]["payload"] == f'/give_location{{"district": "{offered[0]}"}}'
    for button in buttons:
        assert payload_intent(button["payload"]) in DOMAIN["intents"]
        assert json.loads(button["payload"].removeprefix("/give_location")) == {"district": button["title"]}
    assert "district" in DOMAIN["entities"]


async def test_ask_category_choice_offers_every_category(dispatcher: CollectingDispatcher) -> None:
    tracker = make_tracker(slots={"category_requested": True, "requested_slot": "category_choice"})
    assert await ActionAskCategoryChoice().run(dispatcher, tracker, DOMAIN) == []
    assert responses(dispatcher) == ["utter_choose_category"]
    buttons = dispatcher.messages[0]["buttons"]
    assert [button["title"] for button in buttons] == list(CATEGORIES)
    assert buttons[0]["payload"] == f'/correct_category{{"category": "{CATEGORIES[0]}"}}'
    for button in buttons:
        assert payload_intent(button["payload"]) == "correct_category"
        assert json.loads(button["payload"].removeprefix("/correct_category")) == {"category": button["title"]}
    assert {"correct_category", "correct_location", "affirm", "deny"} <= set(DOMAIN["intents"])
    assert "category" in DOMAIN["entities"]


# --- ActionAskReportConfirmed --------------------------------------------------------


def report_slots(confirmed: str | None = None, **changes: Any) -> dict[str, Any]:
    return {
        "description": HOUSING,
        "location": HOUSING_PLACE,
        "district": "A2区",
        "contact_phone": PHONE,
        "report_confirmed": confirmed,
    } | changes


async def ask_confirmation(sessions: Sessions, desk: Dispatcher, slots: dict[str, Any]) -> list[dict[str, Any]]:
    """The read-back messages, after checking the action changed no slot and filed nothing."""
    dispatcher = CollectingDispatcher()
    tracker = make_tracker("web:abc", slots=slots | {"requested_slot": "report_confirmed"}, active_loop="report_form")
    assert await ActionAskReportConfirmed(sessions, desk).run(dispatcher, tracker, DOMAIN) == []
    assert await all_cases(sessions) == []
    return dispatcher.messages


def assert_summary(message: dict[str, Any], slots: dict[str, Any]) -> None:
    assert message["response"] == "utter_report_summary"
    assert rendered(message) == (
        f"请核对您反映的内容：\n问题描述：{slots['description']}\n"
        f"发生地点：{slots['location']}\n联系电话：{slots['contact_phone']}"
    )
    assert message["buttons"] == []


@pytest.mark.parametrize(
    ("changes", "category", "department", "working_days"),
    [
        ({}, "城乡建设", "A2区住建局", 10),
        ({"category_choice": "交通运输"}, "交通运输", "A2区交通运输局", 7),
        ({"category_choice": "环境保护", "location": "K8县丁字街", "district": "K8县"}, "环境保护", "A市生态环境局", 7),
    ],
    ids=["classified", "chosen by the citizen", "no district rule"],
)
async def test_the_read_back_shows_the_report_and_where_it_will_go(
    seeded: Sessions,
    desk: Dispatcher,
    changes: dict[str, Any],
    category: str,
    department: str,
    working_days: int,
) -> None:
    slots = report_slots(**changes)
    summary, preview = await ask_confirmation(seeded, desk, slots)
    assert_summary(summary, slots)
    assert preview["response"] == "utter_dispatch_preview"
    due = day_text(due_at(utcnow(), working_days))
    assert (preview["category"], preview["department"], preview["due"]) == (category, department, due)
    kind = preview["case_type"]
    assert kind in CASE_TYPES
    assert rendered(preview) == (
        f"您反映的事项类型为「{kind}」，属于「{category}」类，"
        f"将转交「{department}」处理，预计 {due} 前答复，确认提交吗？"
    )
    assert preview["buttons"] == CONFIRM_BUTTONS
    assert all(payload_intent(button["payload"]) in DOMAIN["intents"] for button in preview["buttons"])


async def test_an_urgent_report_is_previewed_as_handled_today(seeded: Sessions, desk: Dispatcher) -> None:
    slots = report_slots(description=GAS_LEAK, category_choice="城乡建设")
    summary, preview = await ask_confirmation(seeded, desk, slots)
    assert_summary(summary, slots)
    assert preview["response"] == "utter_dispatch_preview_urgent"
    assert (preview["category"], preview["department"]) == ("城乡建设", "A2区住建局")
    assert "今天内处理" in rendered(preview) and "「A2区住建局」" in rendered(preview)
    assert preview["buttons"] == CONFIRM_BUTTONS


async def test_an_unclear_report_is_previewed_for_manual_dispatch(seeded: Sessions, desk: Dispatcher) -> None:
    slots = report_slots(description=UNCLEAR)
    summary, preview = await ask_confirmation(seeded, desk, slots)
    assert_summary(summary, slots)
    assert preview["response"] == "utter_dispatch_preview_manual"
    suggestions = preview["suggestions"].split("、")
    assert len(suggestions) == 3 and set(suggestions) <= set(CATEGORIES)
    assert rendered(preview) == (
        f"您反映的事项类型为「{preview['case_type']}」，"
        f"将由工作人员人工分派到负责部门（可能属于：{preview['suggestions']}），确认提交吗？"
    )
    assert preview["buttons"] == CONFIRM_BUTTONS


async def test_a_similar_open_case_in_the_same_district_is_pointed_out(seeded: Sessions, desk: Dispatcher) -> None:
    original = await file_in(seeded, await register(seeded, "neighbour"), DRAIN, "A5区")
    slots = report_slots(description=DRAIN_AGAIN, location="A5区桂花路菜市场门口", district="A5区")
    dispatcher = CollectingDispatcher()
    tracker = make_tracker("web:abc", slots=slots | {"requested_slot": "report_confirmed"}, active_loop="report_form")
    events = await ActionAskReportConfirmed(seeded, desk).run(dispatcher, tracker, DOMAIN)
    assert slot_state(events) == {"duplicate_warned": original.case_number}
    summary, duplicate = dispatcher.messages
    assert_summary(summary, slots)
    assert duplicate["response"] == "utter_duplicate_found"
    assert duplicate["case_number"] == original.case_number
    assert original.case_number in rendered(duplicate)
    assert duplicate["buttons"] == DUPLICATE_BUTTONS
    assert len(await all_cases(seeded)) == 1


@pytest.mark.parametrize("where", ["another district", "closed case"])
async def test_a_similar_case_elsewhere_or_closed_is_not_a_duplicate(
    seeded: Sessions, desk: Dispatcher, where: str
) -> None:
    original = await file_in(seeded, await register(seeded, "neighbour"), DRAIN, "A5区")
    district = "A5区"
    if where == "closed case":
        async with seeded.begin() as session:
            await advance(
                session,
                original.case_number,
                "dispatch",
                "accept",
                "start",
                "resolve",
                note="已疏通",
                department="区市政",
            )
    else:
        district = "A1区"
    slots = report_slots(description=DRAIN_AGAIN, location=f"{district}桂花路菜市场门口", district=district)
    dispatcher = CollectingDispatcher()
    tracker = make_tracker("web:abc", slots=slots | {"requested_slot": "report_confirmed"}, active_loop="report_form")
    await ActionAskReportConfirmed(seeded, desk).run(dispatcher, tracker, DOMAIN)
    assert responses(dispatcher)[0] == "utter_report_summary"
    assert responses(dispatcher)[1] in (
        "utter_dispatch_preview",
        "utter_dispatch_preview_urgent",
        "utter_dispatch_preview_manual",
    )
    assert dispatcher.messages[1]["buttons"] == CONFIRM_BUTTONS


# --- ActionSubmitReport ------------------------------------------------------


async def submit(
    sessions: Sessions, desk: Dispatcher, sender_id: str, slots: dict[str, Any], message_id: str | None = None
) -> tuple[CollectingDispatcher, dict[str, Any]]:
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(sender_id, slots=slots, message_id=message_id)
    events = await ActionSubmitReport(sessions, desk).run(dispatcher, tracker, DOMAIN)
    return dispatcher, slot_state(events)


async def history_of(sessions: Sessions, case: ServiceCase) -> list[str]:
    async with sessions() as session:
        rows = await session.scalars(
            select(CaseEvent.to_status).where(CaseEvent.case_id == case.id).order_by(CaseEvent.id)
        )
        return list(rows.all())


async def test_the_same_confirmation_submitted_again_files_one_case_and_answers_alike(
    seeded: Sessions, desk: Dispatcher
) -> None:
    """The engine's call made again (nginx resends it to another app when the first died mid-call)."""
    identity = await register(seeded, "abc")
    first, first_state = await submit(seeded, desk, identity.sender_id, report_slots("yes"), message_id="4f1c0e")
    again, state = await submit(seeded, desk, identity.sender_id, report_slots("yes"), message_id="4f1c0e")

    [case] = await all_cases(seeded)
    assert len(await all_decisions(seeded)) == 1
    assert again.messages == first.messages
    assert again.messages[0]["case_number"] == case.case_number
    assert state == first_state
    assert state["filed_case_number"] == case.case_number
    # A later confirmation (another message of the citizen) is a new report.
    await submit(seeded, desk, identity.sender_id, report_slots("yes"), message_id="7d2a91")
    assert len(await all_cases(seeded)) == 2


async def test_the_same_message_replayed_to_another_engine_files_one_case(seeded: Sessions, desk: Dispatcher) -> None:
    """An engine died after filing but before saving its turn; the app replays the message elsewhere.

    The engine's own message id is new on the replay; the app's id of the message is not.
    """
    identity = await register(seeded, "abc")
    app_id = {"app_message_id": 41}
    first = CollectingDispatcher()
    tracker = make_tracker(identity.sender_id, slots=report_slots("yes"), message_id="4f1c0e", metadata=app_id)
    await ActionSubmitReport(seeded, desk).run(first, tracker, DOMAIN)
    again = CollectingDispatcher()
    tracker = make_tracker(identity.sender_id, slots=report_slots("yes"), message_id="9b7e22", metadata=app_id)
    await ActionSubmitReport(seeded, desk).run(again, tracker, DOMAIN)
    [case] = await all_cases(seeded)
    assert again.messages == first.messages and again.messages[0]["case_number"] == case.case_number


async def test_a_category_chosen_with_the_bots_buttons_is_kept_as_a_label(seeded: Sessions, desk: Dispatcher) -> None:
    """The citizen's category button (「更正分类」 at the read-back) decides the category: a label."""
    identity = await register(seeded, "abc")
    await submit(seeded, desk, identity.sender_id, report_slots("yes", category_choice="环境保护"))
    [case] = await all_cases(seeded)
    async with seeded() as session:
        [label] = (await session.scalars(select(StaffLabel))).all()
    assert (case.category, label.case_id, label.text) == ("环境保护", case.id, HOUSING)
    assert (label.staff_category, label.model_category, label.model_version) == (
        "环境保护",
        "城乡建设",
        desk.classifier.model_version,
    )
    assert (label.decision, label.channel, label.actor) == ("filing", "bot", "bot")


async def test_a_report_filed_without_a_chosen_category_keeps_no_label(seeded: Sessions, desk: Dispatcher) -> None:
    identity = await register(seeded, "abc")
    await submit(seeded, desk, identity.sender_id, report_slots("yes"))
    async with seeded() as session:
        assert (await session.scalars(select(StaffLabel))).all() == []


async def test_a_confirmed_report_is_filed_and_routed(seeded: Sessions, desk: Dispatcher) -> None:
    identity = await register(seeded, "abc")
    dispatcher, state = await submit(seeded, desk, identity.sender_id, report_slots("yes"))

    [case] = await all_cases(seeded)
    [decision] = await all_decisions(seeded)
    async with seeded() as session:
        conversation = await session.scalar(select(Conversation).where(Conversation.identity_id == identity.id))
        department = await session.get(Department, case.department_id)
    assert conversation is not None and department is not None
    assert (case.identity_id, case.citizen_id, case.conversation_id) == (
        identity.id,
        identity.citizen_id,
        conversation.id,
    )
    assert (case.description, case.location, case.district, case.contact_phone) == (
        HOUSING,
        HOUSING_PLACE,
        "A2区",
        PHONE,
    )
    assert (case.status, case.category, case.department, department.name) == (
        "dispatched",
        "城乡建设",
        "A2区住建局",
        "A2区住建局",
    )
    assert case.due_at == due_at(case.created_at, 10)
    assert (case.urgent, case.duplicate_of_id) == (False, None)
    assert await history_of(seeded, case) == ["received", "dispatched"]

    assert decision.case_id == case.id
    assert (decision.category, decision.queued, decision.urgent, decision.district) == (
        "城乡建设",
        False,
        False,
        "A2区",
    )
    assert (decision.rule, decision.department_id, decision.due_at) == (
        "rule: 城乡建设 × A2区",
        case.department_id,
        case.due_at,
    )
    assert decision.model_version == desk.classifier.model_version
    assert max(decision.probabilities, key=decision.probabilities.get) == "城乡建设"
    assert decision.confidence == pytest.approx(decision.probabilities["城乡建设"])

    assert responses(dispatcher) == ["utter_case_created_routed"]
    message = dispatcher.messages[0]
    assert (message["case_number"], message["department"], message["due"]) == (
        case.case_number,
        "A2区住建局",
        day_text(case.due_at),
    )
    assert case.case_number in rendered(message)
    assert state == cleared(*REPORT_SLOTS) | {"filed_case_number": case.case_number}


async def test_a_category_chosen_by_the_citizen_is_routed_as_chosen(seeded: Sessions, desk: Dispatcher) -> None:
    identity = await register(seeded, "abc")
    dispatcher, _ = await submit(
        seeded, desk, identity.sender_id, report_slots("yes", category_choice="交通运输", category_requested=False)
    )
    [case] = await all_cases(seeded)
    [decision] = await all_decisions(seeded)
    assert (case.status, case.category, case.department) == ("dispatched", "交通运输", "A2区交通运输局")
    assert case.due_at == due_at(case.created_at, 7)
    assert decision.rule == "rule: 交通运输 × A2区 (category chosen by citizen)"
    assert decision.confidence == 1.0
    assert dispatcher.messages[0]["department"] == "A2区交通运输局"


async def test_an_urgent_report_is_due_today(seeded: Sessions, desk: Dispatcher) -> None:
    identity = await register(seeded, "abc")
    dispatcher, _ = await submit(
        seeded, desk, identity.sender_id, report_slots("yes", description=GAS_LEAK, category_choice="城乡建设")
    )
    [case] = await all_cases(seeded)
    assert (case.status, case.urgent, case.department) == ("dispatched", True, "A2区住建局")
    assert case.due_at == due_at(case.created_at, 10, urgent=True)
    assert responses(dispatcher) == ["utter_case_created_routed"]
    assert dispatcher.messages[0]["due"] == "今天"


async def test_an_unclear_report_is_filed_into_the_manual_queue(seeded: Sessions, desk: Dispatcher) -> None:
    identity = await register(seeded, "abc")
    dispatcher, state = await submit(seeded, desk, identity.sender_id, report_slots("yes", description=UNCLEAR))
    [case] = await all_cases(seeded)
    [decision] = await all_decisions(seeded)
    assert (case.status, case.department, case.department_id, case.due_at) == ("received", None, None, None)
    assert case.category in CATEGORIES
    assert await history_of(seeded, case) == ["received"]
    assert (decision.case_id, decision.queued, decision.department_id, decision.due_at) == (case.id, True, None, None)
    assert decision.rule.startswith("manual queue")
    assert len(decision.suggestions) == 3
    assert responses(dispatcher) == ["utter_case_created_queued"]
    assert dispatcher.messages[0]["case_number"] == case.case_number
    assert state["filed_case_number"] == case.case_number


@pytest.mark.parametrize("confirmed", ["no", None])
async def test_an_unconfirmed_report_files_nothing(seeded: Sessions, desk: Dispatcher, confirmed: str | None) -> None:
    identity = await register(seeded, "abc")
    dispatcher, state = await submit(seeded, desk, identity.sender_id, report_slots(confirmed))
    assert await all_cases(seeded) == []
    assert await all_decisions(seeded) == []
    assert responses(dispatcher) == ["utter_report_cancelled"]
    assert state == cleared(*REPORT_SLOTS)


async def test_declining_a_duplicate_files_nothing_and_names_the_open_case(seeded: Sessions, desk: Dispatcher) -> None:
    original = await file_in(seeded, await register(seeded, "neighbour"), DRAIN, "A5区")
    identity = await register(seeded, "abc")
    slots = report_slots("no", description=DRAIN_AGAIN, location="A5区桂花路菜市场门口", district="A5区")
    dispatcher, state = await submit(seeded, desk, identity.sender_id, slots)
    assert [case.case_number for case in await all_cases(seeded)] == [original.case_number]
    assert responses(dispatcher) == ["utter_duplicate_not_filed"]
    assert dispatcher.messages[0]["case_number"] == original.case_number
    assert state == cleared(*REPORT_SLOTS)


async def test_filing_beside_a_duplicate_still_goes_through_the_read_back(seeded: Sessions, desk: Dispatcher) -> None:
    """「仍然提交」 is not a confirmation: the citizen first sees the category, department and deadline."""
    original = await file_in(seeded, await register(seeded, "neighbour"), DRAIN, "A5区")
    slots = report_slots(description=DRAIN_AGAIN, location="A5区桂花路菜市场门口", district="A5区")
    slots |= {"duplicate_warned": original.case_number, "requested_slot": "report_confirmed"}
    tracker = make_tracker("web:abc", slots=slots, active_loop="report_form", intent="affirm")
    dispatcher = CollectingDispatcher()
    validated = await ValidateReportForm(desk).validate_report_confirmed("yes", dispatcher, tracker, DOMAIN)
    assert validated == {"report_confirmed": None, "duplicate_override": original.case_number, "duplicate_warned": None}

    tracker = make_tracker("web:abc", slots=slots | validated | {"duplicate_warned": None}, active_loop="report_form")
    events = await ActionAskReportConfirmed(seeded, desk).run(dispatcher, tracker, DOMAIN)
    assert events == []
    summary, preview = dispatcher.messages
    assert summary["response"] == "utter_report_summary"
    assert preview["response"] in (
        "utter_dispatch_preview",
        "utter_dispatch_preview_urgent",
        "utter_dispatch_preview_manual",
    )
    assert preview["buttons"] == CONFIRM_BUTTONS
    assert len(await all_cases(seeded)) == 1  # nothing filed until the citizen confirms


async def test_a_plain_yes_without_a_duplicate_warning_confirms(desk: Dispatcher) -> None:
    tracker = make_tracker(
        "web:abc", slots={"requested_slot": "report_confirmed"}, active_loop="report_form", intent="affirm"
    )
    validated = await ValidateReportForm(desk).validate_report_confirmed("yes", CollectingDispatcher(), tracker, DOMAIN)
    assert validated == {"report_confirmed": "yes"}


async def test_a_duplicate_filed_anyway_is_linked_to_the_open_case(seeded: Sessions, desk: Dispatcher) -> None:
    original = await file_in(seeded, await register(seeded, "neighbour"), DRAIN, "A5区")
    identity = await register(seeded, "abc")
    slots = report_slots("yes", description=DRAIN_AGAIN, location="A5区桂花路菜市场门口", district="A5区")
    dispatcher, state = await submit(seeded, desk, identity.sender_id, slots)
    first, second = await all_cases(seeded)
    assert first.id == original.id
    assert (second.duplicate_of_id, second.district) == (original.id, "A5区")
    assert [decision.case_id for decision in await all_decisions(seeded)] == [second.id]
    assert responses(dispatcher)[0] in ("utter_case_created_routed", "utter_case_created_queued")
    assert state["filed_case_number"] == second.case_number


@pytest.mark.parametrize(
    ("sender", "phone"),
    [("web:nobody", PHONE), ("web:abc", "12345")],
    ids=["unknown sender", "invalid phone"],
)
async def test_a_report_that_cannot_be_filed_says_so(
    seeded: Sessions, desk: Dispatcher, sender: str, phone: str
) -> None:
    await register(seeded, "abc")
    dispatcher, state = await submit(seeded, desk, sender, report_slots("yes", contact_phone=phone))
    assert await all_cases(seeded) == []
    assert await all_decisions(seeded) == []
    assert responses(dispatcher) == ["utter_case_failed"]
    assert state == cleared(*REPORT_SLOTS)


async def test_without_routing_tables_nothing_is_filed_half_way(sessions: Sessions, desk: Dispatcher) -> None:
    identity = await register(sessions, "abc")
    dispatcher, state = await submit(sessions, desk, identity.sender_id, report_slots("yes"))
    assert await all_cases(sessions) == []
    assert responses(dispatcher) == ["utter_case_failed"]
    assert state == cleared(*REPORT_SLOTS)


# --- ActionStartProgress -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "entities", "case_number"),
    [
        ("帮我查一下工单 20261123 0007 的进度", [], "20261123-0007"),
        ("查询２０２６１１２３－０００７", [], "20261123-0007"),
        ("查一下进度", [entity("case_number", "202611230007")], "20261123-0007"),
        ("我想查进度", [], None),
        ("查进度，后四位5678", [entity("case_number", "5678")], None),
    ],
)
async def test_start_progress_keeps_a_case_number_from_the_opening_message(
    dispatcher: CollectingDispatcher, text: str, entities: list[dict[str, Any]], case_number: str | None
) -> None:
    tracker = make_tracker(text=text, intent="check_progress", entities=entities, slots={"phone_last4": "1234"})
    events = await ActionStartProgress().run(dispatcher, tracker, {})
    assert slot_state(events) == {"phone_last4": None, "case_number": case_number}
    assert dispatcher.messages == []


# --- ValidateProgressForm ----------------------------------------------------


async def required_slots(sessions: Sessions, sender_id: str, case_number: str | None) -> list[str]:
    tracker = make_tracker(sender_id, slots={"case_number": case_number}, active_loop="progress_form")
    return await ValidateProgressForm(sessions).required_slots(
        list(PROGRESS_SLOTS), CollectingDispatcher(), tracker, {}
    )


async def test_the_filer_is_not_asked_for_phone_digits(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    telegram = await second_channel(sessions, owner, "tg-1")
    case = await file(sessions, owner)
    assert await required_slots(sessions, owner.sender_id, case.case_number) == ["case_number"]
    assert await required_slots(sessions, telegram.sender_id, case.case_number) == ["case_number"]


async def test_a_stranger_and_an_unknown_number_are_asked_for_phone_digits(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    stranger = await register(sessions, "stranger")
    case = await file(sessions, owner)
    assert await required_slots(sessions, stranger.sender_id, case.case_number) == PROGRESS_SLOTS
    assert await required_slots(sessions, "web:never-seen", case.case_number) == PROGRESS_SLOTS
    assert await required_slots(sessions, owner.sender_id, "20990101-0001") == PROGRESS_SLOTS
    assert await required_slots(sessions, owner.sender_id, None) == PROGRESS_SLOTS
    assert await required_slots(sessions, owner.sender_id, "不记得了") == PROGRESS_SLOTS


@pytest.mark.parametrize(
    ("typed", "case_number", "response"),
    [
        ("我的工单是 20261123 0007", "20261123-0007", []),
        ("２０２６１１２３－０００７", "20261123-0007", []),
        ("不记得了", None, ["utter_case_number_invalid"]),
    ],
)
async def test_validate_case_number_normalises_or_refuses(
    sessions: Sessions, dispatcher: CollectingDispatcher, typed: str, case_number: str | None, response: list[str]
) -> None:
    result = await ValidateProgressForm(sessions).validate_case_number(typed, dispatcher, make_tracker(), {})
    assert result == {"case_number": case_number}
    assert responses(dispatcher) == response


@pytest.mark.parametrize(
    ("typed", "digits", "response"),
    [("5678", "5678", []), ("５６ ７８", "5678", []), ("567", None, ["utter_phone_last4_invalid"])],
)
async def test_validate_phone_last4_keeps_four_digits_or_refuses(
    sessions: Sessions, dispatcher: CollectingDispatcher, typed: str, digits: str | None, response: list[str]
) -> None:
    result = await ValidateProgressForm(sessions).validate_phone_last4(typed, dispatcher, make_tracker(), {})
    assert result == {"phone_last4": digits}
    assert responses(dispatcher) == response


@pytest.mark.parametrize("slot", PROGRESS_SLOTS)
async def test_a_cleared_progress_slot_is_not_validated(
    sessions: Sessions, dispatcher: CollectingDispatcher, slot: str
) -> None:
    validate = getattr(ValidateProgressForm(sessions), f"validate_{slot}")
    assert await validate(None, dispatcher, make_tracker(), {}) == {}
    assert dispatcher.messages == []


# --- ActionCheckProgress -----------------------------------------------------


async def check_progress(
    sessions: Sessions, sender_id: str, case_number: str | None, phone_last4: str | None = None
) -> tuple[CollectingDispatcher, list[dict[str, Any]]]:
    dispatcher = CollectingDispatcher()
    tracker = make_tracker(sender_id, slots={"case_number": case_number, "phone_last4": phone_last4})
    async with proof_alarm_for(sessions) as alarm:
        events = await ActionCheckProgress(sessions, alarm, STATUS_WORDS).run(dispatcher, tracker, {})
    return dispatcher, events


async def test_the_owner_is_told_the_progress(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        event = await advance(session, case.case_number, "dispatch", note="已派至区市政", department="区市政管委")
    dispatcher, events = await check_progress(sessions, owner.sender_id, case.case_number)
    assert responses(dispatcher) == ["utter_case_progress"]
    message = dispatcher.messages[0]
    assert {key: message[key] for key in ("case_number", "status", "department", "latest", "updated_at")} == {
        "case_number": case.case_number,
        "status": "已转交负责部门",
        "department": "区市政管委",
        "latest": "已转交负责部门",
        "updated_at": event.created_at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M"),
    }
    assert slot_state(events) == cleared(*PROGRESS_SLOTS)


async def test_a_fresh_case_shows_placeholders_for_department_and_note(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    dispatcher, _ = await check_progress(sessions, owner.sender_id, case.case_number)
    message = dispatcher.messages[0]
    assert (message["status"], message["department"], message["latest"]) == (
        "已受理，正在安排负责部门",
        "待分派",
        "已受理，正在安排负责部门",
    )


async def test_a_returned_case_is_told_as_being_rerouted_not_rejected(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        await advance(session, case.case_number, "dispatch", department="区市政管委")
        await advance(session, case.case_number, "return", note="不属于本单位职责")
    dispatcher, _ = await check_progress(sessions, owner.sender_id, case.case_number)
    text = rendered(dispatcher.messages[0])
    assert "正在重新安排负责部门" in text
    assert "退回" not in text and "不属于本单位职责" not in text


async def test_a_resolved_case_reads_out_the_result(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        for action in ("dispatch", "accept", "start"):
            await advance(session, case.case_number, action, department="区市政管委")
        await advance(session, case.case_number, "resolve", note="路灯已更换，今晚恢复照明")
        await advance(session, case.case_number, "review", note="市民评价：5 分")
    dispatcher, _ = await check_progress(sessions, owner.sender_id, case.case_number)
    assert responses(dispatcher) == ["utter_case_progress_result"]
    text = rendered(dispatcher.messages[0])
    assert "办理结果：路灯已更换，今晚恢复照明" in text
    assert "评价" not in text


async def test_a_stranger_with_the_right_digits_is_told_the_progress(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    dispatcher, _ = await check_progress(sessions, "web:stranger", case.case_number, "5678")
    assert responses(dispatcher) == ["utter_case_progress"]
    assert dispatcher.messages[0]["case_number"] == case.case_number


@pytest.mark.parametrize(
    ("case_number", "digits"),
    [("real", "0000"), ("real", None), ("20990101-0001", "5678"), (None, "5678")],
    ids=["wrong digits", "no digits", "unknown number", "no number"],
)
async def test_failed_lookups_get_one_neutral_answer(
    sessions: Sessions, case_number: str | None, digits: str | None
) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    number = case.case_number if case_number == "real" else case_number
    dispatcher, events = await check_progress(sessions, "web:stranger", number, digits)
    assert responses(dispatcher) == ["utter_case_lookup_failed"]
    assert dispatcher.messages[0].get("case_number") is None
    assert slot_state(events) == cleared(*PROGRESS_SLOTS)


async def test_repeated_failures_are_throttled(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    for _ in range(MAX_FAILURES_PER_SENDER):
        dispatcher, _ = await check_progress(sessions, "web:guesser", case.case_number, "0000")
        assert responses(dispatcher) == ["utter_case_lookup_failed"]
    dispatcher, events = await check_progress(sessions, "web:guesser", case.case_number, "5678")
    assert responses(dispatcher) == ["utter_lookup_throttled"]
    assert slot_state(events) == cleared(*PROGRESS_SLOTS)
    owner_dispatcher, _ = await check_progress(sessions, owner.sender_id, case.case_number)
    assert responses(owner_dispatcher) == ["utter_case_progress"]


# --- ActionAskCaseNumber -----------------------------------------------------


async def test_ask_case_number_offers_the_citizens_recent_cases(
    sessions: Sessions, dispatcher: CollectingDispatcher
) -> None:
    owner = await register(sessions, "owner")
    telegram = await second_channel(sessions, owner, "tg-1")
    stranger = await register(sessions, "stranger")
    numbers = [(await file(sessions, identity)).case_number for identity in (owner, telegram, owner, owner)]
    await file(sessions, stranger)

    events = await ActionAskCaseNumber(sessions).run(dispatcher, make_tracker(owner.sender_id), {})
    assert events == []
    assert responses(dispatcher) == ["utter_ask_case_number_choices"]
    newest_three = numbers[::-1][:3]
    assert dispatcher.messages[0]["buttons"] == [
        {"title": number, "payload": "/give_case_number" + json.dumps({"case_number": number})}
        for number in newest_three
    ]
    assert dispatcher.messages[0]["buttons"][0]["payload"] == f'/give_case_number{{"case_number": "{numbers[-1]}"}}'


@pytest.mark.parametrize("sender", ["web:no-cases", "web:never-seen"])
async def test_ask_case_number_without_cases_asks_plainly(
    sessions: Sessions, dispatcher: CollectingDispatcher, sender: str
) -> None:
    await register(sessions, "no-cases")
    await file(sessions, await register(sessions, "someone-else"))
    events = await ActionAskCaseNumber(sessions).run(dispatcher, make_tracker(sender), {})
    assert events == []
    assert responses(dispatcher) == ["utter_ask_case_number"]
    assert dispatcher.messages[0]["buttons"] == []


# --- ActionCancelRequest -----------------------------------------------------


def active_loop(name: str | None) -> dict[str, Any]:
    return {"event": "active_loop", "timestamp": None, "name": name}


@pytest.mark.parametrize(
    ("events", "response", "slots"),
    [
        ([active_loop("progress_form")], "utter_progress_cancelled", PROGRESS_SLOTS),
        ([active_loop("progress_form"), active_loop(None)], "utter_progress_cancelled", PROGRESS_SLOTS),
        ([active_loop("report_form"), active_loop(None)], "utter_report_cancelled", list(REPORT_SLOTS)),
        (
            [active_loop("progress_form"), active_loop(None), active_loop("report_form"), active_loop(None)],
            "utter_report_cancelled",
            list(REPORT_SLOTS),
        ),
        (
            [active_loop("report_form"), active_loop(None), active_loop("progress_form"), active_loop(None)],
            "utter_progress_cancelled",
            PROGRESS_SLOTS,
        ),
        ([], "utter_report_cancelled", list(REPORT_SLOTS)),
    ],
    ids=["progress active", "progress just left", "report left", "report last", "progress last", "no form"],
)
async def test_cancel_picks_the_message_of_the_last_form(
    dispatcher: CollectingDispatcher, events: list[dict[str, Any]], response: str, slots: list[str]
) -> None:
    tracker = make_tracker(events=[{"event": "action", "name": "action_listen"}, *events])
    result = await ActionCancelRequest().run(dispatcher, tracker, {})
    assert responses(dispatcher) == [response]
    assert result == [{"event": "slot", "timestamp": None, "name": name, "value": None} for name in slots]
