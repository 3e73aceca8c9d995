"""Sign-in, the inbox of escalated conversations, one conversation, and the live event stream."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from typing import Any, Protocol

from aiohttp import web
from sqlalchemy import select

from crm_backend.console.feed import LiveEvent, LiveFeed
from crm_backend.console.web import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    ConsoleBase,
    Staff,
    client_address,
    form,
    int_or_none,
    secure,
    signed_in,
)
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.service import Dispatcher
from crm_backend.errors import CrmError, InvalidInput, NotFound
from crm_backend.lifecycle import Role
from crm_backend.models import ChannelIdentity, Citizen, Conversation, Message, ServiceCase, StaffUser
from crm_backend.services import audit, handoff, staff
from crm_backend.services.conversations import OutgoingMessage, pending_counts
from crm_backend.services.intake import Report, file_case

logger = logging.getLogger(__name__)

MAX_REPLY_CHARS = 4000
HEARTBEAT_SECONDS = 15
# The report form's slots, as staff read them in the draft case.
FORM_SLOTS = {
    "description": "问题描述",
    "location": "地点",
    "district": "区县",
    "contact_phone": "联系电话",
    "category_choice": "市民选择的分类",
    "case_number": "查询的工单号",
}


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
        for name in ("claim", "assign", "reply", "release", "close", "file-case"):
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
        address = client_address(request)
        try:
            async with self.sessions.begin() as session:
                user = await staff.authenticate(session, username, password, address)
                if user is None:
                    audit.record(session, None, "login.failed", username, address=address, actor_name=username)
                else:
                    signed = await staff.open_session(session, user)
                    audit.record(session, user, "login", address=address)
        except staff.LoginThrottled as error:
            return self.render_login(request, cookie_token, error=str(error), username=username, status=429)
        if user is None:
            return self.render_login(request, cookie_token, error=staff.LOGIN_REFUSED, username=username, status=401)
        response = secure(web.HTTPSeeOther("/console/inbox"))
        self.set_session_cookie(response, signed.token)
        response.del_cookie(LOGIN_CSRF_COOKIE, path="/console")
        raise response

    @signed_in()
    async def logout(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        async with self.sessions.begin() as session:
            await staff.close_session(session, request.cookies.get(SESSION_COOKIE, ""))
            audit.record(session, member.user, "logout", address=client_address(request))
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
        self, request: web.Request, *, error: str | None = None, notice: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        member: Staff = request["staff"]
        conversation_id = int(request.match_info["conversation_id"])
        async with self.sessions.begin() as session:
            conversation = await handoff.visible_conversation(session, member.user, conversation_id)
            identity = await session.get(ChannelIdentity, conversation.identity_id)
            assert identity is not None
            citizen = await session.get(Citizen, identity.citizen_id)
            messages = list(
                (
                    await session.scalars(
                        select(Message).where(Message.conversation_id == conversation.id).order_by(Message.id)
                    )
                ).all()
            )
            channels = list(
                await session.scalars(select(ChannelIdentity).where(ChannelIdentity.citizen_id == identity.citizen_id))
            )
            cases = list(
                (
                    await session.scalars(
                        select(ServiceCase)
                        .where(ServiceCase.citizen_id == identity.citizen_id)
                        .order_by(ServiceCase.id.desc())
                        .limit(20)
                    )
                ).all()
            )
            history = list(
                (
                    await session.scalars(
                        select(Conversation)
                        .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
                        .where(ChannelIdentity.citizen_id == identity.citizen_id, Conversation.id != conversation.id)
                        .order_by(Conversation.id.desc())
                        .limit(20)
                    )
                ).all()
            )
            colleagues = await handoff.colleagues_for(session, conversation)
            assignee = (
                await session.get(StaffUser, conversation.assigned_staff_id) if conversation.assigned_staff_id else None
            )
            audit.record(
                session,
                member.user,
                "conversation.view",
                f"conversation:{conversation.id}",
                address=client_address(request),
            )
        slots: dict[str, Any] = {}
        engine_down = False
        try:
            slots = await self.engine.slots(identity.sender_id)
        except Exception as problem:  # the draft is a convenience: staff can type it in
            logger.info("no slots for conversation %s: %s", conversation.id, problem)
            engine_down = True
        collected = {label: str(slots[name]) for name, label in FORM_SLOTS.items() if slots.get(name)}
        draft = {name: str(slots.get(name) or "") for name in ("description", "location", "district", "contact_phone")}
        return self.render(
            request,
            "conversation.html",
            status=status,
            error=error,
            notice=notice,
            conversation=conversation,
            citizen=citizen,
            channels=channels,
            messages=messages,
            cases=cases,
            history=history,
            colleagues=colleagues,
            assignee=assignee,
            collected=collected,
            draft=draft,
            engine_down=engine_down,
            reasons=handoff.REASONS,
            districts=self.desk.districts,
            categories=CATEGORIES,
        )

    @signed_in()
    async def messages(self, request: web.Request) -> web.StreamResponse:
        """The conversation's messages after a given id, as HTML rows (the live transcript)."""
        member: Staff = request["staff"]
        after = int_or_none(request.query.get("after")) or 0
        async with self.sessions() as session:
            conversation = await handoff.visible_conversation(
                session, member.user, int(request.match_info["conversation_id"])
            )
            rows = list(
                (
                    await session.scalars(
                        select(Message)
                        .where(Message.conversation_id == conversation.id, Message.id > after)
                        .order_by(Message.id)
                        .limit(200)
                    )
                ).all()
            )
        return self.render(request, "message_rows.html", fragment=True, messages=rows)

    @signed_in()
    async def conversation_action(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        conversation_id = int(request.match_info["conversation_id"])
        name = request.path.rsplit("/", 1)[1]
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
        target = f"conversation:{conversation_id}"
        if name == "reply":
            text = data.get("text", "").strip()
            if not text or len(text) > MAX_REPLY_CHARS:
                raise InvalidInput("bad_text", f"回复内容为 1-{MAX_REPLY_CHARS} 个字符")
            async with self.sessions.begin() as session:
                conversation = await handoff.claim(session, member.user, conversation_id)
                audit.record(session, member.user, "conversation.reply", target, address=address)
                department_id = conversation.department_id
            live = await self.notifier.staff_reply(conversation_id, text, member.user.display_name)
            self.feed.publish(LiveEvent("reply", conversation_id, department_id))
            return "已发送" if live else "已发送；市民当前不在线，下次打开对话时会看到"
        async with self.sessions.begin() as session:
            if name == "claim":
                conversation = await handoff.claim(session, member.user, conversation_id)
                notice, kind = "已认领这个会话", "claimed"
            elif name == "assign":
                colleague_id = int_or_none(data.get("colleague_id"))
                if colleague_id is None:
                    raise InvalidInput("bad_colleague", "请选择同事")
                colleague = await handoff.assign(session, member.user, conversation_id, colleague_id)
                conversation = await handoff.visible_conversation(session, member.user, conversation_id)
                notice, kind = f"已转给 {colleague.display_name}", "claimed"
            elif name in ("release", "close"):
                conversation = await handoff.visible_conversation(session, member.user, conversation_id)
                if name == "release":
                    await handoff.release_to_bot(session, conversation_id)
                    notice, kind = "已交还机器人", "released"
                else:
                    handoff.close(conversation)
                    notice, kind = "会话已结束", "closed"
            elif name == "file-case":
                conversation = await handoff.visible_conversation(session, member.user, conversation_id)
                case = await self._file_draft(session, member, conversation, data)
                notice, kind = f"已登记工单 {case.case_number}", "filed"
                target = f"case:{case.case_number}"
            else:
                raise NotFound("action")
            audit.record(session, member.user, f"conversation.{name}", target, address=address)
            department_id = conversation.department_id
        if name in ("release", "close"):
            await self.notifier.handoff_ended(conversation_id, closed=name == "close")
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
            session, description=description, location_text=location, district_hint=district, category_override=category
        )
        report = Report(
            description=description,
            location=location,
            contact_phone=data.get("contact_phone", ""),
            district=district or preview.location.district,
        )
        case = await file_case(
            session, identity, report, conversation_id=conversation.id, actor=member.user.display_name
        )
        await self.desk.route(session, case, preview)
        return case


def _may_see(member: Staff, event: LiveEvent) -> bool:
    return member.at_least(Role.SUPERVISOR) or event.department_id == member.user.department_id
