"""The knowledge base in the console: entries with their feedback, edits, and version history.

Every signed-in member of staff reads entries, what citizens said of their answers and the
history of each; only admins create, edit and restore. An edit is made on the version the
form was opened on (a hidden `base_version`): if someone saved the entry in between, nothing
is stored and the form comes back with the editor's text and who saved what.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_backend.console.labels import KNOWLEDGE_FIELD_LABELS as FIELD_LABELS
from crm_backend.console.web import ConsoleBase, Staff, form, int_or_none, signed_in
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.errors import NotFound
from crm_backend.http import client_address
from crm_backend.knowledge.entries import ASPECTS, EntryData, InvalidEntry, clean_lines
from crm_backend.knowledge.facts import CITY_FILE_NAME, FACTS, CityFacts
from crm_backend.lifecycle import Permission
from crm_backend.models import KnowledgeEntry, KnowledgeEntryVersion
from crm_backend.services import knowledge
from crm_backend.validation import mask_numbers

MAX_SEARCH = 80
FEEDBACK_SHOWN = 20
MISSES_SHOWN = 200


def labels(fields: list[str]) -> list[str]:
    """Field names as staff read them."""
    return [FIELD_LABELS.get(name, name) for name in fields]


def _text(raw: str) -> str:
    """A textarea's value: browsers send CRLF line breaks; stored text uses LF, trimmed."""
    return raw.replace("\r\n", "\n").replace("\r", "\n").strip()


def _today() -> date:
    return datetime.now(CHINA_TZ).date()


def form_values(data: EntryData) -> dict[str, Any]:
    """What the edit form shows for an entry's fields: its snapshot, questions one per line."""
    return data.snapshot() | {
        "questions": "\n".join(data.questions),
        "follow_ups": {aspect: data.follow_ups.get(aspect, "") for aspect in ASPECTS},
    }


def posted_values(posted: dict[str, str]) -> dict[str, Any]:
    """The edit form as posted, tidied (to store, or to show again when it cannot be stored)."""
    return {
        "slug": posted.get("slug", "").strip(),
        "title": posted.get("title", "").strip(),
        "category": posted.get("category", "").strip(),
        "department": posted.get("department", "").strip(),
        "questions": "\n".join(clean_lines(posted.get("questions", ""))),
        "answer": _text(posted.get("answer", "")),
        "follow_ups": {aspect: _text(posted.get(f"follow_up:{aspect}", "")) for aspect in ASPECTS},
        "last_reviewed": posted.get("last_reviewed", "").strip(),
        "active": posted.get("active") == "1",
    }


def entry_from_values(values: dict[str, Any]) -> EntryData:
    """The entry the form describes.

    Raises:
        InvalidEntry: with every problem found, in Chinese.
    """
    problems = []
    try:
        reviewed = date.fromisoformat(values["last_reviewed"])
    except ValueError:
        problems.append("审核日期无效，请按 2025-01-31 的格式填写")
        reviewed = _today()
    data = EntryData.from_snapshot(
        values
        | {
            "questions": clean_lines(values["questions"]),
            "follow_ups": {aspect: text for aspect, text in values["follow_ups"].items() if text},
            "last_reviewed": reviewed.isoformat(),
        }
    )
    if problems := problems + data.problems():
        raise InvalidEntry(problems)
    return data


