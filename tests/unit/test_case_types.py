"""The 12345 case types: the recogniser, the type filed with every case, staff's correction, the list filter."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from crm_backend.api import case_json
from crm_backend.dispatch.case_type import (
    CASE_TYPES,
    CaseTypeRecogniser,
    is_praise,
    training_rows,
)
from crm_backend.dispatch.classifier import DataError, ModelLoadError, normalise
from crm_backend.dispatch.routing import seed_routing
from crm_backend.dispatch.service import Dispatcher
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import AuditEntry, ServiceCase, StaffUser
from crm_backend.services import casework
from crm_backend.services.conversations import current_conversation, resolve_identity
from crm_backend.services.intake import Report, file_report
from tests.unit.test_actions import (
    CATEGORY_MODEL,
    all_cases,
    ask_confirmation,
    register,
    rendered,
    report_slots,
    seeded,
    submit,
)
from tests.unit.test_console_services import Sessions, new_case, people

__all__ = ["people", "seeded"]  # fixtures, imported for the tests below


@pytest.fixture(scope="session")
def recogniser_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recogniser as `bin/setup` builds it (dev letters and seed sentences), saved."""
    path = tmp_path_factory.mktemp("case_types") / "case_type_classifier.joblib"
    CaseTypeRecogniser.train(training_rows()).save(path)
    return path


@pytest.fixture(scope="session")
def recogniser(recogniser_path: Path) -> CaseTypeRecogniser:
    return CaseTypeRecogniser.load(recogniser_path)


@pytest.fixture(scope="session")
def typed_desk(recogniser_path: Path) -> Dispatcher:
    if not CATEGORY_MODEL.exists():
        pytest.skip("no category model: bin/setup trains it")
    return Dispatcher.load(CATEGORY_MODEL, case_type_model_path=recogniser_path)


# --- the recogniser ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("路灯坏了", "求助"),
        ("小区门口垃圾没人清运", "求助"),
        ("我要投诉公交司机态度恶劣", "投诉"),
        ("请问居住证怎么办理", "咨询"),
        ("建议在学校门口装个红绿灯", "建议"),
        ("感谢环卫工人把我们小区打扫得这么干净", "表扬"),
    ],
)
def test_short_chat_reports_get_the_type_the_written_criteria_give(
    recogniser: CaseTypeRecogniser, text: str, expected: str
) -> None:
    prediction = recogniser.predict(text)
    assert prediction.case_type == expected
    assert 0 < prediction.confidence <= 1 and prediction.top[0] == (expected, prediction.confidence)
    assert sum(p for _, p in prediction.top) == pytest.approx(1.0)


def test_a_long_formal_complaint_letter_is_a_complaint(recogniser: CaseTypeRecogniser) -> None:
    letter = (
        "投诉某区某小区物业乱收费 尊敬的领导：您好！我是某小区的业主，物业公司一直不按物价部门审批的价格收费，"
        "审批价每平方2.67元，实际按每平方3.98元收取，业主多次反映无果，恳请有关部门严肃查处，退还多收的物业费。"
    )
    assert recogniser.predict(letter).case_type == "投诉"


def test_praise_comes_from_cue_words_but_a_closing_thanks_is_only_politeness() -> None:
    assert is_praise(normalise("感谢派出所民警帮我找回了钱包"))
    assert not is_praise(normalise("路灯坏了，请尽快修好，谢谢！"))
    assert not is_praise(normalise("感谢领导关注，我要投诉物业乱收费"))


def test_training_refuses_an_unknown_type() -> None:
    from crm_backend.dispatch.case_type import LabelledLetter

    with pytest.raises(DataError):
        CaseTypeRecogniser.train([LabelledLetter("路灯坏了", "求助"), LabelledLetter("谢谢", "感谢信")])


def test_a_missing_or_foreign_model_file_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        CaseTypeRecogniser.load(tmp_path / "absent.joblib")
    foreign = tmp_path / "foreign.joblib"
    foreign.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        CaseTypeRecogniser.load(foreign)


# --- filing ----------------------------------------------------------------------


async def _file(sessions: Sessions, desk: Dispatcher, description: str, case_type: str | None = None) -> ServiceCase:
    async with sessions.begin() as session:
        await seed_routing(session)
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "webchat", "typed-1")
        conversation = await current_conversation(session, identity)
        report = Report(description=description, location="A1区解放路", contact_phone="13812345678", district="A1区")
        preview = await desk.preview(
            session,
            description=report.description,
            location_text=report.location,
            district_hint=report.district,
            case_type_override=case_type,
        )
        case = await file_report(session, desk, identity, report, preview, conversation_id=conversation.id)
        assert preview.case_type == case.case_type
        return case


