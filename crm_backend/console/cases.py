"""The console's case pages: the filtered list, one case and its operations, the dispatch queue."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web
from sqlalchemy import select

from crm_backend.analytics.kpi import CHANNELS
from crm_backend.console.conversations import ChannelNotifier
from crm_backend.console.web import ConsoleBase, Staff, form, int_or_none, secure, signed_in
from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.routing import suggested_department, suggested_departments
from crm_backend.errors import InvalidInput, InvalidTransition, NotFound
from crm_backend.http import client_address
from crm_backend.lifecycle import CASE_ACTIONS, CaseAction, CaseStatus, Permission, available_actions
from crm_backend.models import Department, ExtensionRequest, RoutingDecision, StaffUser
from crm_backend.services import audit, casework, citizens, reply_scores
from crm_backend.services.conversations import OutgoingMessage
from crm_backend.services.moves import CaseNotices
from crm_backend.services.segments import SEGMENT_LABELS, parse_segment
from crm_backend.validation import mask_phone

MAX_REPLY_CHARS = 4000


def _case_type_filter(value: str | None) -> str | None:
    """The list's 类型 filter: a type, 未分类, or None (any) for anything else."""
    return value if value in CASE_TYPES or value == casework.UNCLASSIFIED else None


class ConsoleNotices(CaseNotices, citizens.LinkedNotices, Protocol):
    """Who tells citizens about what staff do to cases: status notices and 「通知关联市民」."""


def linked_summary(outcome: citizens.LinkedNotification) -> str:
    """What staff read after 「通知关联市民」."""
    if not outcome.told and not outcome.opted_out:
        return f"已通知：关联工单（{'、'.join(outcome.already)}）的市民此前已收到通知"
    text = f"已通知 {len(outcome.told)} 件关联工单的市民" if outcome.told else "没有发送新的通知"
    if outcome.opted_out:
        text += f"；{'、'.join(outcome.opted_out)} 的市民已关闭通知，未发送"
    if outcome.already:
        text += f"；{'、'.join(outcome.already)} 此前已通知"
    return text


def _day_or_none(value: str | None) -> date | None:
    """A 受理日期 bound (YYYY-MM-DD), or None (any) for anything else."""
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


