"""What staff and the app tell a citizen is written with its log entry, Telegram's copy in the outbox.

The database is the real migrated one; Telegram's side is the scripted bot of the delivery tests.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.telegram_delivery import TelegramDelivery
from bot.followup import CaseFollowup
from bot.hub import ConversationHub
from bot.notifier import ChannelNotifier
from bot.responses import Responses
from crm_backend.models import CaseEvent, Conversation, Message, ServiceCase, TelegramOutbox
from crm_backend.services.cases import get_case
from crm_backend.services.conversations import OutgoingMessage, current_conversation, resolve_identity
from crm_backend.services.intake import Report, file_case
from crm_backend.services.moves import Actor, move_case
from crm_backend.settings import PROJECT_ROOT
from tests.support.moves import department_named
from tests.unit.test_telegram_delivery import POLICY, ScriptedBot, Sleeps

Sessions = async_sessionmaker[AsyncSession]
CHAT = "4242"


async def telegram_conversation(sessions: Sessions) -> int:
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "telegram", CHAT)
        conversation = await current_conversation(session, identity)
    return conversation.id


def notifier_for(sessions: Sessions, bot: ScriptedBot) -> tuple[ChannelNotifier, TelegramDelivery]:
    telegram = TelegramDelivery(bot, sessions, POLICY, sleep=Sleeps())  # type: ignore[arg-type]
    responses = Responses({"utter_handoff_released": "机器人回来了", "utter_handoff_closed": "会话已结束"})
    return ChannelNotifier(sessions, ConversationHub(), responses, telegram), telegram


async def outbox_texts(sessions: Sessions) -> list[tuple[str, str, str]]:
    async with sessions() as session:
        rows = await session.scalars(select(TelegramOutbox).order_by(TelegramOutbox.id))
        return [(row.chat_id, row.text, row.status) for row in rows]


async def staff_lines(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        return list((await session.scalars(select(Message.text).where(Message.sender_kind == "staff"))).all())


async def test_a_staff_reply_rolled_back_leaves_no_outbox_row_and_no_log_entry(sessions: Sessions) -> None:
    notifier, _ = notifier_for(sessions, ScriptedBot())
    conversation_id = await telegram_conversation(sessions)
    reply = OutgoingMessage("您好，请问哪里的路灯？", sender_kind="staff", sender_name="王芳")
    async with sessions() as session:
        await session.begin()
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        await notifier.write(session, conversation, [reply])
        await session.flush()
        assert len((await session.scalars(select(TelegramOutbox))).all()) == 1  # written with the log entry
        await session.rollback()
    assert await outbox_texts(sessions) == []
    assert await staff_lines(sessions) == []


async def test_a_committed_staff_reply_is_in_the_outbox_and_sent_from_there(sessions: Sessions) -> None:
    bot = ScriptedBot()
    notifier, telegram = notifier_for(sessions, bot)
    conversation_id = await telegram_conversation(sessions)
    assert await notifier.staff_reply(conversation_id, "您好，请问哪里的路灯？", "王芳") is True
    assert await staff_lines(sessions) == ["您好，请问哪里的路灯？"]
    assert await outbox_texts(sessions) == [(CHAT, "王芳：您好，请问哪里的路灯？", "pending")]
    assert bot.sent == []  # nothing is sent from memory: a crash now would leave the row for the next start
    await telegram.flush_outbox()
    assert [m["text"] for m in bot.sent] == ["王芳：您好，请问哪里的路灯？"]
    assert await outbox_texts(sessions) == [(CHAT, "王芳：您好，请问哪里的路灯？", "sent")]


async def test_a_row_another_process_is_sending_is_not_sent_twice(sessions: Sessions) -> None:
    first_bot, second_bot = ScriptedBot(), ScriptedBot()
    notifier, first = notifier_for(sessions, first_bot)
    _, second = notifier_for(sessions, second_bot)
    conversation_id = await telegram_conversation(sessions)
    await notifier.handoff_ended(conversation_id)
    async with sessions() as session:
        [row] = (await session.scalars(select(TelegramOutbox))).all()
    assert await first._claim(row)  # first process takes it ...
    await second.flush_outbox()  # ... so the second leaves it alone
    assert second_bot.sent == []


def case_followup(sessions: Sessions) -> CaseFollowup:
    """The app's teller of case changes, with a Telegram outbox and no engine (a notice needs none)."""
    telegram = TelegramDelivery(ScriptedBot(), sessions, POLICY, sleep=Sleeps())  # type: ignore[arg-type]
    responses = Responses.load(PROJECT_ROOT / "domain.yml")
    notifier = ChannelNotifier(sessions, ConversationHub(), responses, telegram)
    return CaseFollowup(
        sessions,
        None,  # type: ignore[arg-type]
        notifier,
        responses,
        remind_after=timedelta(hours=24),
        archive_after=timedelta(hours=48),
        interval_seconds=0,
    )


async def test_notices_speak_the_citizens_words_and_carry_the_result(sessions: Sessions) -> None:
    """退回 reads as being rerouted, never as a refusal, and without its internal reason; 办结
    carries the department's result."""
    watcher = case_followup(sessions)
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "telegram", CHAT)
        case = await file_case(
            session, identity, Report(description="路灯坏了", location="A1区解放路", contact_phone="13812345678")
        )
        number = case.case_number
    steps = [("dispatch", ""), ("return", "不属于本单位职责"), ("dispatch", ""), ("accept", ""), ("start", "")]
    steps.append(("resolve", "已更换灯泡，今晚恢复照明"))
    for action, note in steps:
        async with sessions.begin() as session:
            case = await get_case(session, number)
            department = await department_named(session, "A1区住房和城乡建设局")
            await move_case(
                session, Actor.system("staff:li"), case, action, note=note, department_id=department, notices=watcher
            )
    told = [text for _chat, text, _status in await outbox_texts(sessions)]
    assert told[1] == f"您的工单 {number} 有新进展：正在重新安排负责部门。如需了解详情，请发送工单号查询。"
    assert "退回" not in "".join(told) and "不属于本单位职责" not in "".join(told)
    assert [text.split("：", 1)[1].split("（")[0] for text in told[:5]] == [
        "已转交负责部门",
        "正在重新安排负责部门。如需了解详情，请发送工单号查询。",
        "已转交负责部门",
        "负责部门已接单",
        "负责部门正在办理",
    ]
    assert told[5] == f"您的工单 {number} 已办结（A1区住房和城乡建设局）。\n办理结果：已更换灯泡，今晚恢复照明"


async def test_a_case_notice_is_in_the_outbox_only_if_the_status_change_commits(sessions: Sessions) -> None:
    watcher = case_followup(sessions)
    async with sessions.begin() as session:
        identity = await resolve_identity(session, "telegram", CHAT)
        case = await file_case(
            session, identity, Report(description="路灯坏了", location="A1区解放路", contact_phone="13812345678")
        )
        number = case.case_number
    async with sessions() as session:
        await session.begin()
        case = (await session.scalars(select(ServiceCase).where(ServiceCase.case_number == number))).one()
        await watcher.record(session, case, CaseEvent(to_status=case.status, note=""))
        await session.rollback()
    assert await outbox_texts(sessions) == []
    async with sessions.begin() as session:
        case = (await session.scalars(select(ServiceCase).where(ServiceCase.case_number == number))).one()
        notice = await watcher.record(session, case, CaseEvent(to_status=case.status, note=""))
    [(chat, text, status)] = await outbox_texts(sessions)
    assert (chat, status) == (CHAT, "pending") and number in text
    assert notice.messages[0].text == text