async def test_a_filed_case_gets_the_type_recognised_from_its_text(sessions: Sessions, typed_desk: Dispatcher) -> None:
    case = await _file(sessions, typed_desk, "解放路的路灯坏了，晚上很黑")
    assert case.case_type == "求助"
    async with sessions() as session:
        stored = await session.scalar(select(ServiceCase.case_type).where(ServiceCase.id == case.id))
    assert stored == "求助"


async def test_a_citizens_choice_of_type_overrides_the_recogniser(sessions: Sessions, typed_desk: Dispatcher) -> None:
    case = await _file(sessions, typed_desk, "解放路的路灯坏了，晚上很黑", case_type="投诉")
    assert case.case_type == "投诉"


async def test_a_type_outside_the_six_is_refused_at_preview(sessions: Sessions, typed_desk: Dispatcher) -> None:
    with pytest.raises(InvalidInput):
        await _file(sessions, typed_desk, "解放路的路灯坏了", case_type="感谢信")


# --- correction and the list -----------------------------------------------------------


async def test_staff_correct_a_cases_type_with_a_timeline_entry_and_an_audit_row(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    number = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    async with sessions.begin() as session:
        await casework.set_case_type(session, people["housing"], number, "投诉", address="127.0.0.1")
    async with sessions.begin() as session:
        await casework.set_case_type(session, people["housing"], number, "举报")
    async with sessions() as session:
        case = await casework.visible_case(session, people["housing"], number)
        assert case.case_type == "举报" and case.status == CaseStatus.ACCEPTED.value
        events = [e for e in await casework.timeline(session, case) if e.kind == "case_type"]
        assert [e.note for e in events] == ["更正类型：未分类 → 投诉", "更正类型：投诉 → 举报"]
        assert all(e.from_status == e.to_status == CaseStatus.ACCEPTED.value for e in events)
        audits = (await session.scalars(select(AuditEntry).where(AuditEntry.action == "case.case_type"))).all()
        assert [a.detail for a in audits] == ["未分类 → 投诉", "投诉 → 举报"]


async def test_a_correction_to_an_unknown_type_or_on_an_unseen_case_is_refused(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    number = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    async with sessions.begin() as session:
        with pytest.raises(InvalidInput):
            await casework.set_case_type(session, people["housing"], number, "感谢信")
        with pytest.raises(NotFound):
            await casework.set_case_type(session, people["transport"], number, "投诉")


async def test_the_case_list_filters_by_type_and_by_unclassified(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    complaint = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    untyped = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    async with sessions.begin() as session:
        await casework.set_case_type(session, people["supervisor"], complaint, "投诉")
    async with sessions() as session:
        only, _ = await casework.list_cases(session, people["housing"], casework.CaseFilters(case_type="投诉"))
        assert [c.case_number for c in only] == [complaint]
        unclassified, _ = await casework.list_cases(
            session, people["housing"], casework.CaseFilters(case_type=casework.UNCLASSIFIED)
        )
        assert [c.case_number for c in unclassified] == [untyped]


def test_the_api_shows_a_cases_type() -> None:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    case = ServiceCase(
        case_number="20261204-0001",
        status=CaseStatus.ACCEPTED.value,
        description="路灯坏了",
        location="A1区",
        contact_phone="13812345678",
        case_type="求助",
        created_at=now,
        updated_at=now,
    )
    assert case_json(case)["case_type"] == "求助"
    assert set(CASE_TYPES) == {"咨询", "求助", "投诉", "举报", "建议", "表扬"}


# --- the chat's read-back and filing (actions) ------------------------------------------


async def test_the_read_back_tells_the_citizen_the_type(seeded: Sessions, typed_desk: Dispatcher) -> None:
    _, preview = await ask_confirmation(seeded, typed_desk, report_slots())
    assert preview["response"] == "utter_dispatch_preview"
    assert preview["case_type"] == "投诉"
    assert rendered(preview).startswith("您反映的事项类型为「投诉」")
    assert "更正类型" in [button["title"] for button in preview["buttons"]]
    _, chosen = await ask_confirmation(seeded, typed_desk, report_slots(case_type_choice="举报"))
    assert chosen["case_type"] == "举报"


async def test_a_case_filed_from_the_chat_has_the_type_the_citizen_chose(
    seeded: Sessions, typed_desk: Dispatcher
) -> None:
    identity = await register(seeded, "typed")
    await submit(seeded, typed_desk, identity.sender_id, report_slots("yes", case_type_choice="举报"))
    [case] = await all_cases(seeded)
    assert case.case_type == "举报"


# --- backfill ----------------------------------------------------------------------------


async def test_cases_filed_before_types_are_classified_once_by_the_backfill(
    sessions: Sessions, people: dict[str, StaffUser], recogniser: CaseTypeRecogniser
) -> None:
    from crm_backend.services.cases import classify_untyped_cases

    untyped = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)  # 「路灯坏了」
    corrected = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    async with sessions.begin() as session:
        await casework.set_case_type(session, people["supervisor"], corrected, "投诉")
    async with sessions.begin() as session:
        assert await classify_untyped_cases(session, recogniser) == 1
    async with sessions.begin() as session:
        assert await classify_untyped_cases(session, recogniser) == 0
    async with sessions() as session:
        types = dict((await session.execute(select(ServiceCase.case_number, ServiceCase.case_type))).tuples().all())
        assert types == {untyped: "求助", corrected: "投诉"}
        [entry] = (await session.scalars(select(AuditEntry).where(AuditEntry.action == "case.classify_types"))).all()
        assert entry.detail == "1"


@pytest.mark.parametrize(
    ("text", "intent", "entities", "expected"),
    [
        (
            '/correct_case_type{"case_type": "投诉"}',
            "correct_case_type",
            [("case_type", "投诉")],
            {"case_type_choice": "投诉"},
        ),
        (
            '/correct_category{"case_type": "举报"}',
            "correct_category",
            [("case_type", "举报")],
            {"case_type_choice": "举报"},
        ),
        ("/correct_case_type", "correct_case_type", [], {"case_type_requested": True, "case_type_choice": None}),
        (
            '/correct_case_type{"case_type": "感谢信"}',
            "correct_case_type",
            [("case_type", "感谢信")],
            {"case_type_requested": True, "case_type_choice": None},
        ),
    ],
    ids=["type button", "type on the category intent", "更正类型 button", "unknown type"],
)
async def test_a_type_correction_at_the_read_back_sets_or_asks_for_the_type_and_keeps_the_category(
    typed_desk: Dispatcher, text: str, intent: str, entities: list[tuple[str, str]], expected: dict[str, object]
) -> None:
    from rasa_sdk.executor import CollectingDispatcher

    from actions.report import ValidateReportForm
    from tests.unit.test_actions import entity, make_tracker

    tracker = make_tracker(
        slots={"category_choice": "城乡建设"},
        text=text,
        intent=intent,
        entities=[entity(name, value) for name, value in entities],
    )
    dispatcher = CollectingDispatcher()
    result = await ValidateReportForm(typed_desk).validate_report_confirmed(text, dispatcher, tracker, {})
    assert result == expected | {"report_confirmed": None}
    assert dispatcher.messages == []


async def test_the_type_question_joins_the_form_only_when_asked_for(typed_desk: Dispatcher) -> None:
    from rasa_sdk.executor import CollectingDispatcher

    from actions.report import ValidateReportForm
    from tests.unit.test_actions import make_tracker

    domain_slots = ["description", "location", "contact_phone", "case_type_choice", "report_confirmed"]
    form = ValidateReportForm(typed_desk)
    plain = await form.required_slots(domain_slots, CollectingDispatcher(), make_tracker(slots={}), {})
    assert "case_type_choice" not in plain
    asked = make_tracker(slots={"case_type_requested": True})
    slots = await form.required_slots(domain_slots, CollectingDispatcher(), asked, {})
    assert slots[-2:] == ["case_type_choice", "report_confirmed"]


async def test_the_api_case_list_filters_by_type_and_refuses_an_unknown_one(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    from crm_backend.services import cases

    complaint = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    async with sessions.begin() as session:
        await casework.set_case_type(session, people["supervisor"], complaint, "投诉")
    async with sessions() as session:
        assert [c.case_number for c in await cases.list_cases(session, case_type="投诉")] == [complaint]
        with pytest.raises(InvalidInput):
            await cases.list_cases(session, case_type="感谢信")


async def test_correct_type_without_a_type_asks_which_and_offers_the_six(typed_desk: Dispatcher) -> None:
    from rasa_sdk.executor import CollectingDispatcher

    from actions.dispatch import ActionAskCaseTypeChoice
    from actions.report import ValidateReportForm
    from tests.unit.test_actions import make_tracker

    tracker = make_tracker(
        slots={"requested_slot": "report_confirmed"}, active_loop="report_form", intent="correct_case_type"
    )
    dispatcher = CollectingDispatcher()
    validated = await ValidateReportForm(typed_desk).validate_report_confirmed("类型不对", dispatcher, tracker, {})
    assert validated == {"case_type_requested": True, "case_type_choice": None, "report_confirmed": None}
    await ActionAskCaseTypeChoice().run(dispatcher, make_tracker(), {})
    [asked] = dispatcher.messages
    assert asked["response"] == "utter_choose_case_type"
    assert [b["title"] for b in asked["buttons"]] == list(CASE_TYPES)
    chosen = await ValidateReportForm(typed_desk).validate_case_type_choice("举报", dispatcher, make_tracker(), {})
    assert chosen == {"case_type_choice": "举报", "case_type_requested": False}
    refused = await ValidateReportForm(typed_desk).validate_case_type_choice("随便", dispatcher, make_tracker(), {})
    assert refused == {"case_type_choice": None}
