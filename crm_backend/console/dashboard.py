"""The console's 数据看板: the centre's figures for a period, and each figure as CSV or XLSX.

Supervisors and admins see every department; an agent sees their own department's figures
only, whatever department the URL asks for (the service narrows the filters). Every export
is audited with its filters.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import select

from crm_backend.analytics import kpi
from crm_backend.console.web import ConsoleBase, Staff, secure, signed_in
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.deadlines import CHINA_TZ
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.http import client_address
from crm_backend.models import Department, StaffUser, utcnow
from crm_backend.services import audit, open_data

CSV_FLUSH_ROWS = 1000
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
LONG_TABLE_ROWS = 12  # a longer table scrolls in a box of about this height, under its chart
# A text cell starting with one of these is a formula to a spreadsheet program (CSV/formula injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def as_text(value: Any) -> Any:
    """A cell value safe to open in a spreadsheet: text that would start a formula gets a leading quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_row(row: Iterable[Any]) -> list[Any]:
    return [as_text(value) for value in row]


def write_xlsx(title: str, columns: list[str], rows: Iterable[list[Any]]) -> bytes:
    """An XLSX workbook of one sheet, written row by row (openpyxl's write-only mode)."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(title=title[:31])
    sheet.append(columns)
    for row in rows:
        sheet.append(safe_row(row))
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


class DashboardViews(ConsoleBase):
    """The dashboard page and its exports."""

    def __init__(self, base: ConsoleBase, districts: Sequence[str]) -> None:
        super().__init__(**base.share())
        self.districts = districts

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console/dashboard", self.page)
        app.router.add_get("/console/dashboard/export/{name}", self.export)

    def _filters(self, request: web.Request) -> kpi.Filters:
        today = utcnow().astimezone(CHINA_TZ).date()
        return kpi.Filters.from_query(request.query, today)

    @signed_in()
    async def page(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        today = utcnow().astimezone(CHINA_TZ).date()
        error, status = None, 200
        try:
            filters = kpi.Filters.from_query(request.query, today)
        except InvalidInput as problem:
            filters, error, status = kpi.Filters.from_query({}, today), str(problem), 422
        scope = kpi.Scope.of(member.user)
        shown = scope.narrow(filters)
        async with self.sessions() as session:
            tables = {table.id: table for table in await kpi.dashboard(session, member.user, filters)}
            departments = list((await session.scalars(select(Department).order_by(Department.name))).all())
        return self.render(
            request,
            "dashboard.html",
            status=status,
            error=error,
            sections=[
                (title, [tables[table_id] for table_id in ids if table_id in tables])
                for title, ids in kpi.SECTIONS
                if any(table_id in tables for table_id in ids)
            ],
            filters=shown,
            query=urlencode(shown.params()),
            periods=kpi.PERIODS,
            channels=kpi.CHANNELS,
            categories=CATEGORIES,
            districts=self.districts,
            departments=departments if scope.everything else [d for d in departments if d.id == scope.department_id],
            detail_table=kpi.DETAIL_TABLE,
            headline_table=kpi.HEADLINE_TABLE,
            long_table_rows=LONG_TABLE_ROWS,
            open_data_month=open_data.last_month().label,
        )

    @signed_in()
    async def export(self, request: web.Request) -> web.StreamResponse:
        member: Staff = request["staff"]
        table_id, _, extension = request.match_info["name"].rpartition(".")
        if extension not in ("csv", "xlsx") or not (table_id in kpi.TABLES or table_id == kpi.DETAIL_TABLE):
            raise NotFound("export")
        if not kpi.Scope.of(member.user).shows(table_id):
            raise NotFound("export")
        filters = kpi.Scope.of(member.user).narrow(self._filters(request))
        async with self.sessions.begin() as session:
            audit.record(
                session,
                member.user,
                "dashboard.export",
                f"{table_id}.{extension}",
                urlencode(filters.params()),
                address=client_address(request),
            )
        filename = f"{table_id}-{filters.since:%Y%m%d}-{filters.until:%Y%m%d}.{extension}"
        if table_id == kpi.DETAIL_TABLE:
            title, columns = "工单明细", kpi.DETAIL_COLUMNS
            if extension == "csv":
                return await self._stream_csv(request, filename, columns, self._detail_rows(member.user, filters))
            async with self.sessions() as session:
                rows: list[list[Any]] = [row async for row in kpi.case_rows(session, member.user, filters)]
        else:
            async with self.sessions() as session:
                table = await kpi.one_table(session, member.user, filters, table_id)
            title, columns = table.title, table.columns
            rows = [[cell.export_value for cell in row] for row in table.rows]
            if extension == "csv":
                return await self._stream_csv(request, filename, columns, _aiter(rows))
        body = await asyncio.to_thread(write_xlsx, title, columns, rows)
        response = web.Response(body=body, content_type=XLSX_TYPE)
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return secure(response)

    async def _detail_rows(self, user: StaffUser, filters: kpi.Filters) -> AsyncIterator[list[Any]]:
        async with self.sessions() as session:
            async for row in kpi.case_rows(session, user, filters):
                yield row

    async def _stream_csv(
        self, request: web.Request, filename: str, columns: list[str], rows: AsyncIterator[list[Any]]
    ) -> web.StreamResponse:
        """Stream rows as UTF-8 CSV (with a BOM, so spreadsheet programs read the Chinese right)."""
        response = secure(web.StreamResponse())
        response.content_type = "text/csv"
        response.charset = "utf-8"
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        await response.prepare(request)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        buffer.write("\ufeff")
        writer.writerow(columns)
        pending = 0
        async for row in rows:
            writer.writerow(safe_row(row))
            pending += 1
            if pending >= CSV_FLUSH_ROWS:
                await response.write(buffer.getvalue().encode("utf-8"))
                buffer.seek(0)
                buffer.truncate()
                pending = 0
        await response.write(buffer.getvalue().encode("utf-8"))
        await response.write_eof()
        return response


async def _aiter(rows: list[list[Any]]) -> AsyncIterator[list[Any]]:
    for row in rows:
        yield row
