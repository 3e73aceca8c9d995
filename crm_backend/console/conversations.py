"""Sign-in, the inbox of escalated conversations, one conversation, and the live event stream."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from typing import Any, Protocol

from aiohttp import web

from crm_backend.console.feed import SECURITY_EVENT, LiveEvent, LiveFeed
from crm_backend.console.web import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    ConsoleBase,
    Staff,
    form,
    home_page,
    int_or_none,
    secure,
    signed_in,
    step_page,
)
from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.service import Dispatcher
from crm_backend.errors import CrmError, InvalidInput, NotFound
from crm_backend.http import client_address
from crm_backend.lifecycle import Permission, Role
from crm_backend.models import ChannelIdentity, Conversation, ServiceCase
from crm_backend.services import audit, handoff, staff
from crm_backend.services.conversations import OutgoingMessage, pending_counts
from crm_backend.services.intake import Report, file_report
from crm_backend.services.moves import Actor

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15


class ChannelNotifier(Protocol):
    async def staff_reply(self, conversation_id: int, text: str, staff_name: str) -> bool: ...

    async def handoff_ended(self, conversation_id: int, *, closed: bool = False) -> None: ...

    async def notify_identity(self, identity_id: int, messages: list[OutgoingMessage]) -> bool: ...


class SlotReader(Protocol):
    async def slots(self, sender_id: str) -> dict[str, Any]: ...


class ConversationViews(ConsoleBase):
    """Sign-in and the handoff side of the console."""

    def __init__(
        self,
        base: ConsoleBase,
        feed: LiveFeed,
        notifier: ChannelNotifier,
        engine: SlotReader,
        desk: Dispatcher,
    ) -> None:
        super().__init__(**base.share())
        self.feed = feed
        self.notifier = notifier
        self.engine = engine
        self.desk = desk

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console", self.home)
        app.router.add_get("/console/", self.home)
        app.router.add_get("/console/login", self.login_page)
        app.router.add_post("/console/login", self.login)
        app.router.add_post("/console/logout", self.logout)
        app.router.add_get("/console/inbox", self.inbox)
        app.router.add_get("/console/inbox/rows", self.inbox_rows)
        app.router.add_get("/console/events", self.events)
        app.router.add_get("/console/conversations/{conversation_id:\\d+}", self.conversation)
        app.router.add_get("/console/conversations/{conversation_id:\\d+}/messages", self.messages)
        for name in ("claim", "assign", "reply", "release", "close", "file-case", "reveal-phone"):
            app.router.add_post(f"/console/conversations/{{conversation_id:\\d+}}/{name}", self.conversation_action)

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/console/inbox")

    # --- sign-in -----------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return self.render_login(request, secrets.token_urlsafe(24))

    def render_login(
        self, request: web.Request, token: str, *, error: str | None = None, username: str = "", status: int = 200
    ) -> web.Response:
        response = self.render(request, "login.html", login_csrf=token, error=error, username=username, status=status)
        self.set_login_csrf(response, token)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        data = await form(request)
        cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie_token or not hmac.compare_digest(data.get("csrf", "").encode(), cookie_token.encode()):
            raise web.HTTPForbidden(
                text='{"error": "csrf", "message": "页面已过期，请刷新后重试"}', content_type="application/json"
            )
        username, password = data.get("username", "")[:64], data.get("password", "")[:256]
        try:
            signed = await staff.sign_in(self.sessions, username, password, client_address(request))
        except staff.LoginThrottled as error:
            return self.render_login(request, cookie_token, error=str(error), username=username, status=429)
        if signed is None:
            return self.render_login(request, cookie_token, error=staff.LOGIN_REFUSED, username=username, status=401)
        waiting = signed.session.pending_step
        response = secure(web.HTTPSeeOther(step_page(waiting) if waiting else home_page(Role(signed.user.role))))
        self.set_session_cookie(response, signed.token)
        response.del_cookie(LOGIN_CSRF_COOKIE, path="/console")
        raise response

    @signed_in(Permission.SIGN_IN)
    async def logout(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        async with self.sessions.begin() as session:
            await staff.sign_out(
                session, member.user, request.cookies.get(SESSION_COOKIE, ""), address=client_address(request)
            )
        response = web.HTTPSeeOther("/console/login")
        response.del_cookie(SESSION_COOKIE, path="/console")
        raise response

    # --- inbox -------------------------------------------------------------------

    @signed_in()
    async def inbox(self, request: web.Request) -> web.StreamResponse:
        async with self.sessions() as session:
            rows = await handoff.inbox(session, request["staff"].user)
            pending = await pending_counts(session, [row.conversation.id for row in rows])
        return self.render(request, "inbox.html", rows=rows, pending=pending)

    @signed_in()
    async def inbox_rows(self, request: web.Request) -> web.StreamResponse:
        async with self.sessions() as session:
            rows = await handoff.inbox(session, request["staff"].user)
            pending = await pending_counts(session, [row.conversation.id for row in rows])
        return self.render(request, "inbox_rows.html", fragment=True, rows=rows, pending=pending)

    @signed_in()
    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: what this member of staff may see, as it happens."""
        member: Staff = request["staff"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        response.headers["X-Accel-Buffering"] = "no"
        await response.prepare(request)
        queue = self.feed.subscribe()
        try:
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if event is None:
                    break
                if not _may_see(member, event):
                    continue
                body = json.dumps({"kind": event.kind, "conversation_id": event.conversation_id})
                await response.write(f"event: {event.kind}\ndata: {body}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.feed.unsubscribe(queue)
        return response

    # --- one conversation ----------------------------------------------------------

    @signed_in()
    async def conversation(self, request: web.Request) -> web.StreamResponse:
        return await self._conversation_page(request)

    async def _conversation_page(
        self,
        request: web.Request,
        *,
        error: str | None = None,
        notice: str | None = None,
        status: int = 200,
        reveal_phone: bool = False,
    ) -> web.StreamResponse:
        member: Staff = request["staff"]
        conversation_id = int(request.match_info["conversation_id"])
        async with self.sessions.begin() as session:
            detail = await handoff.conversation_detail(
                session, member.user, conversation_id, reveal_phone=reveal_phone, address=client_address(request)
            )
        slots, engine_down = await self._slots(detail.identity)
        return self.render(
            request,
            "conversation.html",
            status=status,
            error=error,
            notice=notice,
            conversation=detail.conversation,
            citizen=detail.citizen,
            channels=detail.channels,
            messages=detail.messages,
            transcript_masked=detail.phones_masked,
            cases=detail.cases,
            history=detail.history,
            colleagues=detail.colleagues,
            assignee=detail.assignee,
            draft=handoff.draft_case(slots, reveal_phone=reveal_phone),
            engine_down=engine_down,
            reasons=handoff.REASONS,
            districts=self.desk.districts,
            categories=CATEGORIES,
            case_types=CASE_TYPES,
        )

    async def _slots(self, identity: ChannelIdentity) -> tuple[dict[str, Any], bool]:
        """What the bot collected from this citizen; ({}, True) if the engine does not answer."""
        try:
            return await self.engine.slots(identity.sender_id), False
        except Exception as problem:  # the draft is a convenience: staff can type it in
            logger.info("no slots for %s: %s", identity.sender_id, problem)
            return {}, True

    @signed_in()
    async def messages(self, request: web.Request) -> web.StreamResponse:
        """The conversation's messages after a given id, as HTML rows (the live transcript)."""
        member: Staff = request["staff"]
        after = int_or_none(request.query.get("after")) or 0
        async with self.sessions() as session:
            rows = await handoff.messages_after(session, member.user, int(request.match_info["conversation_id"]), after)
        return self.render(request, "message_rows.html", fragment=True, messages=rows)

    @signed_in()
    async def conversation_action(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        conversation_id = int(request.match_info["conversation_id"])
        name = request.path.rsplit("/", 1)[1]
        if name == "reveal-phone":
            return await self._conversation_page(request, reveal_phone=True)
        data = await form(request)
        address = client_address(request)
        try:
            notice = await self._act(name, member, conversation_id, data, address)
        except (InvalidInput, CrmError) as problem:
            if isinstance(problem, NotFound):
                raise
            return await self._conversation_page(request, error=str(problem), status=422)
        if name == "close":
            self.done(request, "/console/inbox", notice)
        if request.headers.get("X-Requested-With") == "fetch":
            return secure(web.json_response({"ok": True, "notice": notice}))
        self.done(request, f"/console/conversations/{conversation_id}", notice)

    async def _act(self, name: str, member: Staff, conversation_id: int, data: dict[str, str], address: str) -> str:
        if name == "reply":
            text = data.get("text", "").strip()
            async with self.sessions.begin() as session:
                conversation = await handoff.reply(session, member.user, conversation_id, text, address=address)
                department_id = conversation.department_id
            live = await self.notifier.staff_reply(conversation_id, text, member.user.display_name)
            self.feed.publish(LiveEvent("reply", conversation_id, department_id))
            return "已发送" if live else "已发送；市民当前不在线，下次打开对话时会看到"
        if name == "file-case":
            if not data.get("contact_phone", "").strip():  # the page shows it masked: file the one the bot has
                async with self.sessions() as session:
                    identity = await handoff.visible_identity(session, member.user, conversation_id)
                slots, _ = await self._slots(identity)
                data = {**data, "contact_phone": handoff.collected_phone(slots)}
            async with self.sessions.begin() as session:
                conversation = await handoff.visible_conversation(session, member.user, conversation_id)
                case = await self._file_draft(session, member, conversation, data)
                target = f"case:{case.case_number}"
                audit.record(session, member.user, "conversation.file-case", target, address=address)
                department_id = conversation.department_id
            self.feed.publish(LiveEvent("filed", conversation_id, department_id))
            return f"已登记工单 {case.case_number}"
        async with self.sessions.begin() as session:
            conversation, colleague = await handoff.operate(
                session,
                member.user,
                conversation_id,
                name,
                colleague_id=int_or_none(data.get("colleague_id")),
                address=address,
            )
            department_id = conversation.department_id
        if name in ("release", "close"):
            await self.notifier.handoff_ended(conversation_id, closed=name == "close")
        notice, kind = {
            "claim": ("已认领这个会话", "claimed"),
            "assign": (f"已转给 {colleague.display_name if colleague else ''}", "claimed"),
            "release": ("已交还机器人", "released"),
            "close": ("会话已结束", "closed"),
        }[name]
        self.feed.publish(LiveEvent(kind, conversation_id, department_id))
        return notice

    async def _file_draft(
        self, session: Any, member: Staff, conversation: Conversation, data: dict[str, str]
    ) -> ServiceCase:
        description = data.get("description", "").strip()
        location = data.get("location", "").strip()
        if not description or not location:
            raise InvalidInput("incomplete", "登记工单需要问题描述和地点")
        category = data.get("category") or None
        if category is not None and category not in CATEGORIES:
            raise InvalidInput("bad_category", "分类无效")
        district = data.get("district") or None
        identity = await session.get(ChannelIdentity, conversation.identity_id)
        preview = await self.desk.preview(
            session,
            description=description,
            location_text=location,
            district_hint=district,
            category_override=category,
            case_type_override=data.get("case_type") or None,
        )
        report = Report(
            description=description,
            location=location,
            contact_phone=data.get("contact_phone", ""),
            district=district or preview.location.district,
        )
        return await file_report(
            session,
            self.desk,
            identity,
            report,
            preview,
            conversation_id=conversation.id,
            actor=Actor.staff(member.user),
        )


def _may_see(member: Staff, event: LiveEvent) -> bool:
    if member.may(Permission.SUPERVISE):
        return True
    return event.kind != SECURITY_EVENT and event.department_id == member.user.department_id
