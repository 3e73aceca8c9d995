"""The CRM's HTTP API under /api/v1, for staff tools and integrations.

Every route needs ``Authorization: Bearer <key>`` with the key of an API client (made by an
admin in the console or with ``python -m crm_backend create-api-client``). A read client may
only read; changes need a write client. Every read of personal data and every change is
audited under the client's name (``api:<name>``), which is also the actor of the case
history. Phone numbers are masked: nothing here needs them whole.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.console.feed import LiveEvent, LiveFeed
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.http import client_address, json_response, read_json_object
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import CaseEvent, Conversation, Message, RoutingDecision, ServiceCase
from crm_backend.services import api_clients, audit, cases, handoff, staff_labels
from crm_backend.services.api_clients import ApiCaller, ApiScope
from crm_backend.services.conversations import conversation_history
from crm_backend.services.moves import Actor, CaseNotices, move_case
from crm_backend.services.stats import collect_stats
from crm_backend.validation import mask_phone

MAX_REPLY_CHARS = 4000
AUDIT_DETAIL_CHARS = 1900  # an audit row's detail holds 2000; case lists are split below that


class ConversationNotifier(Protocol):
    """The channel side, which the API tells about staff replies and hand-backs."""

    async def staff_reply(self, conversation_id: int, text: str, staff_name: str) -> bool:
        """Log a staff reply and deliver it; True if the citizen was connected to see it live."""

    async def handoff_ended(self, conversation_id: int, *, closed: bool = False) -> None:
        """Tell the citizen the bot is back."""


def routing_json(decision: RoutingDecision) -> dict[str, Any]:
    return {
        "category": decision.category,
        "confidence": decision.confidence,
        "probabilities": decision.probabilities,
        "suggestions": decision.suggestions,
        "model_version": decision.model_version,
        "rule": decision.rule,
        "district": decision.district,
        "queued": decision.queued,
        "urgent": decision.urgent,
        "due_at": decision.due_at.isoformat() if decision.due_at else None,
        "at": decision.created_at.isoformat(),
    }


def case_json(case: ServiceCase, *, events: list[CaseEvent] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "case_number": case.case_number,
        "status": case.status,
        "status_label": CaseStatus(case.status).label,
        "description": case.description,
        "location": case.location,
        "district": case.district,
        "category": case.category,
        "case_type": case.case_type,
        "department": case.department,
        "contact_phone": mask_phone(case.contact_phone),
        "urgent": case.urgent,
        "due_at": case.due_at.isoformat() if case.due_at else None,
        "created_at": case.created_at.isoformat(),
        "updated_at": case.updated_at.isoformat(),
    }
    if events is not None:
        body["events"] = [
            {
                "from": event.from_status,
                "to": event.to_status,
                "note": event.note,
                "actor": event.actor,
                "at": event.created_at.isoformat(),
            }
            for event in events
        ]
    return body


def message_json(message: Message) -> dict[str, Any]:
    return {
        "direction": message.direction,
        "sender_kind": message.sender_kind,
        "sender_name": message.sender_name,
        "text": message.text,
        "truncated": message.truncated,
        "buttons": message.buttons or [],
        "at": message.created_at.isoformat(),
    }


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise InvalidInput("bad_parameter", f"{name} must be an integer") from error


def _path_id(request: web.Request) -> int:
    try:
        return int(request.match_info["conversation_id"])
    except ValueError as error:
        raise NotFound("conversation") from error


def bearer_key(request: web.Request) -> str:
    """The key in ``Authorization: Bearer <key>``; empty if there is none."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


@dataclass(frozen=True)
class TransitionRequest:
    """A parsed request to move a case: the operation, a note, and a department code and the
    category the caller decided (kept as a staff label) for 派单/改派."""

    action: str
    note: str
    department: str | None
    category: str | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TransitionRequest:
        """Raises InvalidInput for wrong types, a raw status (``to``) or an ``actor``: the client is the actor."""
        if "actor" in data:
            raise InvalidInput("actor_not_accepted", "actor is the API client's name and cannot be set")
        if "to" in data:
            raise InvalidInput("bad_body", "name an operation in action (e.g. accept), not a status")
        action, note, department = data.get("action"), data.get("note", ""), data.get("department")
        if not isinstance(action, str) or not isinstance(note, str):
            raise InvalidInput("bad_body", "action and note must be strings")
        if department is not None and not isinstance(department, str):
            raise InvalidInput("bad_body", "department must be a department code")
        category = data.get("category")
        if category is not None and not isinstance(category, str):
            raise InvalidInput("bad_body", "category must be a category name")
        return cls(action, note, department, category)


