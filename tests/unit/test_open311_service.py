"""The Open311 service: its catalogue, the status mapping, filing through the chat's intake, and privacy."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from crm_backend.dispatch.case_type import CASE_TYPES
from crm_backend.dispatch.classifier import CATEGORIES
from crm_backend.dispatch.service import Dispatcher
from crm_backend.errors import Forbidden, InvalidInput
from crm_backend.lifecycle import CaseStatus
from crm_backend.models import AuditEntry, ChannelIdentity, Open311Request, RoutingDecision, ServiceCase, utcnow
from crm_backend.services import api_clients
from crm_backend.services import open311 as service
from crm_backend.services.api_clients import ApiCaller, ApiScope
from crm_backend.services.privacy import export_citizen, pseudonymise_cases
from crm_backend.settings import SettingsError
from tests.unit.test_actions import (
    desk,  # noqa: F401  (fixture)
    seeded,  # noqa: F401  (fixture)
)
from tests.unit.test_limits import SECRETS

Sessions = async_sessionmaker[AsyncSession]
FORM = {
    "service_code": "construction-complaint",
    "description": "A1区人民路18号门口井盖缺失，行人容易踩空",
    "address_string": "A1区人民路18号",
    "lat": "30.657",
    "long": "104.066",
}


def test_every_category_and_each_of_its_case_types_is_a_service() -> None:
    services = service.catalogue()
    codes = [item.code for item in services]
    assert len(codes) == len(set(codes)) == 1 + len(CATEGORIES) * (1 + len(CASE_TYPES))
    assert all(code.isascii() and "." not in code and "/" not in code for code in codes)
    pairs = {(item.category, item.case_type) for item in services}
    assert {(category, kind) for category in CATEGORIES for kind in CASE_TYPES} < pairs


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"service_code": "potholes"}, "unknown_service_code"),
        ({"description": "井" * 4001}, "description_too_long"),
        ({"lat": "abc"}, "bad_lat"),
        ({"lat": "nan"}, "bad_lat"),
        ({"long": "inf"}, "bad_long"),
        ({"lat": "90.0001"}, "bad_lat"),
        ({"lat": "", "long": "", "address_string": ""}, "location_missing"),
        ({"phone": "1391234567"}, "bad_phone"),
        ({"email": "x" * 101}, "bad_email"),
    ],
)
def test_a_malformed_request_is_refused_by_name(change: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        service.NewRequest.parse({**FORM, **change})
    assert refused.value.reason == reason


def test_a_description_of_exactly_4000_characters_and_an_address_id_alone_are_enough() -> None:
    new = service.NewRequest.parse({"service_code": "general", "description": "井" * 4000, "address_id": "A1-0001"})
    assert new.location_text == "地址编号 A1-0001" and new.lat is None


async def client(sessions: Sessions, name: str, scope: str) -> ApiCaller:
    async with sessions.begin() as session:
        issued = await api_clients.create_client(session, name=name, scope=scope)
        return ApiCaller(issued.client.id, issued.client.name, ApiScope(scope))


async def file(sessions: Sessions, desk: Dispatcher, caller: ApiCaller, **change: str) -> service.Filed:  # noqa: F811
    async with sessions.begin() as session:
        return await service.file_request(session, desk, caller, service.NewRequest.parse({**FORM, **change}))


async def test_a_request_is_filed_routed_and_audited_as_a_chat_report(seeded: Sessions, desk: Dispatcher) -> None:  # noqa: F811
    caller = await client(seeded, "grid-handhelds", "write")
    filed = await file(seeded, desk, caller, phone="139 1234 5678", email="Li@example.cn")
    assert not filed.queued and filed.department == "A1区住建局" and filed.due_at is not None
    async with seeded() as session:
        case = await session.scalar(select(ServiceCase).where(ServiceCase.id == filed.case.id))
        assert case is not None and case.status == CaseStatus.DISPATCHED
        assert (case.category, case.case_type, case.contact_phone) == ("城乡建设", "投诉", "13912345678")
        assert await session.scalar(select(func.count()).where(RoutingDecision.case_id == case.id)) == 1
        row = await session.scalar(select(Open311Request).where(Open311Request.case_id == case.id))
        assert row is not None and row.contact == {"email": "Li@example.cn"} and row.address_given
        actions = (await session.scalars(select(AuditEntry.action).where(AuditEntry.target == case.case_number))).all()
        assert {"case.file", "open311.file"} <= set(actions)
    again = await file(seeded, desk, caller)
    async with seeded() as session:
        repeated = await session.get(ServiceCase, again.case.id)
        assert repeated is not None and repeated.duplicate_of_id == filed.case.id  # the duplicate check ran


async def test_a_named_reporter_is_one_citizen_an_unnamed_one_a_citizen_each_time(
    seeded: Sessions,  # noqa: F811
    desk: Dispatcher,  # noqa: F811
) -> None:
    caller = await client(seeded, "street-app", "write")
    named = [(await file(seeded, desk, caller, account_id="u-42")).case for _ in range(2)]
    unnamed = [(await file(seeded, desk, caller)).case for _ in range(2)]
    assert named[0].citizen_id == named[1].citizen_id
    assert unnamed[0].citizen_id != unnamed[1].citizen_id
    async with seeded() as session:
        ids = (
            await session.scalars(select(ChannelIdentity.external_id).where(ChannelIdentity.channel == "open311"))
        ).all()
    assert not any("u-42" in external_id for external_id in ids)  # a keyed fingerprint, not the account id


async def test_a_read_only_client_files_nothing(seeded: Sessions, desk: Dispatcher) -> None:  # noqa: F811
    caller = await client(seeded, "open-data", "read")
    with pytest.raises(Forbidden):
        await file(seeded, desk, caller)
    async with seeded() as session:
        assert await session.scalar(select(func.count(ServiceCase.id))) == 0


async def test_pseudonymising_a_case_removes_its_open311_contact_and_coordinates(
    seeded: Sessions,  # noqa: F811
    desk: Dispatcher,  # noqa: F811
) -> None:
    caller = await client(seeded, "grid-workers", "write")
    filed = await file(seeded, desk, caller, email="li@example.cn", address_id="A1-0001")
    async with seeded.begin() as session:
        await pseudonymise_cases(session, select(ServiceCase.id).where(ServiceCase.id == filed.case.id), utcnow())
    async with seeded() as session:
        row = await session.scalar(select(Open311Request).where(Open311Request.case_id == filed.case.id))
        assert row is not None and (row.contact, row.lat, row.long, row.address_id) == (None, None, None, None)
        [published] = await service.public_requests(session, service.RequestQuery(ids=(filed.case.case_number,)))
    assert published.address == "A1区" and published.lat is None


async def test_a_citizens_data_copy_includes_what_a_partner_gave_about_them(
    seeded: Sessions,  # noqa: F811
    desk: Dispatcher,  # noqa: F811
) -> None:
    caller = await client(seeded, "grid-copy", "write")
    filed = await file(seeded, desk, caller, email="li@example.cn", first_name="李")
    async with seeded.begin() as session:
        copy = await export_citizen(session, filed.case.citizen_id, None)
    [case] = copy["cases"]
    assert case["reporter_contact"] == {"email": "li@example.cn", "first_name": "李"}


def test_the_open311_read_limit_and_contact_come_from_the_environment() -> None:
    defaults = Settings.from_env(SECRETS)
    assert (defaults.limits.open311_reads_per_address, defaults.limits.open311_reads_window_seconds) == (120, 60)
    assert defaults.open311_contact == "12345 市民服务热线"
    env = {**SECRETS, "OPEN311_READS_PER_ADDRESS": "0", "OPEN311_READS_WINDOW_SECONDS": "10", "OPEN311_CONTACT": "a@b"}
    settings = Settings.from_env(env)
    assert (settings.limits.open311_reads_per_address, settings.limits.open311_reads_window_seconds) == (0, 10)
    assert settings.open311_contact == "a@b"
    with pytest.raises(SettingsError, match="OPEN311_READS_PER_ADDRESS"):
        Settings.from_env({**SECRETS, "OPEN311_READS_PER_ADDRESS": "many"})
