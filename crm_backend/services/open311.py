"""Open311 GeoReport v2: the services a partner may report, filing a request, and the public read side.

A partner (a street-management app, the grid workers' handhelds) files a request with a write
client's key; it becomes a case through the same intake, dispatch (auto route or the manual
queue), duplicate check, deadlines and audit as a chat report (`file_report`). The read side is
public and publishes no personal data: no description, no phone, no name, no reporter detail.

Services are the 12345 categories (their group) and, under each, its six case types:
``construction`` (城乡建设, the type left to the recogniser), ``construction-complaint``
(城乡建设 · 投诉) …, and ``general`` (the category left to the classifier, which may send the
case to the manual queue). None needs more than the standard's fields: no attributes.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.sql.elements import ColumnElement

from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.errors import InvalidInput, NotFound
from crm_backend.lifecycle import CLOSED_STATUSES, CaseStatus
from crm_backend.models import Open311Request, ServiceCase, blind_index, utcnow
from crm_backend.services import audit
from crm_backend.services.api_clients import ApiCaller, ApiScope
from crm_backend.services.conversations import resolve_identity
from crm_backend.services.intake import CHINA_TZ, Report, file_report
from crm_backend.services.moves import Actor
from crm_backend.validation import clean_text, mask_phones, normalise_mobile, parse_case_number

if TYPE_CHECKING:
    from crm_backend.dispatch.service import Dispatcher

CHANNEL = "open311"
SERVICE_TYPE = "realtime"  # a request is filed and answered with its case number at once
GENERAL_SERVICE = "general"
MAX_DESCRIPTION_CHARS = 4000  # the standard's limit
MAX_ADDRESS_CHARS = 200  # a case's location holds 200
MAX_FIELD_CHARS = 100  # contact fields, address_id
DEFAULT_WINDOW = timedelta(days=90)  # the standard's default span, and the longest one asked
MAX_REQUESTS = 1000  # the standard's default limit
MAX_IDS = 100  # service_request_id values in one query
REPORTER_INDEX = "open311_reporter"  # blind-index purpose of a reporter's account / device / email
CONTACT_FIELDS = ("email", "device_id", "account_id", "first_name", "last_name")

# ASCII codes for the categories and the case types: service codes go into URLs.
CATEGORY_CODES: dict[str, str] = {
    "城乡建设": "construction",
    "环境保护": "environment",
    "交通运输": "transport",
    "教育文体": "education",
    "劳动和社会保障": "labour",
    "商贸旅游": "commerce",
    "卫生计生": "health",
}
CASE_TYPE_CODES: dict[str, str] = {
    "咨询": "consultation",
    "求助": "help",
    "投诉": "complaint",
    "举报": "report",
    "建议": "suggestion",
    "表扬": "praise",
}
OPEN_STATUSES = frozenset(CaseStatus) - CLOSED_STATUSES


@dataclass(frozen=True)
class Service:
    """One service of the catalogue: a category, a category and a case type, or neither."""

    code: str
    name: str
    description: str
    group: str
    keywords: str
    category: str | None = None
    case_type: str | None = None


def catalogue() -> list[Service]:
    """Every service a partner may report, general first, then by category and case type."""
    services = [
        Service(
            GENERAL_SERVICE,
            "市民诉求（自动分类）",
            "不确定分类时选用：由系统按描述自动分类派单，分类把握不足时由人工派单。",
            "综合",
            "12345,市民诉求",
        )
    ]
    for category in CATEGORIES:
        code = CATEGORY_CODES[category]
        services.append(
            Service(
                code,
                category,
                f"{category}类诉求，诉求类型由系统按描述判断。",
                category,
                f"12345,{category}",
                category,
            )
        )
        for case_type in CASE_TYPES:
            services.append(
                Service(
                    f"{code}-{CASE_TYPE_CODES[case_type]}",
                    f"{category}·{case_type}",
                    f"{category}类的{case_type}。",
                    category,
                    f"12345,{category},{case_type}",
                    category,
                    case_type,
                )
            )
    return services


def service_named(code: str) -> Service:
    """The service with this code.

    Raises:
        NotFound: no such service.
    """
    found = next((service for service in catalogue() if service.code == code), None)
    if found is None:
        raise NotFound(f"service {code}")
    return found


def _known_service(code: str) -> Service:
    """A service named in a request's parameters: an unknown one is bad input (400), not a 404."""
    try:
        return service_named(code)
    except NotFound as error:
        raise InvalidInput("unknown_service_code", f"service_code {code} is not a service") from error


