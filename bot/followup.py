"""Telling citizens about their cases: progress notices, and the 回访 question and its loop.

After staff change a case, the citizen who filed it is told on that case's channel (unless
they said 「不要再通知我」). Once a case is 已办结 the engine is asked, through an external
event, to put the satisfaction question; what the bot says is delivered like any notice.
A background loop asks cases whose question could not be put yet (the engine was down, or
staff held the conversation), reminds once, and archives cases nobody rated as 未回访.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from bot.engine import EngineClient, EngineUnavailable
from bot.notifier import Delivery
from bot.pipeline import to_outgoing
from bot.responses import Responses
from crm_backend import periodic
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import CaseEvent, ChannelIdentity, Citizen, Conversation, ServiceCase, utcnow
from crm_backend.services import followup
from crm_backend.services.conversations import OutgoingMessage, current_conversation
from crm_backend.services.handoff import BOT
from crm_backend.shared import Leases

logger = logging.getLogger(__name__)

FOLLOWUP_INTENT = "EXTERNAL_followup"
FOLLOWUP_FORM = "followup_form"  # an unanswered question may be asked again (the reminder)


class IdentityNotifier(Protocol):
    async def write(
        self, session: AsyncSession, conversation: Conversation, messages: list[OutgoingMessage]
    ) -> Delivery: ...

    async def notify_identity(self, identity_id: int, messages: list[OutgoingMessage]) -> bool: ...

    async def push(self, delivery: Delivery, messages: list[OutgoingMessage]) -> bool: ...


@dataclass(frozen=True)
class CaseNotice:
    """A notice written with a case change, waiting to be pushed after the commit."""

    case_id: int
    delivery: Delivery
    messages: list[OutgoingMessage]
    resolved: bool


class CaseFollowup:
    """Progress notices and the 回访 loop."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: EngineClient,
        notifier: IdentityNotifier,
        responses: Responses,
        *,
        remind_after: timedelta,
        archive_after: timedelta,
        interval_seconds: float,
        leases: Leases | None = None,
    ) -> None:
        """
        Args:
            leases: with several app processes, the loop runs in the one holding its lease.
        """
        self._leases = leases
        self._sessions = sessions
        self._engine = engine
        self._notifier = notifier
        self._responses = responses
        self._remind_after = remind_after
        self._archive_after = archive_after
        self._interval = interval_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._changes: asyncio.Queue[CaseNotice] = asyncio.Queue()

    async def record(self, session: AsyncSession, case: ServiceCase, event: CaseEvent) -> CaseNotice:
        """In the transaction that changed the case: write the citizen's notice to their conversation.

        The notice says, in the citizen's words (`utter_status_*`), the status this change set;
        a 办结 notice carries the department's result (the move's note), before the 回访
        question. It is stored with the change or not at all (with its Telegram outbox rows),
        so a restart cannot lose it (a web chat shows it on the next visit, the outbox sends
        Telegram's) and two quick changes are told as they happened. `deliver` pushes it once
        the transaction has committed.
        """
        status = CaseStatus(case.status)
        identity = await session.get(ChannelIdentity, case.identity_id)
        assert identity is not None
        messages: list[OutgoingMessage] = []
        if await followup.notices_enabled(session, identity.citizen_id):
            messages.append(OutgoingMessage(self._notice_text(case, status, event), sender_kind="system"))
        conversation = await current_conversation(session, identity)
        delivery = await self._notifier.write(session, conversation, messages)
        return CaseNotice(
            case_id=case.id,
            delivery=delivery,
            messages=messages,
            resolved=status is CaseStatus.RESOLVED,
        )

    def _notice_text(self, case: ServiceCase, status: CaseStatus, event: CaseEvent) -> str:
        if status is CaseStatus.RESOLVED and event.note:
            return self._responses.text("utter_case_resolved_notice").format(
                case_number=case.case_number, department=case.department or "承办部门", result=event.note
            )
        detail = f"（{case.department}）" if case.department and status is not CaseStatus.RETURNED else ""
        return self._responses.text("utter_case_notice").format(
            case_number=case.case_number, status=self._responses.status(status), detail=detail
        )

    async def record_proof_alert(self, session: AsyncSession, case: ServiceCase) -> CaseNotice:
        """In the transaction of the failed proof that locked the case: warn its citizen.

        Written to the current conversation of the channel the case came from, like a status
        notice, and sent by `deliver`; a security warning, so sent even to a citizen who turned
        progress notices off.
        """
        identity = await session.get(ChannelIdentity, case.identity_id)
        assert identity is not None
        text = self._responses.text("utter_case_proof_alert").format(case_number=case.case_number)
        messages = [OutgoingMessage(text, sender_kind="system")]
        conversation = await current_conversation(session, identity)
        delivery = await self._notifier.write(session, conversation, messages)
        return CaseNotice(case_id=case.id, delivery=delivery, messages=messages, resolved=False)

    async def record_linked(
        self, session: AsyncSession, case: ServiceCase, lead: ServiceCase, result: str
    ) -> CaseNotice:
        """In the transaction of 「通知关联市民」: tell the citizen of a linked case the lead case's result.

        Written, like a status notice, to the current conversation of the channel the linked case
        came from (`utter_linked_case_resolved_notice`) and pushed by `deliver`; no 回访 question
        follows, since the citizen's own case has not moved. The caller has checked that the
        citizen wants notices.
        """
        identity = await session.get(ChannelIdentity, case.identity_id)
        assert identity is not None
        text = self._responses.text("utter_linked_case_resolved_notice").format(
            case_number=case.case_number,
            lead_case_number=lead.case_number,
            department=lead.department or "承办部门",
            result=result,
        )
        messages = [OutgoingMessage(text, sender_kind="system")]
        conversation = await current_conversation(session, identity)
        delivery = await self._notifier.write(session, conversation, messages)
        return CaseNotice(case_id=case.id, delivery=delivery, messages=messages, resolved=False)

    def deliver(self, notice: CaseNotice) -> None:
        """After the commit: push the notice and, for 已办结, put the 回访 question; in order, off the request."""
        self._changes.put_nowait(notice)

    async def _tell(self, notice: CaseNotice) -> None:
        if notice.messages:
            await self._notifier.push(notice.delivery, notice.messages)
        if notice.resolved:
            await self.ask(notice.case_id)

    async def ask(self, case_id: int, *, reminder: bool = False) -> bool:
        """Put the satisfaction question (or its one reminder); False if it has to wait.

        The question is marked asked, and committed, before the engine is called, by a
        conditional update that only one worker can win: with several app processes, or the
        loop and a resolution at once, a citizen is asked once. If the engine cannot put it
        (down, or the citizen is in another form) the mark is taken back and the loop asks
        later; a worker that dies between the mark and the engine leaves the case marked, so the
        citizen is asked once at most (the reminder still comes).
        """
        column = ServiceCase.followup_reminded_at if reminder else ServiceCase.followup_asked_at
        async with self._sessions.begin() as session:
            case = await session.get(ServiceCase, case_id)
            identity = await session.get(ChannelIdentity, case.identity_id) if case else None
            if case is None or identity is None or case.status != CaseStatus.RESOLVED.value:
                return False
            citizen = await session.get(Citizen, identity.citizen_id)
            if citizen is not None and not citizen.notices_enabled:
                # They asked for silence: no question; the loop archives the case as 未回访 later.
                case.followup_asked_at = case.followup_reminded_at = utcnow()
                return False
            conversation = await current_conversation(session, identity)
            if conversation.handoff_status != BOT:
                return False  # staff hold the conversation; the loop asks later
            claimed = await session.execute(
                update(ServiceCase)
                .where(
                    ServiceCase.id == case_id,
                    ServiceCase.status == CaseStatus.RESOLVED.value,
                    column.is_(None),
                )
                .values({column: utcnow()})
                .execution_options(synchronize_session=False)
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return False  # another worker is asking it
            sender_id, number = identity.sender_id, case.case_number
        entities = {"case_number": number, **({"reminder": "yes"} if reminder else {})}
        try:
            busy = await self._engine.active_form(sender_id)
            if busy is not None and busy != FOLLOWUP_FORM:
                logger.info("回访 for case %s waits: the citizen is in %s", number, busy)
                await self._unmark(case_id, column)
                return False
            raw = await self._engine.trigger_intent(sender_id, FOLLOWUP_INTENT, entities)
        except EngineUnavailable as error:
            logger.warning("回访 for case %s postponed: %s", number, error)
            await self._unmark(case_id, column)
            return False
        messages = [message for message in map(to_outgoing, raw) if message is not None]
        await self._notifier.notify_identity(identity.id, messages)
        logger.info("回访 %s for case %s", "reminder sent" if reminder else "asked", number)
        return True

    async def _unmark(self, case_id: int, column: InstrumentedAttribute[datetime | None]) -> None:
        """The question was not put after all: the loop asks it later."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(ServiceCase)
                .where(ServiceCase.id == case_id)
                .values({column: None})
                .execution_options(synchronize_session=False)
            )

    async def run_once(self) -> None:
        """One pass of the loop: ask, remind, archive."""
        async with self._sessions() as session:
            due = await followup.due_followups(
                session, utcnow(), remind_after=self._remind_after, archive_after=self._archive_after
            )
        for case in due.to_ask:
            await self.ask(case.id)
        for case in due.to_remind:
            await self.ask(case.id, reminder=True)
        if due.to_archive:
            async with self._sessions.begin() as session:
                for stale in due.to_archive:
                    current = await session.get(ServiceCase, stale.id)
                    if current is not None and current.status == CaseStatus.RESOLVED.value:
                        await followup.archive_unanswered(session, current)
                        logger.info("case %s archived as 未回访", current.case_number)

    def start(self) -> None:
        """Start telling changes, and the loop unless its interval is 0 (off)."""
        self._tasks = [asyncio.create_task(self._tell_changes(), name="case-notices")]
        if self._interval > 0:
            self._tasks.append(
                asyncio.create_task(
                    periodic.every(
                        self._interval, self.run_once, "回访 loop pass", leases=self._leases, lease="followup"
                    ),
                    name="followup-loop",
                )
            )

    async def stop(self) -> None:
        for task in self._tasks:
            await periodic.cancel(task)

    async def _tell_changes(self) -> None:
        while True:
            notice = await self._changes.get()
            try:
                await self._tell(notice)
            except Exception:  # one failed push must not stop the others (the notice is logged)
                logger.exception("notice for case id %s failed", notice.case_id)
