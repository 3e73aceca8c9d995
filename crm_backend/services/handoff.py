"""Handing a conversation from the bot to staff, working it, and handing it back.

A conversation is ``bot`` (the bot answers), ``waiting`` (handed off, no one has claimed
it yet) or ``staff`` (a member of staff has it). While it is not ``bot`` the app keeps
the bot silent and every citizen message goes to staff. An escalation waits in the
inbox of the department that has the conversation's latest case, else in the hotline's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import InvalidInput, NotFound
from crm_backend.lifecycle import Role
from crm_backend.models import (
    ChannelIdentity,
    Citizen,
    Conversation,
    Department,
    Message,
    ServiceCase,
    StaffUser,
    utcnow,
)

BOT = "bot"
WAITING = "waiting"
STAFF = "staff"
HOTLINE_DEPARTMENT = "A-hotline"
REASONS = {
    "request": "市民要求人工",
    "fallback": "机器人连续未能理解",
    "complaint": "投诉服务",
    "rejected": "市民两次否定回答",
}


async def request_handoff(session: AsyncSession, conversation: Conversation, reason: str = "request") -> None:
    """Mark a conversation as waiting for staff and route it to a department's inbox."""
    if conversation.handoff_status != BOT:
        return
    conversation.handoff_status = WAITING
    conversation.handoff_requested_at = utcnow()
    conversation.handoff_reason = reason[:32]
    conversation.assigned_staff_id = None
    conversation.department_id = await _handoff_department(session, conversation)


async def _handoff_department(session: AsyncSession, conversation: Conversation) -> int | None:
    case_department = await session.scalar(
        select(ServiceCase.department_id)
        .where(ServiceCase.conversation_id == conversation.id, ServiceCase.department_id.is_not(None))
        .order_by(ServiceCase.id.desc())
        .limit(1)
    )
    if case_department is not None:
        return case_department
    return await session.scalar(select(Department.id).where(Department.code == HOTLINE_DEPARTMENT))


async def release_to_bot(session: AsyncSession, conversation_id: int) -> Conversation:
    """Give a conversation back to the bot.

    Raises:
        NotFound: no such conversation.
    """
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"conversation {conversation_id}")
    conversation.handoff_status = BOT
    conversation.handoff_requested_at = None
    conversation.assigned_staff_id = None
    return conversation


def close(conversation: Conversation) -> None:
    """End a handed-off conversation: the citizen's next message starts a new one, with the bot."""
    conversation.handoff_status = BOT
    conversation.handoff_requested_at = None
    conversation.assigned_staff_id = None
    conversation.closed_at = utcnow()


async def waiting_conversations(session: AsyncSession, limit: int = 100) -> list[Conversation]:
    """Conversations waiting for staff, longest-waiting first."""
    rows = await session.scalars(
        select(Conversation)
        .where(Conversation.handoff_status != BOT)
        .order_by(Conversation.handoff_requested_at)
        .limit(limit)
    )
    return list(rows.all())


def may_see_conversation(user: StaffUser, conversation: Conversation) -> bool:
    """Agents see their department's escalations; supervisors and admins see every one."""
    return Role(user.role).at_least(Role.SUPERVISOR) or conversation.department_id == user.department_id


async def visible_conversation(session: AsyncSession, user: StaffUser, conversation_id: int) -> Conversation:
    """A conversation this member of staff may see: in their inbox, or behind one of their cases.

    Raises:
        NotFound: no such conversation, or one of another department (never told apart).
    """
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound("conversation")
    if may_see_conversation(user, conversation):
        return conversation
    has_their_case = await session.scalar(
        select(ServiceCase.id)
        .where(ServiceCase.conversation_id == conversation.id, ServiceCase.department_id == user.department_id)
        .limit(1)
    )
    if has_their_case is None:
        raise NotFound("conversation")
    return conversation


@dataclass(frozen=True)
class InboxRow:
    """One escalated conversation as the inbox lists it."""

    conversation: Conversation
    citizen_id: int
    phone: str | None
    last_message: str
    last_message_at: datetime | None
    assignee: str | None
    department: str | None


async def inbox(session: AsyncSession, user: StaffUser, limit: int = 200) -> list[InboxRow]:
    """Escalated conversations this member of staff may work, longest-waiting first."""
    last_id = (
        select(func.max(Message.id))
        .where(Message.conversation_id == Conversation.id, Message.direction == "in")
        .correlate(Conversation)
        .scalar_subquery()
    )
    stmt = (
        select(Conversation, Citizen.id, Citizen.phone, Message.text, Message.created_at, StaffUser.display_name)
        .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
        .join(Citizen, Citizen.id == ChannelIdentity.citizen_id)
        .outerjoin(Message, Message.id == last_id)
        .outerjoin(StaffUser, StaffUser.id == Conversation.assigned_staff_id)
        .where(Conversation.handoff_status != BOT)
        .order_by(Conversation.handoff_requested_at, Conversation.id)
        .limit(limit)
    )
    if not Role(user.role).at_least(Role.SUPERVISOR):
        stmt = stmt.where(Conversation.department_id == user.department_id)
    departments = dict((await session.execute(select(Department.id, Department.name))).tuples().all())
    return [
        InboxRow(
            conversation=conversation,
            citizen_id=citizen_id,
            phone=phone,
            last_message=text or "",
            last_message_at=at,
            assignee=assignee,
            department=departments.get(conversation.department_id) if conversation.department_id else None,
        )
        for conversation, citizen_id, phone, text, at, assignee in (await session.execute(stmt)).tuples().all()
    ]


async def claim(session: AsyncSession, user: StaffUser, conversation_id: int) -> Conversation:
    """Take a waiting conversation (or take over one a colleague has)."""
    conversation = await visible_conversation(session, user, conversation_id)
    if conversation.handoff_status == BOT:
        raise InvalidInput("not_handed_off", "这个会话已交还机器人，无需认领")
    conversation.handoff_status = STAFF
    conversation.assigned_staff_id = user.id
    return conversation


async def assign(session: AsyncSession, user: StaffUser, conversation_id: int, colleague_id: int) -> StaffUser:
    """Give a handed-off conversation to a colleague who may see it.

    Raises:
        InvalidInput: the colleague does not exist, is inactive, or may not see it.
    """
    conversation = await visible_conversation(session, user, conversation_id)
    if conversation.handoff_status == BOT:
        raise InvalidInput("not_handed_off", "这个会话已交还机器人")
    colleague = await session.get(StaffUser, colleague_id)
    if colleague is None or not colleague.active or not may_see_conversation(colleague, conversation):
        raise InvalidInput("bad_colleague", "只能转给能处理这个会话的在岗同事")
    conversation.handoff_status = STAFF
    conversation.assigned_staff_id = colleague.id
    return colleague


async def colleagues_for(session: AsyncSession, conversation: Conversation) -> list[StaffUser]:
    """Active staff who may work this conversation (for the assign menu)."""
    users = (await session.scalars(select(StaffUser).where(StaffUser.active).order_by(StaffUser.display_name))).all()
    return [user for user in users if may_see_conversation(user, conversation)]