def service_code_of(case: ServiceCase) -> str:
    """The code of the service a case is now: its category and case type, as far as known."""
    if case.category not in CATEGORY_CODES:
        return GENERAL_SERVICE
    code = CATEGORY_CODES[case.category]
    return f"{code}-{CASE_TYPE_CODES[case.case_type]}" if case.case_type in CASE_TYPE_CODES else code


def service_name_of(case: ServiceCase) -> str:
    return service_named(service_code_of(case)).name


# --- filing --------------------------------------------------------------------------------


def _coordinate(form: Mapping[str, str], name: str, bound: float) -> float | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as error:
        raise InvalidInput(f"bad_{name}", f"{name} must be a WGS84 decimal degree") from error
    if not math.isfinite(value) or not -bound <= value <= bound:
        raise InvalidInput(f"bad_{name}", f"{name} must be between -{bound:g} and {bound:g}")
    return value


def _field(form: Mapping[str, str], name: str, limit: int = MAX_FIELD_CHARS) -> str:
    value = clean_text(form.get(name, "")).strip()
    if len(value) > limit:
        raise InvalidInput(f"bad_{name}", f"{name} may have at most {limit} characters")
    return value


@dataclass(frozen=True)
class NewRequest:
    """A parsed ``POST requests``: the service, the place, the words and the reporter's contact."""

    service: Service
    description: str
    lat: float | None
    long: float | None
    address_string: str
    address_id: str
    phone: str
    contact: dict[str, str]

    @classmethod
    def parse(cls, form: Mapping[str, str]) -> NewRequest:
        """Validate a form-encoded request; nothing is filed unless all of it is good.

        Raises:
            InvalidInput: a missing or malformed field, or an unknown service code (``reason`` names it).
        """
        code = form.get("service_code", "").strip()
        if not code:
            raise InvalidInput("service_code_missing", "service_code is required")
        service = _known_service(code)
        description = clean_text(form.get("description", "")).strip()
        if not description:
            raise InvalidInput("description_missing", "description is required")
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise InvalidInput(
                "description_too_long", f"description may have at most {MAX_DESCRIPTION_CHARS} characters"
            )
        lat, long = _coordinate(form, "lat", 90), _coordinate(form, "long", 180)
        if (lat is None) != (long is None):
            raise InvalidInput("bad_location", "lat and long must be given together")
        address_string = _field(form, "address_string", MAX_ADDRESS_CHARS)
        address_id = _field(form, "address_id", 64)
        if lat is None and not address_string and not address_id:
            raise InvalidInput("location_missing", "a location is required: lat and long, address_string or address_id")
        raw_phone = _field(form, "phone", 32)
        try:
            phone = normalise_mobile(raw_phone) if raw_phone else ""
        except InvalidInput as error:
            raise InvalidInput("bad_phone", "phone must be a mainland mobile number") from error
        contact = {name: value for name in CONTACT_FIELDS if (value := _field(form, name))}
        return cls(service, description, lat, long, address_string, address_id, phone, contact)

    @property
    def location_text(self) -> str:
        """The case's location: the address given, else the address id or the coordinates."""
        if self.address_string:
            return self.address_string
        if self.address_id:
            return f"地址编号 {self.address_id}"
        return f"{self.lat:.6f},{self.long:.6f}"

    def reporter_key(self, client: str) -> str | None:
        """The channel identity's id for a reporter the partner names (account, device or email)."""
        named = self.contact.get("account_id") or self.contact.get("device_id") or self.contact.get("email")
        if not named:
            return None
        return f"{client}:{blind_index(named.lower(), REPORTER_INDEX)}"


