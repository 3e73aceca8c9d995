"""Citizens' rights over their personal data (个人信息保护法 arts. 44–47): to know, to a copy, to erasure.

A citizen asks in the chat: 「我的个人信息」 lists what is held about them, masked (`held_data`);
a copy or an erasure is filed as a `PrivacyRequest` (`file_request`, one pending of each kind
per citizen) that staff see in the console. An admin carries it out: `export_citizen` gives
everything held as JSON; `forget_citizen` removes or pseudonymises every trace of the citizen in
the CRM and deletes their conversations from the engine's tracker store. What the dashboard
counts stays (a case keeps its category, district, department, dates and status). Each is audited.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from crm_backend.db import affected, create_engine
from crm_backend.errors import NotFound
from crm_backend.lifecycle import STATUS_LABELS, CaseStatus
from crm_backend.models import (
    CHANNEL_LABELS,
    CaseEvent,
    ChannelIdentity,
    Citizen,
    Conversation,
    KnowledgeFeedback,
    KnowledgeMiss,
    LinkCode,
    LookupAttempt,
    Message,
    Open311Request,
    PrivacyRequest,
    RateEvent,
    Satisfaction,
    ServiceCase,
    StaffLabel,
    StaffUser,
    TelegramOutbox,
    TelegramUpdate,
    utcnow,
)
from crm_backend.services import audit
from crm_backend.settings import normalise_database_url
from crm_backend.validation import mask_phone

logger = logging.getLogger(__name__)

# What replaces a removed value in a text column that must not be empty.
ERASED = "[已删除]"
COPY = "copy"
ERASURE = "erasure"
KINDS = (COPY, ERASURE)
PENDING, DONE, REFUSED = "pending", "done", "refused"
CLOSED_STATUSES = (CaseStatus.RESOLVED, CaseStatus.REVIEWED, CaseStatus.ARCHIVED)


@dataclass(frozen=True)
class HeldData:
    """What the CRM holds about one citizen, as the citizen is shown it (masked)."""

    phone: str  # masked; empty if none
    channels: list[str]  # labels of the channels they reached us through
    case_numbers: list[str]
    open_cases: int
    conversations: int
    messages: int
    notices_enabled: bool
    pending: list[str]  # kinds of requests not yet handled


async def held_data(session: AsyncSession, citizen_id: int) -> HeldData:
    """What is held about the citizen, masked, for 「我的个人信息」."""
    citizen = await session.get(Citizen, citizen_id)
    if citizen is None:
        raise NotFound("没有这位市民")
    identities = (await session.scalars(select(ChannelIdentity).where(ChannelIdentity.citizen_id == citizen_id))).all()
    cases = (
        await session.execute(
            select(ServiceCase.case_number, ServiceCase.status)
            .where(ServiceCase.citizen_id == citizen_id)
            .order_by(ServiceCase.id)
        )
    ).all()
    conversation_ids = select(Conversation.id).where(
        Conversation.identity_id.in_([identity.id for identity in identities])
    )
    conversations = await session.scalar(select(func.count()).select_from(conversation_ids.subquery()))
    messages = await session.scalar(
        select(func.count()).select_from(Message).where(Message.conversation_id.in_(conversation_ids))
    )
    pending = (
        await session.scalars(
            select(PrivacyRequest.kind)
            .where(PrivacyRequest.citizen_id == citizen_id, PrivacyRequest.status == PENDING)
            .order_by(PrivacyRequest.id)
        )
    ).all()
    return HeldData(
        phone=mask_phone(citizen.phone),
        channels=sorted({CHANNEL_LABELS.get(identity.channel, identity.channel) for identity in identities}),
        case_numbers=[number for number, _ in cases],
        open_cases=sum(1 for _, status in cases if status not in CLOSED_STATUSES),
        conversations=conversations or 0,
        messages=messages or 0,
        notices_enabled=citizen.notices_enabled,
        pending=list(dict.fromkeys(pending)),
    )


async def file_request(session: AsyncSession, identity: ChannelIdentity, kind: str) -> tuple[PrivacyRequest, bool]:
    """File a copy or erasure request from this channel identity; (the request, whether it is new).

    A citizen with a request of that kind still pending gets that one back: asking twice is
    one request.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown privacy request kind {kind!r}")
    pending = await session.scalar(
        select(PrivacyRequest)
        .where(
            PrivacyRequest.citizen_id == identity.citizen_id,
            PrivacyRequest.kind == kind,
            PrivacyRequest.status == PENDING,
        )
        .limit(1)
    )
    if pending is not None:
        return pending, False
    request = PrivacyRequest(citizen_id=identity.citizen_id, identity_id=identity.id, kind=kind, status=PENDING)
    session.add(request)
    await session.flush()
    audit.record(session, None, f"privacy.{kind}_requested", f"citizen:{identity.citizen_id}", actor_name="citizen")
    return request, True