def _chunks(words: list[str], limit: int) -> list[str]:
    """Space-joined runs of `words`, each at most `limit` characters (an empty list gives none)."""
    runs: list[str] = []
    for word in words:
        if runs and len(runs[-1]) + 1 + len(word) <= limit:
            runs[-1] += " " + word
        else:
            runs.append(word)
    return runs


ApiHandler = Callable[["CrmApi", web.Request, ApiCaller], Awaitable[web.StreamResponse]]


def authenticated(
    scope: ApiScope,
) -> Callable[[ApiHandler], Callable[[CrmApi, web.Request], Awaitable[web.StreamResponse]]]:
    """Guard an API handler: a live client's key, with a scope that covers `scope`.

    The handler gets the caller as its third argument.

    Raises:
        Unauthenticated: no key, an unknown key or a revoked one (401).
        Forbidden: a read client on a write route (403).
    """

    def decorate(handler: ApiHandler) -> Callable[[CrmApi, web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def guarded(api: CrmApi, request: web.Request) -> web.StreamResponse:
            async with api.sessions.begin() as session:
                caller = await api_clients.authenticate(session, bearer_key(request))
            caller.require(scope)
            return await handler(api, request, caller)

        return guarded

    return decorate


class CrmApi:
    """Routes of /api/v1."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        notifier: ConversationNotifier,
        feed: LiveFeed | None = None,
        watcher: CaseNotices | None = None,
    ) -> None:
        self.sessions = sessions
        self._notifier = notifier
        self._feed = feed  # open consoles hear about replies and hand-backs made through the API
        self._watcher = watcher  # citizens hear about status changes made through the API

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/stats", self.stats)
        app.router.add_get("/api/v1/cases", self.list_cases)
        app.router.add_get("/api/v1/cases/{case_number}", self.get_case)
        app.router.add_post("/api/v1/cases/{case_number}/transitions", self.transition)
        app.router.add_post("/api/v1/cases/{case_number}/category", self.correct_category)
        app.router.add_get("/api/v1/conversations", self.waiting_conversations)
        app.router.add_get("/api/v1/conversations/{conversation_id}/messages", self.messages)
        app.router.add_post("/api/v1/conversations/{conversation_id}/replies", self.reply)
        app.router.add_post("/api/v1/conversations/{conversation_id}/release", self.release)

    @authenticated(ApiScope.READ)
    async def stats(self, request: web.Request, caller: ApiCaller) -> web.Response:
        async with self.sessions() as session:
            return json_response(await collect_stats(session))

    @authenticated(ApiScope.READ)
    async def list_cases(self, request: web.Request, caller: ApiCaller) -> web.Response:
        async with self.sessions.begin() as session:
            rows = await cases.list_cases(
                session,
                status=request.query.get("status"),
                case_type=request.query.get("case_type"),
                limit=_int_param(request, "limit", 50) or 50,
                before_id=_int_param(request, "before_id", None),
            )
            numbers = [case.case_number for case in rows]
            for run in _chunks(numbers, AUDIT_DETAIL_CHARS):  # descriptions are personal data
                audit.record(
                    session,
                    None,
                    "case.list",
                    request.query.get("status", ""),
                    run,
                    address=client_address(request),
                    actor_name=caller.actor,
                )
        return json_response({"cases": [case_json(case) for case in rows]})

    @authenticated(ApiScope.READ)
    async def get_case(self, request: web.Request, caller: ApiCaller) -> web.Response:
        async with self.sessions.begin() as session:
            case = await cases.get_case(session, request.match_info["case_number"], with_events=True)
            body = case_json(case, events=list(case.events))
            body["routing"] = [routing_json(decision) for decision in await cases.routing_decisions(session, case)]
            body["duplicate_of"] = await cases.case_number_of(session, case.duplicate_of_id)
            audit.record(
                session, None, "case.view", case.case_number, address=client_address(request), actor_name=caller.actor
            )
        return json_response(body)

    @authenticated(ApiScope.WRITE)
    async def transition(self, request: web.Request, caller: ApiCaller) -> web.Response:
        change = TransitionRequest.parse(await read_json_object(request))
        actor = Actor.api_client(caller.name, client_address(request))
        async with self.sessions.begin() as session:
            case = await cases.get_case(session, request.match_info["case_number"])
            department_id = await cases.department_id_by_code(session, change.department) if change.department else None
            move = await move_case(
                session,
                actor,
                case,
                change.action,
                note=change.note,
                department_id=department_id,
                notices=self._watcher,
                category=change.category,
            )
        if self._watcher is not None:
            self._watcher.deliver(move.notice)
        return json_response(case_json(move.case))

    @authenticated(ApiScope.WRITE)
    async def correct_category(self, request: web.Request, caller: ApiCaller) -> web.Response:
        """更正分类: ``{"category": "环境保护"}``; the case as it now stands."""
        category = (await read_json_object(request)).get("category")
        if not isinstance(category, str):
            raise InvalidInput("bad_body", "category must be a category name")
        actor = Actor.api_client(caller.name, client_address(request))
        async with self.sessions.begin() as session:
            case = await cases.get_case(session, request.match_info["case_number"])
            await staff_labels.correct_category(session, actor, case, category)
        return json_response(case_json(case))

    @authenticated(ApiScope.READ)
    async def waiting_conversations(self, request: web.Request, caller: ApiCaller) -> web.Response:
        async with self.sessions() as session:
            rows = await handoff.waiting_conversations(session)
        return json_response(
            {
                "conversations": [
                    {
                        "id": conversation.id,
                        "channel": conversation.channel,
                        "handoff_status": conversation.handoff_status,
                        "handoff_requested_at": conversation.handoff_requested_at.isoformat()
                        if conversation.handoff_requested_at
                        else None,
                    }
                    for conversation in rows
                ]
            }
        )

    @authenticated(ApiScope.READ)
    async def messages(self, request: web.Request, caller: ApiCaller) -> web.Response:
        async with self.sessions.begin() as session:
            conversation = await session.get(Conversation, _path_id(request))
            if conversation is None:
                raise NotFound("conversation")
            history = await conversation_history(session, conversation)
            audit.record(
                session,
                None,
                "conversation.view",
                f"conversation:{conversation.id}",
                address=client_address(request),
                actor_name=caller.actor,
            )
        return json_response({"messages": [message_json(message) for message in history]})

    @authenticated(ApiScope.WRITE)
    async def reply(self, request: web.Request, caller: ApiCaller) -> web.Response:
        data = await read_json_object(request)
        text, staff_name = data.get("text"), data.get("staff_name")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_REPLY_CHARS:
            raise InvalidInput("bad_text", f"text must be a non-empty string of at most {MAX_REPLY_CHARS} characters")
        if not isinstance(staff_name, str) or not 0 < len(staff_name) <= 32:
            raise InvalidInput("bad_staff_name", "staff_name must be a display name of 1-32 characters")
        conversation_id = _path_id(request)
        delivered = await self._notifier.staff_reply(conversation_id, text, staff_name)
        # The notifier logs the reply in its own transaction; the audit row follows it.
        await self._audit(request, caller, "conversation.reply", conversation_id, f"as {staff_name}")
        await self._tell_consoles("reply", conversation_id)
        return json_response({"delivered_live": delivered}, status=201)

    @authenticated(ApiScope.WRITE)
    async def release(self, request: web.Request, caller: ApiCaller) -> web.Response:
        async with self.sessions.begin() as session:
            conversation = await handoff.release_to_bot(session, _path_id(request))
            audit.record(
                session,
                None,
                "conversation.release",
                f"conversation:{conversation.id}",
                address=client_address(request),
                actor_name=caller.actor,
            )
        await self._notifier.handoff_ended(conversation.id)
        await self._tell_consoles("released", conversation.id)
        return json_response({"id": conversation.id, "handoff_status": conversation.handoff_status})

    async def _audit(
        self, request: web.Request, caller: ApiCaller, action: str, conversation_id: int, detail: str = ""
    ) -> None:
        async with self.sessions.begin() as session:
            audit.record(
                session,
                None,
                action,
                f"conversation:{conversation_id}",
                detail,
                address=client_address(request),
                actor_name=caller.actor,
            )

    async def _tell_consoles(self, kind: str, conversation_id: int) -> None:
        if self._feed is None:
            return
        async with self.sessions() as session:
            conversation = await session.get(Conversation, conversation_id)
        if conversation is not None:
            self._feed.publish(LiveEvent(kind, conversation_id, conversation.department_id))