@dataclass(frozen=True)
class Filed:
    """A request just filed: its case and whether it waits in the manual queue."""

    case: ServiceCase
    queued: bool
    department: str | None
    due_at: datetime | None


async def file_request(
    session: AsyncSession, desk: Dispatcher, caller: ApiCaller, new: NewRequest, *, address: str = ""
) -> Filed:
    """File a request as a chat report is filed, in the caller's transaction, and audit it.

    A reporter the partner names (account, device, email) is one citizen across their requests;
    an unnamed one is a citizen of their own each time (their phone must not join strangers').

    Raises:
        Forbidden: a read-only client.
    """
    caller.require(ApiScope.WRITE)
    preview = await desk.preview(
        session,
        description=new.description,
        location_text=new.address_string,
        category_override=new.service.category,
        case_type_override=new.service.case_type,
    )
    reporter = new.reporter_key(caller.name) or f"{caller.name}:once:{secrets.token_hex(8)}"
    identity = await resolve_identity(session, CHANNEL, reporter[:128])
    await session.flush()
    report = Report(
        description=new.description,
        location=new.location_text,
        contact_phone=new.phone,
        district=preview.location.district,
    )
    case = await file_report(
        session,
        desk,
        identity,
        report,
        preview,
        actor=Actor.api_client(caller.name, address),
        phone_required=False,
    )
    session.add(
        Open311Request(
            case_id=case.id,
            api_client_id=caller.client_id,
            service_code=new.service.code,
            lat=new.lat,
            long=new.long,
            address_id=new.address_id or None,
            address_given=bool(new.address_string),
            contact=new.contact or None,
        )
    )
    audit.record(
        session, None, "open311.file", case.case_number, new.service.code, address=address, actor_name=caller.actor
    )
    plan = preview.plan
    return Filed(case, plan.queued, plan.department_name, plan.due_at)


# --- the public read side -----------------------------------------------------------------


@dataclass(frozen=True)
class PublicRequest:
    """A case as the read side publishes it: nothing personal."""

    service_request_id: str
    status: CaseStatus
    service_code: str
    service_name: str
    agency_responsible: str | None
    requested_at: datetime
    updated_at: datetime
    expected_at: datetime | None
    address: str | None
    address_id: str | None
    lat: float | None
    long: float | None


def _public(case: ServiceCase, filed: Open311Request | None) -> PublicRequest:
    # A partner's address_string was given to be published (the standard does); a chat citizen's
    # location is their own words, published as the district only. Phone numbers masked either way.
    given = filed is not None and filed.address_given and case.pseudonymised_at is None
    address = mask_phones(case.location) if given else case.district
    return PublicRequest(
        service_request_id=case.case_number,
        status=CaseStatus(case.status),
        service_code=service_code_of(case),
        service_name=service_name_of(case),
        agency_responsible=case.department,
        requested_at=case.created_at,
        updated_at=case.updated_at,
        expected_at=case.due_at,
        address=address or None,
        address_id=filed.address_id if filed is not None else None,
        lat=filed.lat if filed is not None else None,
        long=filed.long if filed is not None else None,
    )


async def public_request(session: AsyncSession, number: str, *, address: str = "") -> PublicRequest:
    """One request by its case number, audited as a read of the public side.

    Raises:
        NotFound: no case has this number.
    """
    normalised = parse_case_number(number)
    if normalised is None or normalised != number.strip():
        raise NotFound("service request")
    case = await session.scalar(select(ServiceCase).where(ServiceCase.case_number == normalised))
    if case is None:
        raise NotFound("service request")
    filed = await session.scalar(select(Open311Request).where(Open311Request.case_id == case.id))
    audit.record(session, None, "open311.view", case.case_number, address=address, actor_name="open311")
    return _public(case, filed)