@dataclass(frozen=True)
class RequestRow:
    """A request as the console lists it."""

    request: PrivacyRequest
    phone: str  # masked
    cases: int
    open_cases: int


async def list_requests(session: AsyncSession, *, status: str = PENDING, limit: int = 200) -> list[RequestRow]:
    """Requests of one status, oldest first (the order they must be handled in)."""
    requests = (
        await session.scalars(
            select(PrivacyRequest)
            .where(PrivacyRequest.status == status)
            .order_by(PrivacyRequest.requested_at, PrivacyRequest.id)
            .limit(limit)
        )
    ).all()
    rows = []
    for request in requests:
        citizen = await session.get(Citizen, request.citizen_id)
        statuses = (
            await session.scalars(select(ServiceCase.status).where(ServiceCase.citizen_id == request.citizen_id))
        ).all()
        rows.append(
            RequestRow(
                request=request,
                phone=mask_phone(citizen.phone if citizen else None),
                cases=len(statuses),
                open_cases=sum(1 for status in statuses if status not in CLOSED_STATUSES),
            )
        )
    return rows


async def close_request(
    session: AsyncSession, request_id: int, staff: StaffUser, *, refused_because: str | None = None, address: str = ""
) -> PrivacyRequest:
    """Mark a request done, or refused with the reason the citizen will be told."""
    request = await session.get(PrivacyRequest, request_id)
    if request is None or request.status != PENDING:
        raise NotFound("没有这个待处理的申请")
    request.status = REFUSED if refused_because else DONE
    request.note = (refused_because or "")[:500]
    request.handled_at = utcnow()
    request.handled_by_id = staff.id
    audit.record(session, staff, f"privacy.{request.kind}_{request.status}", f"request:{request.id}", address=address)
    return request


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def export_citizen(
    session: AsyncSession, citizen_id: int, staff: StaffUser | None, *, address: str = ""
) -> dict[str, Any]:
    """Everything held about the citizen, unmasked, as JSON-ready data (a copy for an access request).

    Audited: who exported whose data.
    """
    citizen = await session.get(Citizen, citizen_id)
    if citizen is None:
        raise NotFound("没有这位市民")
    identities = (await session.scalars(select(ChannelIdentity).where(ChannelIdentity.citizen_id == citizen_id))).all()
    identity_ids = [identity.id for identity in identities]
    conversations = (
        await session.scalars(
            select(Conversation).where(Conversation.identity_id.in_(identity_ids)).order_by(Conversation.id)
        )
    ).all()
    messages = (
        await session.scalars(
            select(Message)
            .where(Message.conversation_id.in_([conversation.id for conversation in conversations]))
            .order_by(Message.id)
        )
    ).all()
    by_conversation: dict[int, list[dict[str, Any]]] = {}
    for message in messages:
        by_conversation.setdefault(message.conversation_id, []).append(
            {
                "direction": message.direction,
                "sender": message.sender_kind,
                "text": message.text,
                "at": _iso(message.created_at),
            }
        )
    cases = (
        await session.scalars(select(ServiceCase).where(ServiceCase.citizen_id == citizen_id).order_by(ServiceCase.id))
    ).all()
    case_ids = [case.id for case in cases]
    events = (
        await session.scalars(select(CaseEvent).where(CaseEvent.case_id.in_(case_ids)).order_by(CaseEvent.id))
    ).all()
    ratings = (
        await session.scalars(select(Satisfaction).where(Satisfaction.case_id.in_(case_ids)).order_by(Satisfaction.id))
    ).all()
    reporters = {
        row.case_id: row.contact
        for row in (await session.scalars(select(Open311Request).where(Open311Request.case_id.in_(case_ids)))).all()
        if row.contact
    }
    requests = (
        await session.scalars(
            select(PrivacyRequest).where(PrivacyRequest.citizen_id == citizen_id).order_by(PrivacyRequest.id)
        )
    ).all()
    audit.record(session, staff, "privacy.exported", f"citizen:{citizen_id}", actor_name="cli", address=address)
    return {
        "exported_at": _iso(utcnow()),
        "citizen": {
            "phone": citizen.phone,
            "notices_enabled": citizen.notices_enabled,
            "first_contact": _iso(citizen.created_at),
            "erased_at": _iso(citizen.erased_at),
        },
        "channels": [
            {"channel": CHANNEL_LABELS.get(identity.channel, identity.channel), "since": _iso(identity.created_at)}
            for identity in identities
        ],
        "cases": [
            {
                "case_number": case.case_number,
                "description": case.description,
                "location": case.location,
                "district": case.district,
                "contact_phone": case.contact_phone,
                "category": case.category,
                "department": case.department,
                "status": STATUS_LABELS.get(CaseStatus(case.status), case.status),
                "filed_at": _iso(case.created_at),
                "due_at": _iso(case.due_at),
                # What an Open311 partner gave about the reporter (email, names, account), if any.
                **({"reporter_contact": reporters[case.id]} if case.id in reporters else {}),
                "history": [
                    {"status": event.to_status, "note": event.note, "at": _iso(event.created_at)}
                    for event in events
                    if event.case_id == case.id
                ],
                "ratings": [
                    {"rating": rating.rating, "comment": rating.comment, "at": _iso(rating.created_at)}
                    for rating in ratings
                    if rating.case_id == case.id
                ],
            }
            for case in cases
        ],
        "conversations": [
            {
                "channel": CHANNEL_LABELS.get(conversation.channel, conversation.channel),
                "started_at": _iso(conversation.started_at),
                "messages": by_conversation.get(conversation.id, []),
            }
            for conversation in conversations
        ],
        "requests": [
            {"kind": request.kind, "status": request.status, "requested_at": _iso(request.requested_at)}
            for request in requests
        ],
    }


