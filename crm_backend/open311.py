"""Open311 GeoReport v2 at /open311/v2/, in JSON and XML: parse, call the service, render.

The work is in `crm_backend.services.open311`. Errors are answered as the standard writes them
(``[{"code": 400, "description": "…"}]``, ``<errors><error>…</error></errors>``), with the
status of `crm_backend.http.status_for` except where the standard says otherwise: bad input is
400 (not 422) and a missing, unknown or revoked ``api_key`` is 403 (not 401). Reads are public
and limited per client address; filing needs a write client's key.
"""

from __future__ import annotations

import functools
import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from crm_backend.dispatch.service import Dispatcher
from crm_backend.duty import day_text
from crm_backend.errors import (
    CrmError,
    InvalidInput,
    MalformedRequest,
    RateLimited,
    Unauthenticated,
    describe_error,
)
from crm_backend.http import client_address, status_for
from crm_backend.lifecycle import CaseStatus, open311_status
from crm_backend.services import api_clients
from crm_backend.services import open311 as service
from crm_backend.services.api_clients import ApiScope
from crm_backend.services.intake import CHINA_TZ
from crm_backend.services.limits import Limit, RateLimiter

logger = logging.getLogger(__name__)

BASE = "/open311/v2"
SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
CHANGESET = datetime(2026, 12, 5, tzinfo=CHINA_TZ)  # when this API last changed (discovery's changeset)
CONTENT_TYPES = {"json": "application/json", "xml": "text/xml"}
FORMAT = "{format:json|xml}"
# The standard's own statuses where the CRM's differ: bad input 400, a bad key 403.
_OPEN311_STATUS: dict[type[CrmError], int] = {InvalidInput: 400, MalformedRequest: 400, Unauthenticated: 403}


class Sayings(Protocol):
    """The sentences the read side and the filing answer borrow from the domain (`bot.responses`)."""

    def text(self, name: str) -> str: ...

    def status(self, status: CaseStatus) -> str: ...


def iso(moment: datetime | None) -> str | None:
    """A time as ISO 8601 in Beijing time: ``2026-12-05T09:30:00+08:00``."""
    return moment.astimezone(CHINA_TZ).isoformat(timespec="seconds") if moment is not None else None


# --- rendering -----------------------------------------------------------------------------


def _xml_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _xml_element(tag: str, value: Any) -> ET.Element:
    element = ET.Element(tag)
    if isinstance(value, Mapping):
        element.extend(_xml_element(key, item) for key, item in value.items())
    elif isinstance(value, list):
        raise TypeError("lists are rendered by their container")  # see `to_xml`
    else:
        element.text = _xml_value(value)
    return element


def to_xml(root: str, item: str, rows: list[Mapping[str, Any]]) -> bytes:
    """``<root><item>…</item>…</root>`` in UTF-8, each row's keys as child elements."""
    tree = ET.Element(root)
    for row in rows:
        element = ET.SubElement(tree, item)
        for key, value in row.items():
            if isinstance(value, list):  # a list of elements of one kind, e.g. <formats><format>
                holder = ET.SubElement(element, key)
                child = key.removesuffix("s")
                for entry in value:
                    holder.append(_xml_element(child, entry))
            else:
                element.append(_xml_element(key, value))
    return ET.tostring(tree, encoding="utf-8", xml_declaration=True)


def render(fmt: str, body: Any, *, root: str, item: str, status: int = 200) -> web.Response:
    """`body` (a list of rows, or one row) as JSON, or as XML under `root` with one `item` per row."""
    if fmt == "xml":
        rows = body if isinstance(body, list) else [body]
        data = to_xml(root, item, rows)
    else:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    return web.Response(body=data, status=status, content_type=CONTENT_TYPES[fmt], charset="utf-8")


def error_response(fmt: str, status: int, description: str) -> web.Response:
    """The standard's error body: ``[{"code": …, "description": …}]`` or ``<errors><error>…``."""
    return render(fmt, [{"code": status, "description": description}], root="errors", item="error", status=status)


Handler = Callable[["Open311Api", web.Request, str], Awaitable[web.Response]]


def spec_errors(handler: Handler) -> Callable[[Open311Api, web.Request], Awaitable[web.Response]]:
    """Answer domain errors (and unexpected ones) in the standard's error format and the asked one."""

    @functools.wraps(handler)
    async def guarded(api: Open311Api, request: web.Request) -> web.Response:
        fmt = request.match_info.get("format", "json")
        try:
            return await handler(api, request, fmt)
        except CrmError as error:
            status = next((s for cls, s in _OPEN311_STATUS.items() if isinstance(error, cls)), status_for(error))
            return error_response(fmt, status, str(error))
        except Exception as error:
            logger.error("unhandled error on %s %s: %s", request.method, request.path, describe_error(error))
            return error_response(fmt, 500, "internal error")

    return guarded


def service_row(item: service.Service) -> dict[str, Any]:
    return {
        "service_code": item.code,
        "service_name": item.name,
        "description": item.description,
        "metadata": False,
        "type": service.SERVICE_TYPE,
        "keywords": item.keywords,
        "group": item.group,
    }


