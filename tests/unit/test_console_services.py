"""Staff accounts, permissions per role and case work, against a real migrated database."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.dispatch.routing import seed_routing
from crm_backend.errors import InvalidInput, InvalidTransition, NotFound
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import (
    AuditEntry,
    CaseEvent,
    Conversation,
    Department,
    LoginFailure,
    Message,
    ServiceCase,
    StaffSession,
    StaffUser,
    utcnow,
)
from crm_backend.services import admin, audit, casework, handoff, staff
from crm_backend.services.conversations import (
    OutgoingMessage,
    current_conversation,
    log_incoming,
    log_outgoing,
    resolve_identity,
)
from crm_backend.services.intake import Report, file_case

Sessions = async_sessionmaker[AsyncSession]
PASSWORD = "correct horse battery"


async def department_id(session: AsyncSession, code: str) -> int:
    found = await session.scalar(select(Department.id).where(Department.code == code))
    assert found is not None
    return found


@pytest.fixture
async def people(sessions: Sessions) -> dict[str, StaffUser]:
    """Departments from the routing data and one member of staff per role (two agents)."""
    async with sessions.begin() as session:
        await seed_routing(session)
        users = {
            "housing": await staff.create_user(
                session,
                username="li.housing",
                display_name="李",
                password=PASSWORD,
                role="agent",
                department_code="A-housing",
            ),
            "transport": await staff.create_user(
                session,
                username="zhao.transport",
                display_name="赵",
                password=PASSWORD,
                role="agent",
                department_code="A-transport",
            ),
            "supervisor": await staff.create_user(
                session, username="wang", display_name="王", password=PASSWORD, role="supervisor"
            ),
            "admin": await staff.create_user(
                session, username="root", display_name="管理员", password=PASSWORD, role="admin"
            ),
        }
    return users


async def new_case(sessions: Sessions, department_code: str | None, status: CaseStatus, sender: str = "c1") -> str:
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "webchat", sender)
        conversation = await current_conversation(session, identity)
        case = await file_case(
            session,
            identity,
            Report(description="路灯坏了", location="A1区解放路", contact_phone="13812345678", district="A1区"),
            conversation_id=conversation.id,
        )
        case.category = "城乡建设"
        if department_code:
            case.department_id = await department_id(session, department_code)
            case.department = department_code
        case.status = status.value
        case.due_at = utcnow() + timedelta(days=3)
        return case.case_number


# --- accounts and sign-in -------------------------------------------------------


async def test_passwords_are_stored_as_argon2id_hashes(sessions: Sessions, people: dict[str, StaffUser]) -> None:
    stored = people["housing"].password_hash
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert PasswordHasher().verify(stored, PASSWORD)


@pytest.mark.parametrize(
    ("username", "password", "role", "department", "reason"),
    [
        ("ab", PASSWORD, "agent", "A-housing", "bad_username"),
        ("Bad Name", PASSWORD, "agent", "A-housing", "bad_username"),
        ("newbie", "short", "agent", "A-housing", "weak_password"),
        ("newbie", "elevenchars", "agent", "A-housing", "weak_password"),
        ("newbie", "Newbie-is-my-name", "agent", "A-housing", "password_has_username"),
        ("newbie", "1QAZ2WSX3EDC", "agent", "A-housing", "common_password"),
        ("newbie", "qwerty123456", "agent", "A-housing", "common_password"),
        ("newbie", PASSWORD, "boss", None, "bad_role"),
        ("newbie", PASSWORD, "agent", None, "department_required"),
        ("newbie", PASSWORD, "agent", "NO-SUCH", "bad_department"),
        ("wang", PASSWORD, "supervisor", None, "username_taken"),
    ],
)
async def test_create_user_refuses_bad_accounts(
    sessions: Sessions,
    people: dict[str, StaffUser],
    username: str,
    password: str,
    role: str,
    department: str | None,
    reason: str,
) -> None:
    async with sessions.begin() as session:
        with pytest.raises(InvalidInput) as refused:
            await staff.create_user(
                session, username=username, display_name="x", password=password, role=role, department_code=department
            )
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    ("password", "reason", "message"),
    [
        ("short", "weak_password", "密码至少需要 12 个字符"),
        ("xx-li.housing-xx", "password_has_username", "密码不能是用户名，也不能包含用户名"),
        ("LI.HOUSING.LI.HOUSING", "password_has_username", "密码不能是用户名，也不能包含用户名"),
        ("LeaveMeAlone", "common_password", "这个密码是常见密码，很容易被猜中，请换一个"),
    ],
)
async def test_resetting_a_password_keeps_the_rules_and_says_why(
    sessions: Sessions, people: dict[str, StaffUser], password: str, reason: str, message: str
) -> None:
    async with sessions.begin() as session:
        with pytest.raises(InvalidInput) as refused:
            await admin.change_user(session, people["admin"], people["housing"].id, "password", password=password)
    assert (refused.value.reason, str(refused.value)) == (reason, message)


def test_common_passwords_are_read_once_and_lower_cased() -> None:
    staff.common_passwords.cache_clear()
    listed = staff.common_passwords()
    assert staff.common_passwords() is listed
    assert "123456" in listed and "qazwsxedcrfv" in listed and len(listed) > 20_000
    assert all(word == word.lower() for word in listed)


async def test_sign_in_and_wrong_passwords_are_throttled_per_username(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    signed = await staff.sign_in(sessions, "WANG ", PASSWORD, "127.0.0.1")
    assert signed is not None and signed.user.id == people["supervisor"].id
    # A supervisor's right password opens only the second step (enrolling in two-factor sign-in).
    assert signed.session.pending_step == staff.SessionStep.ENROL and signed.user.last_login_at is None
    for _ in range(staff.MAX_FAILURES_PER_USERNAME):
        assert await staff.sign_in(sessions, "wang", "wrong password!", "127.0.0.1") is None
    with pytest.raises(staff.LoginThrottled):
        await staff.sign_in(sessions, "wang", PASSWORD, "127.0.0.1")  # even the right one, for now
    assert await staff.sign_in(sessions, "nobody", PASSWORD, "127.0.0.2") is None  # an unknown user: the same
    async with sessions() as session:
        actions = list((await session.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all())
    assert actions == ["login.password"] + ["login.failed"] * staff.MAX_FAILURES_PER_USERNAME + ["login.failed"]


async def test_failures_from_one_address_are_throttled_whatever_the_username(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    for number in range(staff.MAX_FAILURES_PER_ADDRESS):
        assert await staff.sign_in(sessions, f"guess{number:02d}", "wrong password!", "192.0.2.1") is None
    with pytest.raises(staff.LoginThrottled):
        await staff.sign_in(sessions, "wang", PASSWORD, "192.0.2.1")
    assert await staff.sign_in(sessions, "wang", PASSWORD, "192.0.2.2") is not None


async def test_concurrent_wrong_passwords_never_get_more_tries_than_the_limit(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    async def attempt() -> bool:
        try:
            await staff.sign_in(sessions, "wang", "wrong password!", "192.0.2.1")
        except staff.LoginThrottled:
            return False
        return True

    allowed = sum(await asyncio.gather(*(attempt() for _ in range(30))))
    assert allowed <= staff.MAX_FAILURES_PER_USERNAME  # how many fewer depends on how the commits interleave
    async with sessions() as session:
        assert await session.scalar(select(func.count(LoginFailure.id))) == allowed
        failed = await session.scalar(select(func.count(AuditEntry.id)).where(AuditEntry.action == "login.failed"))
    assert failed == allowed
    # Refused attempts are not counted: one at a time, the rest of the limit is still there.
    while await attempt():
        allowed += 1
    assert allowed == staff.MAX_FAILURES_PER_USERNAME


async def test_a_deactivated_account_cannot_sign_in_or_keep_its_session(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    signed = await staff.sign_in(sessions, "li.housing", PASSWORD, "127.0.0.1")
    assert signed is not None
    async with sessions.begin() as session:
        (await session.get(StaffUser, signed.user.id)).active = False  # type: ignore[union-attr]
    async with sessions.begin() as session:
        assert await staff.find_session(session, signed.token) is None
    assert await staff.sign_in(sessions, "li.housing", PASSWORD, "127.0.0.1") is None


async def test_sessions_expire_when_idle_or_too_old_and_only_a_hash_is_stored(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    now = utcnow()
    async with sessions.begin() as session:
        signed = await staff.open_session(session, people["supervisor"], now=now)
    async with sessions.begin() as session:
        stored = await session.scalar(select(StaffSession.token_hash))
        assert stored == staff.token_hash(signed.token) and stored != signed.token
        assert await staff.find_session(session, signed.token, now=now + timedelta(minutes=30)) is not None
        assert await staff.find_session(session, "not-a-token", now=now) is None
    async with sessions.begin() as session:
        idle = now + timedelta(minutes=30) + staff.SESSION_IDLE_LIMIT
        assert await staff.find_session(session, signed.token, now=idle) is None
    async with sessions.begin() as session:
        assert await session.scalar(select(func.count(StaffSession.id))) == 0  # an expired session is deleted


async def test_resetting_a_password_signs_the_user_out(sessions: Sessions, people: dict[str, StaffUser]) -> None:
    async with sessions.begin() as session:
        signed = await staff.open_session(session, people["housing"])
        await staff.set_password(session, people["housing"].id, "a brand new password")
    async with sessions.begin() as session:
        assert await staff.find_session(session, signed.token) is None
    again = await staff.sign_in(sessions, "li.housing", "a brand new password", "x")
    assert again is not None and again.user.id == people["housing"].id


# --- what each role may see ---------------------------------------------------------


async def test_an_agent_sees_only_their_departments_cases(sessions: Sessions, people: dict[str, StaffUser]) -> None:
    housing_case = await new_case(sessions, "A-housing", CaseStatus.DISPATCHED)
    transport_case = await new_case(sessions, "A-transport", CaseStatus.DISPATCHED)
    async with sessions() as session:
        assert (await casework.visible_case(session, people["housing"], housing_case)).case_number == housing_case
        with pytest.raises(NotFound):
            await casework.visible_case(session, people["housing"], transport_case)
        with pytest.raises(NotFound):
            await casework.visible_case(session, people["housing"], "20990101-0001")
        listed, _ = await casework.list_cases(session, people["housing"], casework.CaseFilters())
        assert [c.case_number for c in listed] == [housing_case]
        for role in ("supervisor", "admin"):
            listed, _ = await casework.list_cases(session, people[role], casework.CaseFilters())
            assert {c.case_number for c in listed} == {housing_case, transport_case}


async def test_an_agent_cannot_act_on_another_departments_case(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    transport_case = await new_case(sessions, "A-transport", CaseStatus.DISPATCHED)
    async with sessions.begin() as session:
        with pytest.raises(NotFound):
            await casework.perform(session, people["housing"], transport_case, "accept")
        with pytest.raises(NotFound):
            await casework.add_note(session, people["housing"], transport_case, "偷看")


async def test_escalations_wait_in_the_hotline_inbox_and_agents_see_only_their_own(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    async with sessions.begin() as session:
        await staff.create_user(
            session,
            username="hotline1",
            display_name="小张",
            password=PASSWORD,
            role="agent",
            department_code="A-hotline",
        )
        identity = await resolve_identity(session, "webchat", "needs-help")
        conversation = await current_conversation(session, identity)
        await handoff.request_handoff(session, conversation, reason="fallback")
    async with sessions() as session:
        hotline_agent = await session.scalar(select(StaffUser).where(StaffUser.username == "hotline1"))
        assert hotline_agent is not None
        assert [row.conversation.id for row in await handoff.inbox(session, hotline_agent)] == [conversation.id]
        assert await handoff.inbox(session, people["housing"]) == []
        assert len(await handoff.inbox(session, people["supervisor"])) == 1
        with pytest.raises(NotFound):
            await handoff.visible_conversation(session, people["housing"], conversation.id)
    async with sessions.begin() as session:
        claimed = await handoff.claim(session, hotline_agent, conversation.id)
        assert claimed.handoff_status == handoff.STAFF and claimed.assigned_staff_id == hotline_agent.id
        with pytest.raises(InvalidInput):  # a colleague who could not see it
            await handoff.assign(session, hotline_agent, conversation.id, people["housing"].id)
        await handoff.assign(session, hotline_agent, conversation.id, people["supervisor"].id)
    async with sessions.begin() as session:
        conversation_row = await session.get(Conversation, conversation.id)
        assert conversation_row is not None and conversation_row.assigned_staff_id == people["supervisor"].id
        handoff.close(conversation_row)
    async with sessions.begin() as session:
        fresh = await current_conversation(session, identity)
        assert fresh.id != conversation.id and fresh.handoff_status == handoff.BOT  # closed: next one is new


async def test_beside_a_conversation_an_agent_lists_only_the_other_conversations_they_may_open(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    await new_case(sessions, "A-housing", CaseStatus.DISPATCHED, sender="history")
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "webchat", "history")
        with_housing_case = await current_conversation(session, identity)
        with_housing_case.closed_at = utcnow()
        in_transport_inbox = Conversation(
            identity_id=identity.id, channel=identity.channel, department_id=await department_id(session, "A-transport")
        )
        with_nobody = Conversation(identity_id=identity.id, channel=identity.channel)
        viewed = Conversation(
            identity_id=identity.id, channel=identity.channel, department_id=await department_id(session, "A-housing")
        )
        session.add_all([in_transport_inbox, with_nobody, viewed])
    listed = {}
    for who in ("housing", "transport", "supervisor"):
        async with sessions.begin() as session:
            try:
                detail = await handoff.conversation_detail(session, people[who], viewed.id)
            except NotFound:
                listed[who] = None
                continue
        listed[who] = {conversation.id for conversation in detail.history}
    assert listed == {
        "housing": {with_housing_case.id},
        "transport": None,  # the viewed conversation is in housing's inbox
        "supervisor": {with_housing_case.id, in_transport_inbox.id, with_nobody.id},
    }


async def test_beside_a_conversation_an_agent_sees_only_their_departments_cases(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    housing_case = await new_case(sessions, "A-housing", CaseStatus.DISPATCHED, sender="two-departments")
    transport_case = await new_case(sessions, "A-transport", CaseStatus.DISPATCHED, sender="two-departments")
    async with sessions() as session:
        conversation_id = await session.scalar(
            select(ServiceCase.conversation_id).where(ServiceCase.case_number == housing_case)
        )
    assert conversation_id is not None
    seen = {}
    for who in ("housing", "transport", "supervisor"):
        async with sessions.begin() as session:
            detail = await handoff.conversation_detail(session, people[who], conversation_id, address="192.0.2.9")
        seen[who] = {case.case_number for case in detail.cases}
    assert seen == {
        "housing": {housing_case},
        "transport": {transport_case},
        "supervisor": {housing_case, transport_case},
    }
    async with sessions.begin() as session:
        await handoff.conversation_detail(session, people["housing"], conversation_id, reveal_phone=True)
    async with sessions() as session:
        views = (
            (
                await session.execute(
                    select(AuditEntry.actor, AuditEntry.action, AuditEntry.address).where(
                        AuditEntry.action.like("conversation.%")
                    )
                )
            )
            .tuples()
            .all()
        )
    assert views == [
        ("li.housing", "conversation.view", "192.0.2.9"),
        ("zhao.transport", "conversation.view", "192.0.2.9"),
        ("wang", "conversation.view", "192.0.2.9"),
        ("li.housing", "conversation.view_phone", ""),
    ]


async def test_the_transcript_shows_phone_numbers_masked_unless_revealed_and_stores_them_whole(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    read_back = "好的，您的联系电话是 13912345678，工单号 20261204-0001"
    async with sessions.begin() as session:
        conversation = await current_conversation(session, await resolve_identity(session, "webchat", "read-back"))
        first = log_incoming(session, conversation, "电话 139 1234 5678", max_chars=10_000)
        await session.flush()
        log_outgoing(session, conversation, [OutgoingMessage(read_back)])
        conversation_id, first_id = conversation.id, first.id
    async with sessions.begin() as session:
        masked = await handoff.conversation_detail(session, people["supervisor"], conversation_id)
        shown = await handoff.conversation_detail(session, people["supervisor"], conversation_id, reveal_phone=True)
        live = await handoff.messages_after(session, people["supervisor"], conversation_id, first_id)
    masked_read_back = "好的，您的联系电话是 139****5678，工单号 20261204-0001"
    assert [m.text for m in masked.messages] == ["电话 139****5678", masked_read_back]
    assert masked.phones_masked and not shown.phones_masked
    assert [m.text for m in shown.messages] == ["电话 139 1234 5678", read_back]
    assert [m.text for m in live] == [masked_read_back]
    async with sessions() as session:
        stored = (await session.scalars(select(Message.text).where(Message.conversation_id == conversation_id))).all()
    assert list(stored) == ["电话 139 1234 5678", read_back]


def test_the_draft_case_shows_the_collected_phone_masked_unless_revealed() -> None:
    slots = {"description": "路灯坏了", "location": "A1区解放路", "contact_phone": "13912345678", "district": None}
    draft = handoff.draft_case(slots)
    assert (draft.description, draft.location, draft.district) == ("路灯坏了", "A1区解放路", "")
    assert (draft.contact_phone, draft.masked_phone) == ("", "139****5678")
    assert draft.collected == {"问题描述": "路灯坏了", "地点": "A1区解放路", "联系电话": "139****5678"}
    assert handoff.draft_case(slots, reveal_phone=True).contact_phone == "13912345678"
    assert handoff.draft_case({}).masked_phone == ""


async def test_an_escalation_goes_to_the_department_that_has_the_conversations_case(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    await new_case(sessions, "A-housing", CaseStatus.DISPATCHED, sender="has-case")
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "webchat", "has-case")
        conversation = await current_conversation(session, identity)
        await handoff.request_handoff(session, conversation)
    async with sessions() as session:
        assert [row.conversation.id for row in await handoff.inbox(session, people["housing"])] == [conversation.id]


# --- working a case ---------------------------------------------------------------


async def test_a_case_goes_through_its_life_with_events_and_audit_rows(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    number = await new_case(sessions, None, CaseStatus.RECEIVED)
    housing = people["housing"]
    async with sessions.begin() as session:
        with pytest.raises(NotFound):  # an undispatched case belongs to no agent's department
            await casework.perform(session, housing, number, "dispatch")
        with pytest.raises(InvalidInput):  # dispatch needs a department
            await casework.perform(session, people["supervisor"], number, "dispatch")
        await casework.perform(
            session,
            people["supervisor"],
            number,
            "dispatch",
            department_id=await department_id(session, "A-housing"),
        )
    steps = [("accept", ""), ("start", ""), ("resolve", "已更换路灯")]
    for action, note in steps:
        async with sessions.begin() as session:
            await casework.perform(session, housing, number, action, note=note, address="10.0.0.1")
    async with sessions.begin() as session:
        with pytest.raises(InvalidTransition) as refused:
            await casework.perform(session, housing, number, "accept")
        assert "已办结" in str(refused.value)
        case = await casework.visible_case(session, people["supervisor"], number)
        assert case.status == CaseStatus.RESOLVED.value and case.department == "A市住房和城乡建设局"
        events = await casework.timeline(session, case)
        assert [(e.from_status, e.to_status, e.actor) for e in events[-4:]] == [
            ("received", "dispatched", "王"),
            ("dispatched", "accepted", "李"),
            ("accepted", "in_progress", "李"),
            ("in_progress", "resolved", "李"),
        ]
        assert events[-1].note == "已更换路灯" and events[-1].actor_id == housing.id
        audits = (await session.scalars(select(AuditEntry).where(AuditEntry.target == number))).all()
        assert [a.action for a in audits] == ["case.file", "case.dispatch", "case.accept", "case.start", "case.resolve"]
        assert audits[-1].actor == "li.housing" and audits[-1].address == "10.0.0.1"


async def test_a_refused_change_writes_neither_event_nor_audit(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    number = await new_case(sessions, "A-housing", CaseStatus.DISPATCHED)
    async with sessions() as session:
        audits_before = await session.scalar(select(func.count(AuditEntry.id)))
        events_before = await session.scalar(select(func.count(CaseEvent.id)))
    with pytest.raises(InvalidInput):
        async with sessions.begin() as session:
            await casework.perform(session, people["housing"], number, "return", note="  ")  # reason missing
    async with sessions() as session:
        assert await session.scalar(select(func.count(AuditEntry.id))) == audits_before
        assert await session.scalar(select(func.count(CaseEvent.id))) == events_before


async def test_return_sends_the_case_back_to_the_dispatch_queue(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    number = await new_case(sessions, "A-housing", CaseStatus.DISPATCHED)
    async with sessions.begin() as session:
        await casework.perform(session, people["housing"], number, "return", note="不属于本部门职责")
    async with sessions() as session:
        queue = await casework.dispatch_queue(session)
        assert [case.case_number for case, _ in queue] == [number]
        with pytest.raises(NotFound):  # no longer the agent's case
            await casework.visible_case(session, people["housing"], number)


async def test_reassign_needs_another_department_and_a_supervisor(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    number = await new_case(sessions, "A-housing", CaseStatus.DISPATCHED)
    async with sessions.begin() as session:
        housing_id = await department_id(session, "A-housing")
        transport_id = await department_id(session, "A-transport")
        with pytest.raises(InvalidTransition):
            await casework.perform(session, people["housing"], number, "reassign", department_id=transport_id)
        with pytest.raises(InvalidTransition):
            await casework.perform(session, people["supervisor"], number, "reassign", department_id=housing_id)
        await casework.perform(session, people["supervisor"], number, "reassign", department_id=transport_id)
    async with sessions() as session:
        assert (await casework.visible_case(session, people["transport"], number)).status == "dispatched"


async def test_extension_is_requested_by_the_department_and_approved_by_a_supervisor(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    number = await new_case(sessions, "A-housing", CaseStatus.IN_PROGRESS)
    async with sessions.begin() as session:
        before = (await casework.visible_case(session, people["housing"], number)).due_at
        with pytest.raises(InvalidInput):
            await casework.request_extension(session, people["housing"], number, 5, "")
        await casework.request_extension(session, people["housing"], number, 5, "需要协调供电公司")
    async with sessions.begin() as session:
        with pytest.raises(InvalidTransition):  # one pending request at a time
            await casework.request_extension(session, people["housing"], number, 3, "再延")
        with pytest.raises(InvalidTransition):  # agents do not approve
            await casework.decide_extension(session, people["housing"], number, True)
        request = await casework.decide_extension(session, people["supervisor"], number, True, "同意")
        assert request.status == "approved"
    async with sessions() as session:
        case = await casework.visible_case(session, people["housing"], number)
        assert before is not None and case.due_at is not None
        assert timedelta(days=5) <= case.due_at - before <= timedelta(days=12)
        notes = [e.note for e in await casework.timeline(session, case) if e.kind == "extension"]
        assert notes[0].startswith("申请延期 5 个工作日") and notes[1].startswith("同意延期 5 个工作日")


async def test_supervision_puts_a_case_first_in_the_departments_list(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    older = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    newer = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    async with sessions.begin() as session:
        with pytest.raises(InvalidTransition):
            await casework.set_supervised(session, people["housing"], older, True)
        await casework.set_supervised(session, people["supervisor"], older, True, "三天内必须答复")
    async with sessions() as session:
        listed, _ = await casework.list_cases(session, people["housing"], casework.CaseFilters())
        assert [c.case_number for c in listed] == [older, newer]
        only, _ = await casework.list_cases(session, people["housing"], casework.CaseFilters(supervised=True))
        assert [c.case_number for c in only] == [older]


async def test_case_list_pages_by_cursor_without_gaps_or_repeats(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    numbers = [await new_case(sessions, "A-housing", CaseStatus.DISPATCHED, sender=f"s{i}") for i in range(7)]
    async with sessions.begin() as session:
        await casework.set_supervised(session, people["supervisor"], numbers[2], True)
        await casework.set_supervised(session, people["supervisor"], numbers[5], True)
    seen: list[str] = []
    cursor = None
    async with sessions() as session:
        while True:
            page, cursor = await casework.list_cases(
                session, people["housing"], casework.CaseFilters(), after=cursor, limit=2
            )
            seen += [c.case_number for c in page]
            if cursor is None:
                break
    rest = [n for n in reversed(numbers) if n not in (numbers[2], numbers[5])]
    assert seen == [numbers[5], numbers[2], *rest]


async def test_overdue_filter_and_flag(sessions: Sessions, people: dict[str, StaffUser]) -> None:
    late = await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)
    done = await new_case(sessions, "A-housing", CaseStatus.RESOLVED)
    await new_case(sessions, "A-housing", CaseStatus.ACCEPTED)  # not yet due
    async with sessions.begin() as session:
        for number in (late, done):
            case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == number))
            assert case is not None
            case.due_at = utcnow() - timedelta(hours=1)
    async with sessions() as session:
        overdue, _ = await casework.list_cases(session, people["housing"], casework.CaseFilters(overdue=True))
        assert [c.case_number for c in overdue] == [late]  # a resolved case is not overdue
        assert casework.is_overdue(overdue[0])


def test_a_malformed_cursor_is_refused() -> None:
    for raw in ("x", "2-5", "1-", "1-abc"):
        with pytest.raises(InvalidInput):
            casework.Cursor.decode(raw)
    assert casework.Cursor.decode("1-42") == casework.Cursor(True, 42)


# --- administration --------------------------------------------------------------------


async def test_admin_changes_are_checked_and_audited(sessions: Sessions, people: dict[str, StaffUser]) -> None:
    root = people["admin"]
    async with sessions.begin() as session:
        with pytest.raises(InvalidInput) as refused:
            await admin.change_user(session, root, root.id, "deactivate")
        assert refused.value.reason == "self"
        with pytest.raises(NotFound):
            await admin.change_user(session, root, None, "activate")
        await admin.change_user(session, root, people["housing"].id, "deactivate", address="192.0.2.5")
        department = await admin.save_department(
            session,
            root,
            department_id=None,
            code="A-parks",
            name="公园管理处",
            district="A1区",
            active=True,
            districts=["A1区"],
        )
        with pytest.raises(InvalidInput) as taken:
            await admin.save_department(
                session, root, department_id=None, code="A-parks", name="重复", district=None, active=True, districts=[]
            )
        assert taken.value.reason == "code_taken"
        with pytest.raises(InvalidInput) as days:
            await admin.change_routing(
                session, root, "policy", "城乡建设", districts=[], department_id=department.id, deadline_working_days=99
            )
        assert days.value.reason == "bad_days"
        detail = await admin.change_routing(
            session, root, "rule", "城乡建设", districts=["A1区"], district="A1区", department_id=department.id
        )
        assert detail == "A1区 → 公园管理处"
    async with sessions() as session:
        assert (await session.get(StaffUser, people["housing"].id)).active is False  # type: ignore[union-attr]
        rows = (await session.execute(select(AuditEntry.action, AuditEntry.target))).tuples().all()
    assert rows == [("user.deactivate", "li.housing"), ("department.create", "A-parks"), ("routing.rule", "城乡建设")]


async def test_audit_entries_come_with_the_staff_members_display_name(
    sessions: Sessions, people: dict[str, StaffUser]
) -> None:
    async with sessions.begin() as session:
        audit.record(session, people["housing"], "case.view", "20261123-0007")
        audit.record(session, None, "login.failed", "li.housing", actor_name="li.housing")
    async with sessions() as session:
        rows = await audit.recent_entries(session, limit=2)
    assert [(row.entry.action, row.entry.actor, row.display_name) for row in rows] == [
        ("login.failed", "li.housing", None),  # a failed sign-in is nobody's: no name is lent to it
        ("case.view", "li.housing", "李"),
    ]