@dataclass
class Forgotten:
    """What `forget_citizen` removed."""

    cases: int = 0
    messages: int = 0
    identities: int = 0
    tracker_events: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def forget_citizen(
    session: AsyncSession,
    citizen_id: int,
    staff: StaffUser | None,
    *,
    tracker_store_url: str | None,
    address: str = "",
) -> Forgotten:
    """Remove or pseudonymise every trace of the citizen; audited. Safe to run again.

    The engine's tracker store goes first (its conversations are found by the channel ids this
    removes), then the CRM in the caller's transaction: messages and the citizen's words in the
    knowledge base's feedback are deleted or emptied; cases keep what the dashboard counts and
    lose description, place, phone and every note; channel ids are replaced, so the same
    browser or chat starts afresh; link codes, lookup attempts, rate-limit counts and Telegram
    rows of the citizen go. A pending erasure request is marked done.
    """
    citizen = await session.get(Citizen, citizen_id)
    if citizen is None:
        raise NotFound("没有这位市民")
    now = utcnow()
    result = Forgotten()
    identities = (await session.scalars(select(ChannelIdentity).where(ChannelIdentity.citizen_id == citizen_id))).all()
    sender_ids = [identity.sender_id for identity in identities]
    if tracker_store_url is not None:
        result.tracker_events = await delete_tracker_conversations(tracker_store_url, sender_ids)

    identity_ids = [identity.id for identity in identities]
    conversation_ids = select(Conversation.id).where(Conversation.identity_id.in_(identity_ids))
    result.messages = affected(
        await session.execute(delete(Message).where(Message.conversation_id.in_(conversation_ids)))
    )
    await session.execute(
        update(KnowledgeFeedback).where(KnowledgeFeedback.conversation_id.in_(conversation_ids)).values(question="")
    )
    await session.execute(delete(KnowledgeMiss).where(KnowledgeMiss.conversation_id.in_(conversation_ids)))
    case_ids = select(ServiceCase.id).where(ServiceCase.citizen_id == citizen_id)
    result.cases = await pseudonymise_cases(session, case_ids, now)
    telegram_chats = [identity.external_id for identity in identities if identity.channel == "telegram"]
    if telegram_chats:
        await session.execute(delete(TelegramUpdate).where(TelegramUpdate.chat_id.in_(telegram_chats)))
        await session.execute(delete(TelegramOutbox).where(TelegramOutbox.chat_id.in_(telegram_chats)))
    await session.execute(delete(LookupAttempt).where(LookupAttempt.sender_key.in_(sender_ids)))
    await session.execute(delete(RateEvent).where(RateEvent.subject.in_(sender_ids)))
    await session.execute(delete(LinkCode).where(LinkCode.citizen_id == citizen_id))
    for identity in identities:
        if not identity.external_id.startswith("erased-"):
            identity.external_id = f"erased-{identity.id}"
            result.identities += 1
    citizen.phone = None
    citizen.notices_enabled = False
    citizen.erased_at = citizen.erased_at or now
    await session.execute(
        update(PrivacyRequest)
        .where(
            PrivacyRequest.citizen_id == citizen_id,
            PrivacyRequest.kind == ERASURE,
            PrivacyRequest.status == PENDING,
        )
        .values(status=DONE, handled_at=now, handled_by_id=staff.id if staff else None)
    )
    audit.record(
        session,
        staff,
        "privacy.erased",
        f"citizen:{citizen_id}",
        " ".join(f"{key}={value}" for key, value in result.as_dict().items()),
        actor_name="cli",
        address=address,
    )
    return result