class Open311Api:
    """Routes of /open311/v2/."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        desk: Dispatcher,
        sayings: Sayings,
        *,
        limiter: RateLimiter | None = None,
        read_limit: Limit | None = None,
        contact: str = "",
    ) -> None:
        self.sessions = sessions
        self._desk = desk
        self._sayings = sayings
        self._limiter = limiter
        self._read_limit = read_limit
        self._contact = contact

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{BASE}/discovery.{FORMAT}", self.discovery)
        app.router.add_get(f"{BASE}/services.{FORMAT}", self.services)
        app.router.add_get(f"{BASE}/services/{{service_code}}.{FORMAT}", self.service_definition)
        app.router.add_get(f"{BASE}/requests.{FORMAT}", self.requests)
        app.router.add_post(f"{BASE}/requests.{FORMAT}", self.file)
        app.router.add_get(f"{BASE}/requests/{{service_request_id}}.{FORMAT}", self.request)

    async def _admit(self, request: web.Request) -> None:
        """Count a public read against its address's limit.

        Raises:
            RateLimited: the address asked too often lately.
        """
        if self._limiter is None or self._read_limit is None:
            return
        if not await self._limiter.acquire(self._read_limit, client_address(request)):
            raise RateLimited("too many requests from this address; try again later")

    @spec_errors
    async def discovery(self, request: web.Request, fmt: str) -> web.Response:
        await self._admit(request)
        body: dict[str, Any] = {
            "changeset": iso(CHANGESET),
            "contact": self._contact,
            "key_service": "API keys are issued by the 12345 centre (a write client per partner).",
            "endpoints": [
                {
                    "specification": SPECIFICATION,
                    "url": f"{request.url.origin()}{BASE}",
                    "changeset": iso(CHANGESET),
                    "type": "production",
                    "formats": list(CONTENT_TYPES.values()),
                }
            ],
        }
        if fmt == "xml":  # one <discovery> element, not a list of them
            root = ET.Element("discovery")
            for key in ("changeset", "contact", "key_service"):
                root.append(_xml_element(key, body[key]))
            endpoints = ET.SubElement(root, "endpoints")
            for endpoint in body["endpoints"]:
                element = ET.SubElement(endpoints, "endpoint")
                for key, value in endpoint.items():
                    if key == "formats":
                        formats = ET.SubElement(element, "formats")
                        formats.extend(_xml_element("format", kind) for kind in value)
                    else:
                        element.append(_xml_element(key, value))
            data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
            return web.Response(body=data, content_type=CONTENT_TYPES[fmt], charset="utf-8")
        return render(fmt, body, root="discovery", item="discovery")

    @spec_errors
    async def services(self, request: web.Request, fmt: str) -> web.Response:
        await self._admit(request)
        return render(fmt, [service_row(item) for item in service.catalogue()], root="services", item="service")

    @spec_errors
    async def service_definition(self, request: web.Request, fmt: str) -> web.Response:
        await self._admit(request)
        item = service.service_named(request.match_info["service_code"])
        body = {"service_code": item.code, "attributes": []}  # no service needs more than the standard's fields
        if fmt == "xml":
            root = ET.Element("service_definition")
            root.append(_xml_element("service_code", item.code))
            ET.SubElement(root, "attributes")
            data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
            return web.Response(body=data, content_type=CONTENT_TYPES[fmt], charset="utf-8")
        return render(fmt, body, root="service_definition", item="service_definition")

    @spec_errors
    async def requests(self, request: web.Request, fmt: str) -> web.Response:
        await self._admit(request)
        query = service.RequestQuery.parse(request.query)
        async with self.sessions() as session:
            found = await service.public_requests(session, query)
        return render(fmt, [self._request_row(item) for item in found], root="service_requests", item="request")

    @spec_errors
    async def request(self, request: web.Request, fmt: str) -> web.Response:
        await self._admit(request)
        async with self.sessions.begin() as session:
            found = await service.public_request(
                session, request.match_info["service_request_id"], address=client_address(request)
            )
        return render(fmt, [self._request_row(found)], root="service_requests", item="request")

    @spec_errors
    async def file(self, request: web.Request, fmt: str) -> web.Response:
        form = {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
        address = client_address(request)
        async with self.sessions.begin() as session:
            caller = await api_clients.authenticate(session, form.get("api_key", "").strip())
        caller.require(ApiScope.WRITE)  # a read-only key is told so before anything about its input
        new = service.NewRequest.parse(form)
        async with self.sessions.begin() as session:  # all of the filing, or none of it
            filed = await service.file_request(session, self._desk, caller, new, address=address)
        if filed.queued:
            notice = self._sayings.text("utter_case_created_queued").format(case_number=filed.case.case_number)
        else:
            notice = self._sayings.text("utter_case_created_routed").format(
                case_number=filed.case.case_number,
                department=filed.department or "",
                due="今天" if filed.case.urgent else day_text(filed.due_at) if filed.due_at else "",
            )
        # The case number exists from the moment of filing, in the manual queue too: no token is needed.
        row = {"service_request_id": filed.case.case_number, "service_notice": notice}
        return render(fmt, [row], root="service_requests", item="request")

    def _request_row(self, item: service.PublicRequest) -> dict[str, Any]:
        return {
            "service_request_id": item.service_request_id,
            "status": open311_status(item.status),
            "status_notes": self._sayings.status(item.status),
            "service_name": item.service_name,
            "service_code": item.service_code,
            "description": None,  # a citizen's own words, personal data: never published
            "agency_responsible": item.agency_responsible,
            "service_notice": None,
            "requested_datetime": iso(item.requested_at),
            "updated_datetime": iso(item.updated_at),
            "expected_datetime": iso(item.expected_at),
            "address": item.address,
            "address_id": item.address_id,
            "lat": item.lat,
            "long": item.long,
        }
