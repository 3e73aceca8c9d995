"""The actions of linking, 我的工单, notices and 回访, driven as the engine drives them."""

from __future__ import annotations

from typing import Any

from rasa_sdk.executor import CollectingDispatcher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from actions.account import ActionLinkAccount, ActionListMyCases, ActionSetNotices
from actions.followup import SKIP, ActionAskFollowup, ActionRecordRating, ValidateFollowupForm
from bot.proof_alarm import ProofAlarm
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import Citizen, ServiceCase, utcnow
from crm_backend.services.intake import Report, file_case
from tests.unit.test_actions import DOMAIN, STATUS_WORDS, register, rendered, responses
from tests.unit.test_handoff_actions import SESSION_START, bot, tracker_for, user

Sessions = async_sessionmaker[AsyncSession]


def message(intent: str, text: str, entities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    event = user(intent, text)
    event["parse_data"]["entities"] = entities or []
    return event


async def filed(sessions: Sessions, sender: str, status: CaseStatus = CaseStatus.DISPATCHED) -> str:
    identity = await register(sessions, sender)
    async with sessions.begin() as session:
        case = await file_case(
            session, identity, Report(description="路灯坏了很久了", location="A1区解放路", contact_phone="13812345678")
        )
        case.status = status.value
        if status is CaseStatus.RESOLVED:
            case.followup_asked_at = utcnow()
        return case.case_number


async def run(action: Any, sender: str, *events: dict[str, Any], slots: dict[str, Any] | None = None) -> Any:
    dispatcher = CollectingDispatcher()
    result = await action.run(dispatcher, tracker_for(sender, [*SESSION_START, *events], slots), DOMAIN)
    return dispatcher, result


async def test_a_code_shown_on_the_web_links_telegram_and_lists_the_web_case(
    sessions: Sessions, proof_alarm: ProofAlarm
) -> None:
    number = await filed(sessions, "web-a")
    await register(sessions, "9001", channel="telegram")
    issued, _ = await run(ActionLinkAccount(sessions, proof_alarm), "web:web-a", message("link_account", "绑定账号"))
    [code_message] = issued.messages
    assert code_message["response"] == "utter_link_code" and len(code_message["code"]) == 6
    assert rendered(code_message).startswith(f"您的绑定码是 {code_message['code']}")

    empty, _ = await run(
        ActionListMyCases(sessions, STATUS_WORDS), "telegram:9001", message("list_my_cases", "我的工单")
    )
    assert responses(empty) == ["utter_my_cases_none"]
    linked, _ = await run(
        ActionLinkAccount(sessions, proof_alarm),
        "telegram:9001",
        message("link_account", f"/link {code_message['code']}"),
    )
    assert responses(linked) == ["utter_link_done"]
    listed, _ = await run(
        ActionListMyCases(sessions, STATUS_WORDS), "telegram:9001", message("list_my_cases", "我的工单")
    )
    [listing] = listed.messages
    assert (
        listing["response"] == "utter_my_cases" and number in listing["cases"] and "已转交负责部门" in listing["cases"]
    )


async def test_a_wrong_code_and_a_case_number_with_its_last_four_digits(
    sessions: Sessions, proof_alarm: ProofAlarm
) -> None:
    number = await filed(sessions, "web-b")
    await register(sessions, "9002", channel="telegram")
    wrong, _ = await run(
        ActionLinkAccount(sessions, proof_alarm), "telegram:9002", message("link_account", "绑定 000001")
    )
    assert responses(wrong) == ["utter_link_invalid"]
    by_case, _ = await run(
        ActionLinkAccount(sessions, proof_alarm),
        "telegram:9002",
        message("link_account", f"用工单号{number}和尾号5678绑定"),
    )
    assert responses(by_case) == ["utter_link_done"]
    again, _ = await run(
        ActionLinkAccount(sessions, proof_alarm),
        "telegram:9002",
        message("link_account", f"用工单号{number}和尾号5678绑定"),
    )
    assert responses(again) == ["utter_link_same"]


async def test_notices_off_and_on(sessions: Sessions) -> None:
    identity = await register(sessions, "web-c")
    off, _ = await run(ActionSetNotices(sessions), "web:web-c", message("stop_notices", "不要再通知我"))
    assert responses(off) == ["utter_notices_off"]
    async with sessions() as session:
        assert (await session.get(Citizen, identity.citizen_id)).notices_enabled is False  # type: ignore[union-attr]
    on, _ = await run(ActionSetNotices(sessions), "web:web-c", message("resume_notices", "恢复通知"))
    assert responses(on) == ["utter_notices_on"]
    async with sessions() as session:
        assert (await session.get(Citizen, identity.citizen_id)).notices_enabled is True  # type: ignore[union-attr]


async def test_the_question_remembers_its_case_and_a_reminder_says_so() -> None:
    event = message("EXTERNAL_followup", "", [{"entity": "case_number", "value": "20261124-0001"}])
    dispatcher, result = await run(ActionAskFollowup(), "web:x", event)
    assert dispatcher.messages == []
    assert {"event": "slot", "name": "followup_case", "value": "20261124-0001", "timestamp": None} in result
    reminder = message(
        "EXTERNAL_followup",
        "",
        [{"entity": "case_number", "value": "20261124-0001"}, {"entity": "reminder", "value": "yes"}],
    )
    dispatcher, _ = await run(ActionAskFollowup(), "web:x", reminder)
    assert responses(dispatcher) == ["utter_followup_reminder"]


async def test_the_form_reads_a_rating_and_asks_once_more_then_lets_go() -> None:
    form = ValidateFollowupForm()
    tracker = tracker_for("web:x", [*SESSION_START, message("rate_service", "还行吧，挺快的")])
    dispatcher = CollectingDispatcher()
    assert await form.validate_rating("还行吧，挺快的", dispatcher, tracker, DOMAIN) == {"rating": "4"}
    unclear = tracker_for("web:x", [*SESSION_START, message("chitchat", "今天星期几")])
    assert await form.validate_rating("今天星期几", dispatcher, unclear, DOMAIN) == {"rating": None}
    assert responses(dispatcher) == ["utter_rating_not_understood"]
    twice = tracker_for(
        "web:x",
        [
            *SESSION_START,
            message("chitchat", "今天星期几"),
            bot("utter_rating_not_understood"),
            message("chitchat", "嗯"),
        ],
    )
    assert await form.validate_rating("嗯", CollectingDispatcher(), twice, DOMAIN) == {"rating": SKIP}


async def test_putting_the_question_is_not_taken_for_an_unclear_answer() -> None:
    """The question clears the slot (None); validating that says nothing before the question."""
    form = ValidateFollowupForm()
    tracker = tracker_for("web:x", [*SESSION_START, message("EXTERNAL_followup", "")])
    dispatcher = CollectingDispatcher()
    assert await form.validate_rating(None, dispatcher, tracker, DOMAIN) == {"rating": None}
    assert dispatcher.messages == []


async def test_recording_a_rating_closes_or_reopens_the_case(sessions: Sessions) -> None:
    good = await filed(sessions, "web-d", CaseStatus.RESOLVED)
    thanked, _ = await run(
        ActionRecordRating(sessions),
        "web:web-d",
        message("rate_service", "5分"),
        slots={"rating": "5", "followup_case": good},
    )
    assert [m["response"] for m in thanked.messages] == ["utter_rating_thanks"] and thanked.messages[0]["rating"] == 5
    bad = await filed(sessions, "web-e", CaseStatus.RESOLVED)
    sorry, _ = await run(
        ActionRecordRating(sessions),
        "web:web-e",
        message("rate_service", "很不满意"),
        slots={"rating": "1", "followup_case": bad},
    )
    assert responses(sorry) == ["utter_rating_reopened"] and sorry.messages[0]["case_number"] == bad
    async with sessions() as session:
        states = dict((await session.execute(select(ServiceCase.case_number, ServiceCase.status))).tuples().all())
    assert states == {good: "reviewed", bad: "in_progress"}
    nothing, _ = await run(ActionRecordRating(sessions), "web:web-d", message("rate_service", "5分"))
    assert responses(nothing) == ["utter_no_rating_pending"]
