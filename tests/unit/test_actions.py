"""The custom actions, driven with real trackers and dispatchers against a real database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rasa_sdk import Tracker
from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions import build_actions
from actions.handoff import ActionHandoff
from actions.progress import ActionAskCaseNumber, ActionCheckProgress, ActionStartProgress, ValidateProgressForm
from actions.report import (
    REPORT_SLOTS,
    ActionCancelRequest,
    ActionStartReport,
    ActionSubmitReport,
    ValidateReportForm,
)
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import CaseEvent, ChannelIdentity, Conversation, ServiceCase
from crm_backend.services.cases import change_status
from crm_backend.services.conversations import current_conversation, resolve_identity
from crm_backend.services.intake import CHINA_TZ, Report, file_case
from crm_backend.services.lookup import MAX_FAILURES_PER_SENDER

Sessions = async_sessionmaker[AsyncSession]

DOMAIN = yaml.safe_load((Path(__file__).resolve().parents[2] / "domain.yml").read_text(encoding="utf-8"))
PROGRESS_SLOTS = ["case_number", "phone_last4"]
PHONE = "13812345678"


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


def cleared(*names: str) -> dict[str, None]:
    return dict.fromkeys(names)


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


async def all_cases(sessions: Sessions) -> list[ServiceCase]:
    async with sessions() as session:
        return list((await session.scalars(select(ServiceCase).order_by(ServiceCase.id))).all())


@pytest.fixture
def dispatcher() -> CollectingDispatcher:
    return CollectingDispatcher()


# --- the domain and the actions agree -----------------------------------------


def test_every_action_is_declared_in_the_domain(sessions: Sessions) -> None:
    assert {action.name() for action in build_actions(sessions)} == set(DOMAIN["actions"])


@pytest.mark.parametrize(
    "response",
    [
        "utter_phone_missing",
        "utter_phone_length",
        "utter_phone_prefix",
        "utter_description_too_short",
        "utter_location_too_short",
        "utter_confirm_please",
        "utter_case_created",
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
        "utter_handoff",
    ],
)
def test_responses_the_actions_utter_exist_in_the_domain(response: str) -> None:
    assert response in DOMAIN["responses"]


def test_report_slots_are_domain_slots() -> None:
    assert set(REPORT_SLOTS) <= set(DOMAIN["slots"])
    assert DOMAIN["forms"]["progress_form"]["required_slots"] == PROGRESS_SLOTS


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


# --- ValidateReportForm ------------------------------------------------------


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
    dispatcher: CollectingDispatcher, typed: str, response: str
) -> None:
    result = await ValidateReportForm().validate_contact_phone(typed, dispatcher, make_tracker(), {})
    assert result == {"contact_phone": None}
    assert responses(dispatcher) == [response]


@pytest.mark.parametrize("typed", ["138 1234 5678", "+86-138-1234-5678", "１３８１２３４５６７８", "电话13812345678"])
async def test_a_valid_phone_is_kept_normalised(dispatcher: CollectingDispatcher, typed: str) -> None:
    result = await ValidateReportForm().validate_contact_phone(typed, dispatcher, make_tracker(), {})
    assert result == {"contact_phone": PHONE}
    assert dispatcher.messages == []


@pytest.mark.parametrize("typed", ["北", "  ", "，。！", "a"])
async def test_a_location_too_short_is_refused(dispatcher: CollectingDispatcher, typed: str) -> None:
    result = await ValidateReportForm().validate_location(typed, dispatcher, make_tracker(), {})
    assert result == {"location": None}
    assert responses(dispatcher) == ["utter_location_too_short"]


@pytest.mark.parametrize(
    ("typed", "district", "location"),
    [
        (" 建国路88号 ", None, "建国路88号"),
        ("建国路88号", "朝阳区", "朝阳区建国路88号"),
        ("朝阳区建国路88号", "朝阳区", "朝阳区建国路88号"),
        ("北京", None, "北京"),
    ],
)
async def test_a_location_is_kept_with_its_district(
    dispatcher: CollectingDispatcher, typed: str, district: str | None, location: str
) -> None:
    tracker = make_tracker(slots={"district": district})
    result = await ValidateReportForm().validate_location(typed, dispatcher, tracker, {})
    assert result == {"location": location}
    assert dispatcher.messages == []


async def test_a_filler_description_is_refused(dispatcher: CollectingDispatcher) -> None:
    form = ValidateReportForm()
    assert await form.validate_description("我要投诉", dispatcher, make_tracker(), {}) == {"description": None}
    assert await form.validate_description("井盖丢了很危险", dispatcher, make_tracker(), {}) == {
        "description": "井盖丢了很危险"
    }
    assert responses(dispatcher) == ["utter_description_too_short"]


@pytest.mark.parametrize("answer", ["yes", "no"])
async def test_confirmation_yes_or_no_is_kept(dispatcher: CollectingDispatcher, answer: str) -> None:
    result = await ValidateReportForm().validate_report_confirmed(answer, dispatcher, make_tracker(), {})
    assert result == {"report_confirmed": answer}
    assert dispatcher.messages == []


async def test_a_phone_number_at_confirmation_replaces_the_contact_phone(dispatcher: CollectingDispatcher) -> None:
    tracker = make_tracker(slots={"contact_phone": PHONE})
    result = await ValidateReportForm().validate_report_confirmed("号码改成 139 0000 1111", dispatcher, tracker, {})
    assert result == {"contact_phone": "13900001111", "report_confirmed": None}
    assert dispatcher.messages == []


@pytest.mark.parametrize("answer", ["嗯……再想想", "", "1234", "好的吧"])
async def test_other_text_at_confirmation_asks_to_confirm(dispatcher: CollectingDispatcher, answer: str) -> None:
    result = await ValidateReportForm().validate_report_confirmed(answer, dispatcher, make_tracker(), {})
    assert result == {"report_confirmed": None}
    assert responses(dispatcher) == ["utter_confirm_please"]


@pytest.mark.parametrize("slot", ["description", "location", "contact_phone", "report_confirmed"])
async def test_a_cleared_report_slot_is_not_validated(dispatcher: CollectingDispatcher, slot: str) -> None:
    validate = getattr(ValidateReportForm(), f"validate_{slot}")
    assert await validate(None, dispatcher, make_tracker(), {}) == {}
    assert dispatcher.messages == []


# --- ActionSubmitReport ------------------------------------------------------


def report_slots(confirmed: str | None) -> dict[str, Any]:
    return {
        "description": "小区门口的路灯坏了三天了",
        "location": "朝阳区建国路88号",
        "district": "朝阳区",
        "contact_phone": PHONE,
        "report_confirmed": confirmed,
    }


async def test_a_confirmed_report_becomes_a_case(sessions: Sessions, dispatcher: CollectingDispatcher) -> None:
    identity = await register(sessions, "abc")
    tracker = make_tracker(identity.sender_id, slots=report_slots("yes"))
    events = await ActionSubmitReport(sessions).run(dispatcher, tracker, {})

    [case] = await all_cases(sessions)
    async with sessions() as session:
        conversation = await session.scalar(select(Conversation).where(Conversation.identity_id == identity.id))
        event_count = await session.scalar(select(func.count(CaseEvent.id)).where(CaseEvent.case_id == case.id))
    assert conversation is not None
    assert (case.identity_id, case.citizen_id, case.conversation_id) == (
        identity.id,
        identity.citizen_id,
        conversation.id,
    )
    assert (case.description, case.location, case.district, case.contact_phone, case.status) == (
        "小区门口的路灯坏了三天了",
        "朝阳区建国路88号",
        "朝阳区",
        PHONE,
        "received",
    )
    assert event_count == 1
    assert responses(dispatcher) == ["utter_case_created"]
    assert dispatcher.messages[0]["case_number"] == case.case_number
    assert slot_state(events) == cleared(*REPORT_SLOTS) | {"filed_case_number": case.case_number}


@pytest.mark.parametrize("confirmed", ["no", None])
async def test_an_unconfirmed_report_files_nothing(
    sessions: Sessions, dispatcher: CollectingDispatcher, confirmed: str | None
) -> None:
    identity = await register(sessions, "abc")
    tracker = make_tracker(identity.sender_id, slots=report_slots(confirmed))
    events = await ActionSubmitReport(sessions).run(dispatcher, tracker, {})
    assert await all_cases(sessions) == []
    assert responses(dispatcher) == ["utter_report_cancelled"]
    assert slot_state(events) == cleared(*REPORT_SLOTS)


@pytest.mark.parametrize(
    ("sender", "phone"),
    [("web:nobody", PHONE), ("web:abc", "12345")],
    ids=["unknown sender", "invalid phone"],
)
async def test_a_report_that_cannot_be_filed_says_so(
    sessions: Sessions, dispatcher: CollectingDispatcher, sender: str, phone: str
) -> None:
    await register(sessions, "abc")
    tracker = make_tracker(sender, slots=report_slots("yes") | {"contact_phone": phone})
    events = await ActionSubmitReport(sessions).run(dispatcher, tracker, {})
    assert await all_cases(sessions) == []
    assert responses(dispatcher) == ["utter_case_failed"]
    assert slot_state(events) == cleared(*REPORT_SLOTS)


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
    events = await ActionCheckProgress(sessions).run(dispatcher, tracker, {})
    return dispatcher, events


async def test_the_owner_is_told_the_progress(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    async with sessions.begin() as session:
        event = await change_status(
            session, case.case_number, "dispatched", actor="staff:li", note="已派至区市政", department="区市政管委"
        )
    dispatcher, events = await check_progress(sessions, owner.sender_id, case.case_number)
    assert responses(dispatcher) == ["utter_case_progress"]
    message = dispatcher.messages[0]
    assert {key: message[key] for key in ("case_number", "status", "department", "latest", "updated_at")} == {
        "case_number": case.case_number,
        "status": "已派单",
        "department": "区市政管委",
        "latest": "已派至区市政",
        "updated_at": event.created_at.astimezone(CHINA_TZ).strftime("%Y-%m-%d %H:%M"),
    }
    assert slot_state(events) == cleared(*PROGRESS_SLOTS)


async def test_a_fresh_case_shows_placeholders_for_department_and_note(sessions: Sessions) -> None:
    owner = await register(sessions, "owner")
    case = await file(sessions, owner)
    dispatcher, _ = await check_progress(sessions, owner.sender_id, case.case_number)
    message = dispatcher.messages[0]
    assert (message["status"], message["department"], message["latest"]) == (
        CaseStatus.RECEIVED.label,
        "待分派",
        "已受理",
    )


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


# --- ActionHandoff -----------------------------------------------------------


async def test_handoff_sets_the_conversation_waiting_and_marks_the_reply(
    sessions: Sessions, dispatcher: CollectingDispatcher
) -> None:
    identity = await register(sessions, "abc")
    events = await ActionHandoff(sessions).run(dispatcher, make_tracker(identity.sender_id), {})
    async with sessions() as session:
        conversation = await current_conversation(session, identity)
    assert conversation.handoff_status == "waiting"
    assert conversation.handoff_requested_at is not None
    assert events == []
    assert responses(dispatcher) == ["utter_handoff", None]
    assert dispatcher.messages[1]["custom"] == {"handoff": True}


async def test_handoff_for_an_unknown_sender_still_answers(
    sessions: Sessions, dispatcher: CollectingDispatcher
) -> None:
    await ActionHandoff(sessions).run(dispatcher, make_tracker("web:never-seen"), {})
    assert responses(dispatcher) == ["utter_handoff", None]
    assert dispatcher.messages[1]["custom"] == {"handoff": True}
    async with sessions() as session:
        assert await session.scalar(select(func.count(Conversation.id))) == 0


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
