"""Handing a conversation from the bot to staff, working it, and handing it back.

A conversation is ``bot`` (the bot answers), ``waiting`` (handed off, no one has claimed
it yet) or ``staff`` (a member of staff has it). While it is not ``bot`` the app keeps
the bot silent and every citizen message goes to staff. An escalation waits in the
inbox of the department that has the conversation's latest case, else in the hotline's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.errors import InvalidInput, NotFound
from crm_backend.lifecycle import Permission, Role
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
from crm_backend.services import audit
from crm_backend.services.casework import case_scope
from crm_backend.validation import mask_phone, mask_phones

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
MAX_REPLY_CHARS = 4000
RELATED_LIMIT = 20  # the citizen's other cases and conversations shown beside one
# The report form's slots, as staff read them in the draft case.
FORM_SLOTS = {
    "description": "问题描述",
    "location": "地点",
    "district": "区县",
    "contact_phone": "联系电话",
    "category_choice": "市民选择的分类",
    "case_number": "查询的工单号",
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
    return Role(user.role).may(Permission.SUPERVISE) or conversation.department_id == user.department_id


def conversation_scope(user: StaffUser) -> ColumnElement[bool]:
    """The conversations a member of staff may open, as a WHERE clause (`visible_conversation`'s rule):
    agents those in their department's inbox or behind one of their department's cases."""
    if Role(user.role).may(Permission.SUPERVISE):
        return true()
    behind_their_case = select(ServiceCase.conversation_id).where(ServiceCase.department_id == user.department_id)
    return or_(Conversation.department_id == user.department_id, Conversation.id.in_(behind_their_case))


async def visible_conversation(session: AsyncSession, user: StaffUser, conversation_id: int) -> Conversation:
    """A conversation this member of staff may see: in their inbox, or behind one of their cases.

    Raises:
        NotFound: no such conversation, or one of another department (never told apart).
    """
    conversation = await session.scalar(
        select(Conversation).where(Conversation.id == conversation_id, conversation_scope(user))
    )
    if conversation is None:
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
    if not Role(user.role).may(Permission.SUPERVISE):
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


@dataclass(frozen=True)
class TranscriptMessage:
    """A message as the console's transcript shows it: mobile numbers masked unless staff asked to
    see them whole (an audited view). A copy: the stored message is never changed."""

    id: int
    conversation_id: int
    channel: str
    direction: str
    sender_kind: str
    sender_name: str | None
    text: str
    original_length: int
    truncated: bool
    buttons: list[dict[str, str]] | None
    attachment: dict[str, Any] | None
    engine_pending_since: datetime | None
    created_at: datetime
    masked: bool  # a phone number in it is shown masked

    @classmethod
    def of(cls, message: Message, *, reveal_phone: bool = False) -> TranscriptMessage:
        """The message as shown, its phone numbers whole only with ``reveal_phone``."""
        text = message.text if reveal_phone else mask_phones(message.text)
        return cls(
            id=message.id,
            conversation_id=message.conversation_id,
            channel=message.channel,
            direction=message.direction,
            sender_kind=message.sender_kind,
            sender_name=message.sender_name,
            text=text,
            original_length=message.original_length,
            truncated=message.truncated,
            buttons=message.buttons,
            attachment=message.attachment,
            engine_pending_since=message.engine_pending_since,
            created_at=message.created_at,
            masked=text != message.text,
        )


@dataclass(frozen=True)
class ConversationDetail:
    """One conversation as staff work it, with what they may see of the citizen behind it."""

    conversation: Conversation
    identity: ChannelIdentity
    citizen: Citizen | None
    messages: list[TranscriptMessage]  # phone numbers masked unless revealed
    channels: list[ChannelIdentity]
    cases: list[ServiceCase]  # the citizen's latest, of those this member of staff may see
    history: list[Conversation]  # the citizen's other conversations, latest first
    colleagues: list[StaffUser]
    assignee: StaffUser | None

    @property
    def phones_masked(self) -> bool:
        """Whether the transcript shows a phone number masked (staff may reveal it, audited)."""
        return any(message.masked for message in self.messages)


async def conversation_detail(
    session: AsyncSession, user: StaffUser, conversation_id: int, *, reveal_phone: bool = False, address: str = ""
) -> ConversationDetail:
    """A conversation for its page, the view written to the audit log.

    Agents see only their department's cases of the citizen (`casework.case_scope`) and only
    the citizen's other conversations they may open (`conversation_scope`).
    The transcript's phone numbers are masked (`TranscriptMessage`). With ``reveal_phone`` the
    page will show them and the phone the bot collected whole, and the audit row says so
    (``conversation.view_phone``), as the case page's reveal does.

    Raises:
        NotFound: no such conversation, or one this member of staff may not see.
    """
    conversation = await visible_conversation(session, user, conversation_id)
    identity = await session.get(ChannelIdentity, conversation.identity_id)
    assert identity is not None
    citizen_id = identity.citizen_id
    messages = await session.scalars(
        select(Message).where(Message.conversation_id == conversation.id).order_by(Message.id)
    )
    channels = await session.scalars(select(ChannelIdentity).where(ChannelIdentity.citizen_id == citizen_id))
    cases = await session.scalars(
        select(ServiceCase)
        .where(ServiceCase.citizen_id == citizen_id, case_scope(user))
        .order_by(ServiceCase.id.desc())
        .limit(RELATED_LIMIT)
    )
    history = await session.scalars(
        select(Conversation)
        .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
        .where(ChannelIdentity.citizen_id == citizen_id, Conversation.id != conversation.id, conversation_scope(user))
        .order_by(Conversation.id.desc())
        .limit(RELATED_LIMIT)
    )
    detail = ConversationDetail(
        conversation=conversation,
        identity=identity,
        citizen=await session.get(Citizen, citizen_id),
        messages=[TranscriptMessage.of(message, reveal_phone=reveal_phone) for message in messages.all()],
        channels=list(channels.all()),
        cases=list(cases.all()),
        history=list(history.all()),
        colleagues=await colleagues_for(session, conversation),
        assignee=(
            await session.get(StaffUser, conversation.assigned_staff_id) if conversation.assigned_staff_id else None
        ),
    )
    action = "conversation.view_phone" if reveal_phone else "conversation.view"
    audit.record(session, user, action, conversation_target(conversation.id), address=address)
    return detail


async def visible_identity(session: AsyncSession, user: StaffUser, conversation_id: int) -> ChannelIdentity:
    """The channel identity behind a conversation this member of staff may see.

    Raises:
        NotFound: no such conversation, or one this member of staff may not see.
    """
    conversation = await visible_conversation(session, user, conversation_id)
    identity = await session.get(ChannelIdentity, conversation.identity_id)
    assert identity is not None
    return identity


async def messages_after(
    session: AsyncSession, user: StaffUser, conversation_id: int, after_id: int, limit: int = 200
) -> list[TranscriptMessage]:
    """A visible conversation's messages after a given id, oldest first (the live transcript),
    phone numbers masked.

    Raises:
        NotFound: no such conversation, or one this member of staff may not see.
    """
    conversation = await visible_conversation(session, user, conversation_id)
    rows = await session.scalars(
        select(Message)
        .where(Message.conversation_id == conversation.id, Message.id > after_id)
        .order_by(Message.id)
        .limit(limit)
    )
    return [TranscriptMessage.of(message) for message in rows.all()]


@dataclass(frozen=True)
class DraftCase:
    """What the bot collected, as the console's draft case shows it.

    ``contact_phone`` is whole only when staff asked to see it (an audited view);
    ``masked_phone`` is what the page shows otherwise. Left blank in the form, the
    phone the bot collected is the one filed (`collected_phone`).
    """

    description: str
    location: str
    district: str
    contact_phone: str
    masked_phone: str
    collected: dict[str, str]  # label → value, the phone masked


def draft_case(slots: dict[str, Any], *, reveal_phone: bool = False) -> DraftCase:
    """The draft case from the dialogue engine's slots."""
    phone = collected_phone(slots)
    collected = {
        label: mask_phone(str(slots[name])) if name == "contact_phone" else str(slots[name])
        for name, label in FORM_SLOTS.items()
        if slots.get(name)
    }
    return DraftCase(
        description=str(slots.get("description") or ""),
        location=str(slots.get("location") or ""),
        district=str(slots.get("district") or ""),
        contact_phone=phone if reveal_phone else "",
        masked_phone=mask_phone(phone),
        collected=collected,
    )


def collected_phone(slots: dict[str, Any]) -> str:
    """The contact phone the bot collected, if any."""
    return str(slots.get("contact_phone") or "").strip()


def conversation_target(conversation_id: int) -> str:
    """How the audit log names a conversation."""
    return f"conversation:{conversation_id}"


async def reply(
    session: AsyncSession, user: StaffUser, conversation_id: int, text: str, *, address: str = ""
) -> Conversation:
    """Check a staff reply and take the conversation for its author, audited.

    Raises:
        InvalidInput: an empty or too long reply, or a conversation back with the bot.
        NotFound: no such conversation, or one this member of staff may not see.
    """
    if not text.strip() or len(text) > MAX_REPLY_CHARS:
        raise InvalidInput("bad_text", f"回复内容为 1-{MAX_REPLY_CHARS} 个字符")
    conversation = await claim(session, user, conversation_id)
    audit.record(session, user, "conversation.reply", conversation_target(conversation_id), address=address)
    return conversation


async def operate(
    session: AsyncSession,
    user: StaffUser,
    conversation_id: int,
    operation: str,
    *,
    colleague_id: int | None = None,
    address: str = "",
) -> tuple[Conversation, StaffUser | None]:
    """Claim, assign (to ``colleague_id``), release to the bot or close a conversation, audited;
    the conversation and, for an assignment, the colleague.

    Raises:
        InvalidInput: the operation is not possible now (see `claim`, `assign`).
        NotFound: no such conversation or operation, or a conversation this member of staff may not see.
    """
    colleague: StaffUser | None = None
    if operation == "claim":
        conversation = await claim(session, user, conversation_id)
    elif operation == "assign":
        if colleague_id is None:
            raise InvalidInput("bad_colleague", "请选择同事")
        colleague = await assign(session, user, conversation_id, colleague_id)
        conversation = await visible_conversation(session, user, conversation_id)
    elif operation == "release":
        await visible_conversation(session, user, conversation_id)
        conversation = await release_to_bot(session, conversation_id)
    elif operation == "close":
        conversation = await visible_conversation(session, user, conversation_id)
        close(conversation)
    else:
        raise NotFound("operation")
    audit.record(session, user, f"conversation.{operation}", conversation_target(conversation_id), address=address)
    return conversation, colleague