async def pseudonymise_cases(session: AsyncSession, case_ids: Any, now: datetime) -> int:
    """Remove the personal data of these cases (a select of ids), staff labels' texts too; how many changed."""
    changed = affected(
        await session.execute(
            update(ServiceCase)
            .where(ServiceCase.id.in_(case_ids), ServiceCase.pseudonymised_at.is_(None))
            .values(
                description=ERASED,
                location=ERASED,
                contact_phone="",
                # A bulk UPDATE skips the model's events that keep the blind indexes in step.
                names_business=False,
                contact_phone_index=None,
                contact_phone_last4_index=None,
                location_index=None,
                pseudonymised_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    )
    await session.execute(
        update(CaseEvent)
        # Encrypted, a note compares only by length: an empty one is stored empty.
        .where(CaseEvent.case_id.in_(case_ids), func.length(CaseEvent.note) > 0)
        .values(note=ERASED)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Satisfaction)
        .where(Satisfaction.case_id.in_(case_ids), func.length(Satisfaction.comment) > 0)
        .values(comment="")
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        # An Open311 filing's reporter contact, and the place it pinned, go with the case's location.
        update(Open311Request)
        .where(Open311Request.case_id.in_(case_ids))
        .values(contact=None, lat=None, long=None, address_id=None, address_given=False)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        # A staff label keeps its categories (each model's accuracy against staff stays measurable)
        # and loses the text; retraining skips labels without text.
        update(StaffLabel)
        .where(StaffLabel.case_id.in_(case_ids), func.length(StaffLabel.text) > 0)
        .values(text="")
        .execution_options(synchronize_session=False)
    )
    return changed


async def delete_tracker_conversations(tracker_store_url: str, sender_ids: list[str]) -> int:
    """Delete these conversations from the engine's tracker store (Rasa's ``events`` table); rows deleted."""
    if not sender_ids:
        return 0
    statement = text("DELETE FROM events WHERE sender_id IN :senders").bindparams(
        bindparam("senders", value=sender_ids, expanding=True)
    )
    return await delete_tracker_events(tracker_store_url, statement)


async def delete_tracker_events(tracker_store_url: str, statement: TextClause) -> int:
    """Run a DELETE on the engine's tracker store (its own database); rows deleted, 0 if it has no
    ``events`` table yet (the engine never stored a conversation there)."""
    engine = create_engine(normalise_database_url(tracker_store_url))
    try:
        async with engine.begin() as connection:
            return affected(await connection.execute(statement))
    except SQLAlchemyError as error:
        if "events" in str(error) and ("no such table" in str(error) or "does not exist" in str(error)):
            return 0
        raise
    finally:
        await engine.dispose()