class CaseViews(ConsoleBase):
    """Cases through their life cycle."""

    def __init__(
        self, base: ConsoleBase, notifier: ChannelNotifier, districts: Sequence[str], watcher: ConsoleNotices
    ) -> None:
        super().__init__(**base.share())
        self.notifier = notifier
        self.districts = districts
        self.watcher = watcher

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/cases", self.case_list)
        app.router.add_get("/console/cases/{case_number}", self.case_page)
        app.router.add_post("/console/cases/{case_number}/{operation}", self.case_operation)
        app.router.add_get("/console/queue", self.queue)

    async def _departments(self, session: Any) -> list[Department]:
        return list((await session.scalars(select(Department).order_by(Department.name))).all())

    @signed_in()
    async def case_list(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        query = request.query
        status = query.get("status") or None
        if status is not None and status not in {s.value for s in CaseStatus}:
            status = None
        filters = casework.CaseFilters(
            status=status,
            category=query.get("category") if query.get("category") in CATEGORIES else None,
            case_type=_case_type_filter(query.get("case_type")),
            department_id=int_or_none(query.get("department")),
            district=(query.get("district") or None),
            overdue=query.get("overdue") == "1",
            supervised=query.get("supervised") == "1",
            segment=parse_segment(query.get("segment")),
            since=_day_or_none(query.get("since")),
            until=_day_or_none(query.get("until")),
            channel=query.get("channel") if query.get("channel") in CHANNELS else None,
        )
        cursor = casework.Cursor.decode(query.get("after"))
        async with self.sessions() as session:
            rows, next_cursor = await casework.list_cases(session, member.user, filters, after=cursor)
            departments = await self._departments(session)
        params = {key: value for key, value in query.items() if key != "after" and value}
        return self.render(
            request,
            "cases.html",
            cases=rows,
            filters=filters,
            next_cursor=next_cursor.encode() if next_cursor else None,
            params=params,
            statuses=list(CaseStatus),
            categories=CATEGORIES,
            case_types=CASE_TYPES,
            unclassified=casework.UNCLASSIFIED,
            departments=departments,
            districts=self.districts,
            channels=CHANNELS,
            is_overdue=casework.is_overdue,
            segments=SEGMENT_LABELS,
        )

    @signed_in()
    async def case_page(self, request: web.Request) -> web.StreamResponse:
        return await self._case_page(request)

    async def _case_page(
        self,
        request: web.Request,
        *,
        error: str | None = None,
        notice: str | None = None,
        status: int = 200,
        reveal_phone: bool = False,
    ) -> web.StreamResponse:
        member: Staff = request["staff"]
        async with self.sessions.begin() as session:
            case = await casework.visible_case(session, member.user, request.match_info["case_number"])
            events = await casework.timeline(session, case)
            scores = await reply_scores.scores_for(session, events)
            related = await casework.related_cases(session, case)
            resolved = CaseStatus(case.status) in citizens.RESOLVED_STATUSES
            linked_count = await citizens.linked_case_count(session, case) if resolved else 0
            decisions = list(
                (
                    await session.scalars(
                        select(RoutingDecision).where(RoutingDecision.case_id == case.id).order_by(RoutingDecision.id)
                    )
                ).all()
            )
            extension = await casework.pending_extension(session, case)
            requester = await session.get(StaffUser, extension.requested_by_id) if extension else None
            departments = [d for d in await self._departments(session) if d.active]
            suggested = await suggested_department(session, case, decisions[-1] if decisions else None)
            audit.record(
                session,
                member.user,
                "case.view_phone" if reveal_phone else "case.view",
                case.case_number,
                address=client_address(request),
            )
        actions = available_actions(CaseStatus(case.status), member.role)
        return self.render(
            request,
            "case.html",
            status=status,
            error=error,
            notice=notice,
            case=case,
            phone=case.contact_phone if reveal_phone else mask_phone(case.contact_phone),
            events=events,
            scores=scores,
            related=related,
            decision=decisions[-1] if decisions else None,
            extension=extension,
            requester=requester,
            departments=departments,
            suggested_department_id=suggested,
            actions=[(action, CASE_ACTIONS[action]) for action in actions],
            overdue=casework.is_overdue(case),
            can_supervise=member.may(Permission.SUPERVISE),
            open_case=CaseStatus(case.status) in casework.OPEN_STATUSES,
            case_types=CASE_TYPES,
            categories=CATEGORIES,
            can_notify_linked=linked_count > 0,
            linked_count=linked_count,
        )

    @signed_in()
    async def case_operation(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        number = request.match_info["case_number"]
        operation = request.match_info["operation"]
        data = await form(request)
        address = client_address(request)
        if operation == "reveal-phone":
            return await self._case_page(request, reveal_phone=True)
        try:
            notice = await self._operate(member, number, operation, data, address)
        except (InvalidInput, InvalidTransition) as problem:
            return await self._case_page(
                request, error=str(problem), status=422 if isinstance(problem, InvalidInput) else 409
            )
        if request.headers.get("X-Requested-With") == "fetch":
            return secure(web.json_response({"ok": True, "notice": notice}))
        async with self.sessions() as session:
            try:
                await casework.visible_case(session, member.user, number)
                location = f"/console/cases/{quote(number)}"
            except NotFound:  # e.g. an agent's 退回 sends the case back to the dispatchers
                location = "/console/cases"
        self.done(request, location, notice)

    async def _operate(self, member: Staff, number: str, operation: str, data: dict[str, str], address: str) -> str:
        note = data.get("note", "")
        if operation == "reply":
            text = data.get("text", "").strip()
            if not text or len(text) > MAX_REPLY_CHARS:
                raise InvalidInput("bad_text", f"回复内容为 1-{MAX_REPLY_CHARS} 个字符")
            async with self.sessions.begin() as session:
                case = await casework.visible_case(session, member.user, number)
                await casework.record_reply(session, member.user, case, text, address=address)
                identity_id = case.identity_id
            # To the citizen's current conversation on the case's channel, which may be newer than
            # the one the case was filed in.
            reply = OutgoingMessage(
                f"关于工单 {number}：{text}", sender_kind="staff", sender_name=member.user.display_name
            )
            live = await self.notifier.notify_identity(identity_id, [reply])
            return "已回复市民" if live else "已回复；市民当前不在线，下次打开对话时会看到"
        if operation == "notify-linked":
            async with self.sessions.begin() as session:
                outcome = await citizens.notify_linked_citizens(
                    session, member.user, number, self.watcher, address=address
                )
            for notice in outcome.notices:
                self.watcher.deliver(notice)
            return linked_summary(outcome)
        if operation == "action":
            async with self.sessions.begin() as session:
                move = await casework.perform(
                    session,
                    member.user,
                    number,
                    data.get("action", ""),
                    note=note,
                    department_id=int_or_none(data.get("department_id")),
                    address=address,
                    notices=self.watcher,
                    category=data.get("category") or None,
                )
            self.watcher.deliver(move.notice)
            return f"工单已变为「{CaseStatus(move.event.to_status).label}」（{number}）"
        async with self.sessions.begin() as session:
            if operation == "case-type":
                chosen = data.get("case_type", "")
                changed = await casework.set_case_type(session, member.user, number, chosen, address=address)
                return f"类型已更正为「{chosen}」" if changed else f"类型本来就是「{chosen}」"
            if operation == "category":
                chosen = data.get("category", "")
                changed = await casework.set_category(session, member.user, number, chosen, address=address)
                return f"分类已更正为「{chosen}」" if changed else f"分类本来就是「{chosen}」"
            if operation == "note":
                await casework.add_note(session, member.user, number, note, address=address)
                return "已添加内部备注"
            if operation == "supervise":
                on = data.get("on") == "1"
                await casework.set_supervised(session, member.user, number, on, note, address=address)
                return "已督办" if on else "已取消督办"
            if operation == "extension":
                days = int_or_none(data.get("working_days"))
                if days is None:
                    raise InvalidInput("bad_days", "请填写延期的工作日数")
                await casework.request_extension(session, member.user, number, days, note, address=address)
                return "延期申请已提交，等待值班长审批"
            if operation == "extension-decision":
                approve = data.get("approve") == "1"
                request: ExtensionRequest = await casework.decide_extension(
                    session, member.user, number, approve, note, address=address
                )
                return "已同意延期" if request.status == "approved" else "已驳回延期申请"
        raise NotFound("operation")

    @signed_in(Permission.SUPERVISE)
    async def queue(self, request: web.Request) -> web.StreamResponse:
        async with self.sessions() as session:
            rows = await casework.dispatch_queue(session)
            departments = [d for d in await self._departments(session) if d.active]
            suggested = await suggested_departments(session, rows)
        return self.render(
            request,
            "queue.html",
            rows=rows,
            departments=departments,
            suggested=suggested,
            categories=CATEGORIES,
            dispatch=CaseAction.DISPATCH.value,
        )