@dataclass(frozen=True)
class RequestQuery:
    """The filters of ``GET requests`` (service_request_id overrides the others)."""

    ids: tuple[str, ...] = ()
    service_codes: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    statuses: tuple[str, ...] = ()

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> RequestQuery:
        """Raises InvalidInput for a malformed date, status or code, or a span over 90 days."""
        ids = tuple(part.strip() for part in query.get("service_request_id", "").split(",") if part.strip())
        if len(ids) > MAX_IDS:
            raise InvalidInput("too_many_ids", f"at most {MAX_IDS} service_request_id values")
        codes = tuple(part.strip() for part in query.get("service_code", "").split(",") if part.strip())
        for code in codes:
            _known_service(code)  # an unknown code is refused, not silently matched by nothing
        statuses = tuple(part.strip() for part in query.get("status", "").split(",") if part.strip())
        if any(status not in ("open", "closed") for status in statuses):
            raise InvalidInput("bad_status", "status must be open or closed")
        start, end = _date(query, "start_date"), _date(query, "end_date")
        if start is not None and end is not None and (end < start or end - start > DEFAULT_WINDOW):
            raise InvalidInput("bad_dates", "start_date must come before end_date, at most 90 days apart")
        return cls(ids, codes, start, end, statuses)

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """The span asked, or the standard's default: the 90 days up to now (or around the date given)."""
        if self.start is not None and self.end is not None:
            return self.start, self.end
        if self.start is not None:
            return self.start, self.start + DEFAULT_WINDOW
        end = self.end or now
        return end - DEFAULT_WINDOW, end


def _date(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name, "").strip()
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as error:
        raise InvalidInput(f"bad_{name}", f"{name} must be an ISO 8601 date-time") from error
    return value if value.tzinfo is not None else value.replace(tzinfo=CHINA_TZ)


async def public_requests(
    session: AsyncSession, query: RequestQuery, now: datetime | None = None
) -> list[PublicRequest]:
    """The requests a query asks for, newest first, at most `MAX_REQUESTS`."""
    stmt = (
        select(ServiceCase, Open311Request)
        .outerjoin(Open311Request, Open311Request.case_id == ServiceCase.id)
        .order_by(ServiceCase.created_at.desc(), ServiceCase.id.desc())
        .limit(MAX_REQUESTS)
        # Up to 1,000 rows: not read, not decrypted, what is never published.
        .options(*_UNPUBLISHED)
    )
    if query.ids:
        stmt = stmt.where(ServiceCase.case_number.in_(query.ids))
    else:
        start, end = query.window(now or utcnow())
        stmt = stmt.where(ServiceCase.created_at >= start, ServiceCase.created_at <= end)
        if query.statuses:
            wanted: set[CaseStatus] = set()
            if "open" in query.statuses:
                wanted |= OPEN_STATUSES
            if "closed" in query.statuses:
                wanted |= CLOSED_STATUSES
            stmt = stmt.where(ServiceCase.status.in_(sorted(wanted)))
        if query.service_codes:
            stmt = stmt.where(or_(*(_service_filter(service_named(code)) for code in query.service_codes)))
    rows = (await session.execute(stmt)).tuples().all()
    return [_public(case, filed) for case, filed in rows]


# Encrypted columns a published request never shows (`_public` reads none of them).
_UNPUBLISHED = (
    defer(ServiceCase.description, raiseload=True),
    defer(ServiceCase.contact_phone, raiseload=True),
    defer(Open311Request.contact, raiseload=True),
)


def _service_filter(service: Service) -> ColumnElement[bool]:
    """Cases of a service: a category takes in its case types; ``general`` the uncategorised."""
    if service.category is None:
        return ServiceCase.category.is_(None)
    if service.case_type is None:
        return ServiceCase.category == service.category
    return and_(ServiceCase.category == service.category, ServiceCase.case_type == service.case_type)