class KnowledgeViews(ConsoleBase):
    """The knowledge-base pages: read by all staff, changed by admins.

    Entries are shown as stored, placeholders and all; each that names a city fact not
    filled in (`city_facts`) is flagged, since citizens get its answer without that fact.
    """

    def __init__(self, base: ConsoleBase, city_facts: CityFacts) -> None:
        super().__init__(**base.share())
        self.city_facts = city_facts

    def add_routes(self, app: web.Application) -> None:
        entry = r"/console/knowledge/{entry_id:\d{1,9}}"
        app.router.add_get("/console/knowledge", self.entry_list)
        app.router.add_get("/console/knowledge/misses", self.misses)
        app.router.add_get("/console/knowledge/new", self.new_entry)
        app.router.add_post("/console/knowledge/new", self.new_entry_post)
        app.router.add_get(entry, self.entry_page)
        app.router.add_get(f"{entry}/edit", self.edit_entry)
        app.router.add_post(f"{entry}/edit", self.edit_entry_post)
        app.router.add_get(f"{entry}/history", self.history_page)
        app.router.add_get(rf"{entry}/history/{{version:\d{{1,9}}}}", self.version_page)
        app.router.add_post(rf"{entry}/history/{{version:\d{{1,9}}}}/restore", self.restore_post)

    # --- reading ---------------------------------------------------------------------

    @signed_in()
    async def entry_list(self, request: web.Request) -> web.StreamResponse:
        search = request.query.get("q", "").strip()[:MAX_SEARCH]
        worst_first = request.query.get("sort") == "worst"
        missing_only = request.query.get("missing") == "1"
        async with self.sessions() as session:
            rows = await knowledge.list_entries(
                session, search=search, worst_first=worst_first, facts=self.city_facts, missing_only=missing_only
            )
        return self.render(
            request,
            "knowledge_list.html",
            rows=rows,
            search=search,
            worst_first=worst_first,
            missing_only=missing_only,
            can_edit=request["staff"].may(Permission.ADMINISTER),
        )

    @signed_in()
    async def misses(self, request: web.Request) -> web.StreamResponse:
        """Questions no entry answered, newest first: what the knowledge base lacks."""
        async with self.sessions() as session:
            rows = await knowledge.recent_misses(session, limit=MISSES_SHOWN)
        return self.render(
            request,
            "knowledge_misses.html",
            rows=[(row.miss.created_at, mask_numbers(row.miss.question), row.nearest) for row in rows],
            can_edit=request["staff"].may(Permission.ADMINISTER),
        )

    @signed_in()
    async def entry_page(self, request: web.Request) -> web.StreamResponse:
        async with self.sessions() as session:
            entry = await self._entry(session, request)
            versions = await knowledge.history(session, entry)
            feedback = await knowledge.recent_feedback(session, entry, limit=FEEDBACK_SHOWN)
            helpful, not_helpful = await knowledge.feedback_counts(session, entry)
        data = knowledge.entry_data(entry)
        return self.render(
            request,
            "knowledge_entry.html",
            entry=entry,
            data=data,
            missing_facts=self.city_facts.missing_in(data),
            shown=self.city_facts.render_entry(data),
            city_file=CITY_FILE_NAME,
            latest=versions[0] if versions else None,
            helpful=helpful,
            not_helpful=not_helpful,
            feedback=[(item.created_at, mask_numbers(item.question)) for item in feedback],
            aspects=ASPECTS,
            can_edit=request["staff"].may(Permission.ADMINISTER),
        )

    @signed_in()
    async def history_page(self, request: web.Request) -> web.StreamResponse:
        return await self._history_page(request)

    async def _history_page(
        self, request: web.Request, *, error: str | None = None, status: int = 200
    ) -> web.StreamResponse:
        async with self.sessions() as session:
            entry = await self._entry(session, request)
            versions = await knowledge.history(session, entry)
        return self.render(
            request,
            "knowledge_history.html",
            status=status,
            error=error,
            entry=entry,
            versions=[(version, labels(version.changed_fields)) for version in versions],
            can_edit=request["staff"].may(Permission.ADMINISTER),
        )

    @signed_in()
    async def version_page(self, request: web.Request) -> web.StreamResponse:
        async with self.sessions() as session:
            entry = await self._entry(session, request)
            version = await self._version(session, entry, request)
        data = EntryData.from_snapshot(version.snapshot)
        return self.render(
            request,
            "knowledge_version.html",
            entry=entry,
            version=version,
            data=data,
            changed=labels(version.changed_fields),
            differs=labels(data.changed_fields(knowledge.entry_data(entry))),
            aspects=ASPECTS,
            can_edit=request["staff"].may(Permission.ADMINISTER),
        )

    # --- changing (admins) -------------------------------------------------------------

    @signed_in(Permission.ADMINISTER)
    async def new_entry(self, request: web.Request) -> web.StreamResponse:
        blank = EntryData(slug="", title="", category="", department="", questions=(), answer="")
        values = form_values(blank) | {"last_reviewed": _today().isoformat()}
        return await self._form_page(request, None, values, base_version=0)

    @signed_in(Permission.ADMINISTER)
    async def new_entry_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        values = posted_values(await form(request))
        try:
            data = entry_from_values(values)
            async with self.sessions.begin() as session:
                entry = await knowledge.create_entry(session, data, member.user, address=client_address(request))
        except InvalidEntry as invalid:
            return await self._form_page(request, None, values, base_version=0, problems=invalid.problems, status=422)
        except (knowledge.SlugTaken, IntegrityError):
            problem = f"编号 {values['slug']} 已被其他条目使用，请换一个"
            return await self._form_page(request, None, values, base_version=0, problems=[problem], status=409)
        self.done(request, f"/console/knowledge/{entry.id}", f"已新建条目：{data.title}")

    @signed_in(Permission.ADMINISTER)
    async def edit_entry(self, request: web.Request) -> web.StreamResponse:
        async with self.sessions() as session:
            entry = await self._entry(session, request)
        return await self._form_page(
            request, entry, form_values(knowledge.entry_data(entry)), base_version=entry.version
        )

    @signed_in(Permission.ADMINISTER)
    async def edit_entry_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        posted = await form(request)
        values = posted_values(posted)
        base_version = int_or_none(posted.get("base_version")) or 0
        try:
            data = entry_from_values(values)
            async with self.sessions.begin() as session:
                entry = await self._entry(session, request)
                changed = await knowledge.update_entry(
                    session, entry, data, member.user, base_version=base_version, address=client_address(request)
                )
        except InvalidEntry as invalid:
            return await self._form_page(
                request, None, values, base_version=base_version, problems=invalid.problems, status=422
            )
        except knowledge.SlugTaken:
            problem = f"编号 {values['slug']} 已被其他条目使用，请换一个"
            return await self._form_page(
                request, None, values, base_version=base_version, problems=[problem], status=409
            )
        except (knowledge.EntryConflict, IntegrityError):
            # IntegrityError: a save of the same version committed between our check and our write.
            return await self._conflict_page(request, values, base_version)
        if not changed:
            self.done(request, f"/console/knowledge/{entry.id}", "内容没有改动，未保存新版本")
        self.done(
            request,
            f"/console/knowledge/{entry.id}",
            f"已保存为第 {entry.version} 版（修改了：{'、'.join(labels(changed))}）",
        )

    @signed_in(Permission.ADMINISTER)
    async def restore_post(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        posted = await form(request)
        base_version = int_or_none(posted.get("base_version")) or 0
        try:
            async with self.sessions.begin() as session:
                entry = await self._entry(session, request)
                old = await self._version(session, entry, request)
                changed = await knowledge.restore_version(
                    session,
                    entry,
                    old.version,
                    member.user,
                    base_version=base_version,
                    address=client_address(request),
                )
        except (knowledge.EntryConflict, IntegrityError):
            message = "恢复失败：打开此页面后，条目已被他人修改。请查看最新的修改记录后再决定是否恢复。"
            return await self._history_page(request, error=message, status=409)
        except knowledge.SlugTaken:
            message = "恢复失败：该版本的编号现在已被其他条目使用。请先编辑当前条目。"
            return await self._history_page(request, error=message, status=409)
        except InvalidEntry as invalid:
            return await self._history_page(request, error="恢复失败：" + "；".join(invalid.problems), status=422)
        location = f"/console/knowledge/{entry.id}/history"
        if not changed:
            self.done(request, location, f"当前内容与第 {old.version} 版相同，无需恢复")
        self.done(request, location, f"已恢复第 {old.version} 版的内容，保存为第 {entry.version} 版")

    # --- helpers -------------------------------------------------------------------

    async def _entry(self, session: AsyncSession, request: web.Request) -> KnowledgeEntry:
        entry = await knowledge.get_entry(session, int(request.match_info["entry_id"]))
        if entry is None:
            raise NotFound("knowledge entry")
        return entry

    async def _version(
        self, session: AsyncSession, entry: KnowledgeEntry, request: web.Request
    ) -> KnowledgeEntryVersion:
        version = await session.scalar(
            select(KnowledgeEntryVersion).where(
                KnowledgeEntryVersion.entry_id == entry.id,
                KnowledgeEntryVersion.version == int(request.match_info["version"]),
            )
        )
        if version is None:
            raise NotFound("knowledge entry version")
        return version

    async def _conflict_page(
        self, request: web.Request, values: dict[str, Any], base_version: int
    ) -> web.StreamResponse:
        """The editor's text again, with who saved the entry meanwhile and what they changed.

        The form now carries the current version, so saving again (after a look at the
        current entry) deliberately replaces the other person's text with this one.
        """
        async with self.sessions() as session:
            entry = await self._entry(session, request)
            versions = await knowledge.history(session, entry)
        newer = [version for version in versions if version.version > base_version]
        since = {name for version in newer for name in version.changed_fields}
        authors = "、".join(dict.fromkeys(version.changed_by for version in newer)) or "他人"
        changed = "、".join(labels([name for name in FIELD_LABELS if name in since])) or "无"
        error = (
            f"未保存：在您编辑期间，{authors} 已把此条目保存为第 {entry.version} 版（修改了：{changed}）。"
            "下面仍是您填写的内容。请先查看当前版本，确认后再次点击“保存”将以您的内容覆盖。"
        )
        return await self._form_page(request, entry, values, base_version=entry.version, error=error, status=409)

    async def _form_page(
        self,
        request: web.Request,
        entry: KnowledgeEntry | None,
        values: dict[str, Any],
        *,
        base_version: int,
        problems: list[str] | None = None,
        error: str | None = None,
        status: int = 200,
    ) -> web.StreamResponse:
        entry_id = int_or_none(request.match_info.get("entry_id"))
        async with self.sessions() as session:
            if entry is None and entry_id is not None:
                entry = await self._entry(session, request)
            categories = list(
                (
                    await session.scalars(select(KnowledgeEntry.category).distinct().order_by(KnowledgeEntry.category))
                ).all()
            )
        return self.render(
            request,
            "knowledge_edit.html",
            status=status,
            error=error,
            entry=entry,
            values=values,
            base_version=base_version,
            problems=problems or [],
            categories=categories,
            aspects=ASPECTS,
            facts=FACTS,
            city_file=CITY_FILE_NAME,
            can_edit=True,
        )
